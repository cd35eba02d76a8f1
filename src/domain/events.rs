//! Change events: every change that alters what a storage node may hold (a key's state,
//! a tenant's grant, a shred, a rewrap), in the order the database committed them, for the
//! service's own caches and for the storage nodes that follow `GET /v4/repo-encryption/events`.
//!
//! An event is written in the same transaction as the change it reports (a key state seen
//! to change in the KMS is recorded in a transaction of its own, once whichever replica
//! sees it first), so there is no change without its event and no event without its change.
//! Ids grow in commit order (`store::sql::events`), which is what lets a follower read
//! "everything after id N" and miss nothing.
//!
//! Each process runs one [`EventFeed`]: a follower that reads the events table every
//! [`POLL_EVERY`] (at once when this process wrote one), applies each event to the
//! service's caches (a revoked key leaves the released-key cache there and then, not at
//! its TTL), keeps the most recent ones in memory for the streams, and wakes them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::error::Result;
use super::ports::Store;
use super::repository::RepoId;
use super::service::Service;
use super::types::{KeyState, TenantId};
use crate::clock::Clock;
use crate::home::Home;

/// How often a process reads the events other processes wrote.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Repository ids a `key_state_changed` lists (`repositories_total` counts them all): an
/// event stays small however many repositories a key wraps.
pub const MAX_LISTED_REPOSITORIES: u32 = 1000;

/// How often a process prunes the events past the retention window, and when first.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);

/// The longest pause between reads of an events table that cannot be read.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Events read from the table in one query.
pub const BATCH: u32 = 500;

/// Events a process keeps in memory for its streams; a stream further behind reads the
/// database.
const RECENT: usize = 4096;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A CMK's state changed (`None`: the key is gone from the KMS). `repositories`: the
    /// ids of the tenant's repositories whose data key it wraps.
    KeyStateChanged {
        key_id: String,
        old_state: Option<KeyState>,
        new_state: Option<KeyState>,
        /// At most [`MAX_LISTED_REPOSITORIES`] of them, by id.
        repositories: Vec<i64>,
        /// How many there are in all.
        #[serde(default)]
        repositories_total: u64,
    },
    /// The tenant withdrew its KMS grant: none of its data keys may be held.
    GrantWithdrawn,
    /// The tenant granted KMS use again after a withdrawal.
    GrantRestored,
    /// A repository's data key was destroyed.
    DataKeyShredded { repo_id: i64 },
    /// A repository's data key is now wrapped by another CMK (the key itself is the same).
    RepositoryRewrapped {
        repo_id: i64,
        old_key_id: String,
        new_key_id: String,
    },
    /// An event this version does not know (written by a newer one, or unreadable): passed
    /// over, never sent.
    #[serde(other)]
    Unknown,
}

impl Change {
    /// The event's name on the stream (the `type` of its JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::KeyStateChanged { .. } => "key_state_changed",
            Change::GrantWithdrawn => "grant_withdrawn",
            Change::GrantRestored => "grant_restored",
            Change::DataKeyShredded { .. } => "data_key_shredded",
            Change::RepositoryRewrapped { .. } => "repository_rewrapped",
            Change::Unknown => "unknown",
        }
    }
}

/// A committed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Grows in commit order; the stream's `id:`, which a client resumes from.
    pub id: i64,
    pub tenant_id: String,
    /// RFC 3339, when the change was committed.
    pub at: String,
    #[serde(flatten)]
    pub change: Change,
}

/// What a stream reads after a given id.
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// The events after it, oldest first (at most [`BATCH`]; empty: caught up).
    Events(Vec<Event>),
    /// Events after it were pruned (older than the retention window) or the id is from
    /// another database: the client must drop everything it holds and start again from
    /// the id given.
    Lost { resume_from: i64 },
}

/// What the service does with an event it follows: the released-key and key-state caches
/// forget what the event revokes.
pub trait EventSink: Send + Sync + 'static {
    fn apply(&self, event: &Event);
}

/// The process's view of the events table: the newest id it has read, the most recent
/// events, and a watch the streams wait on.
pub struct EventFeed {
    store: Arc<dyn Store>,
    recent: Mutex<VecDeque<Event>>,
    latest: watch::Sender<i64>,
    /// Poked by this process's writes, so its own events go out without waiting a poll.
    wake: Arc<Notify>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    /// Set when the server shuts down: the streams end, so that their connections close.
    closed: std::sync::atomic::AtomicBool,
}

impl EventFeed {
    /// A feed that starts after the newest event in the store (what came before is
    /// history: the caches were empty then), pruning events older than `retention`.
    pub async fn start(
        store: Arc<dyn Store>,
        watch: &KeyWatch,
        clock: Arc<dyn Clock>,
        retention: Duration,
    ) -> Result<Arc<Self>> {
        let latest = store.latest_event_id().await?;
        Ok(Arc::new(EventFeed {
            store,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            latest: watch::channel(latest).0,
            wake: watch.wake(),
            clock,
            retention,
            closed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The id of the newest event read.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// The server is shutting down: every stream ends (a client reconnects to another
    /// replica, or to this one once it is back, with its `Last-Event-ID`).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.latest.send_modify(|_| {});
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A receiver that sees [`latest`](Self::latest) change.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Follow the table while `sink` lives: every event, once, in order, to it; and prune
    /// what is older than the retention window now and then.
    pub async fn follow(self: Arc<Self>, sink: Weak<dyn EventSink>) {
        let mut failing = false;
        let mut pause = POLL_EVERY;
        // The first prune a minute in: a short-lived command never writes for it.
        let mut prune_at = Instant::now() + FIRST_PRUNE_AFTER;
        loop {
            let Some(sink) = sink.upgrade() else {
                return;
            };
            if Instant::now() >= prune_at {
                prune_at = Instant::now() + PRUNE_EVERY;
                self.prune().await;
            }
            let read = self.read_once(sink.as_ref()).await;
            drop(sink);
            match read {
                Ok(more) => {
                    if failing {
                        tracing::info!("events: reading the events table again");
                        failing = false;
                        pause = POLL_EVERY;
                    }
                    if more {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            error = %e.internal_detail().unwrap_or("unknown"),
                            "events: cannot read the events table; retrying"
                        );
                        failing = true;
                    }
                    // Backing off, up to a few seconds, while the database is away.
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
            let _ = tokio::time::timeout(pause, self.wake.notified()).await;
        }
    }

    async fn prune(&self) {
        let Some(before) = self.clock.now().checked_sub(self.retention) else {
            return;
        };
        match self.store.prune_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "events: pruned those past the retention window"),
            Err(e) => tracing::warn!(
                error = %e.internal_detail().unwrap_or("unknown"),
                "events: pruning failed; will try again"
            ),
        }
    }

    /// Read the events after the newest one read; whether there may be more.
    async fn read_once(&self, sink: &dyn EventSink) -> Result<bool> {
        let after = self.latest();
        let events = self.store.events_after(after, BATCH).await?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(false);
        };
        let full = events.len() as u32 == BATCH;
        for event in &events {
            sink.apply(event);
        }
        if let Ok(mut recent) = self.recent.lock() {
            for event in events {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(event);
            }
        }
        self.latest.send_replace(last);
        Ok(full)
    }

    /// The events after `after`, for a stream: from memory when they are recent, else
    /// from the database (which also says when they were pruned).
    pub async fn after(&self, after: i64) -> Result<Backlog> {
        let latest = self.latest();
        if after >= latest {
            if after > latest && after > self.store.latest_event_id().await? {
                // An id this database never gave (another database, or one restored from
                // a backup): the client's view cannot be trusted.
                return Ok(Backlog::Lost {
                    resume_from: latest,
                });
            }
            return Ok(Backlog::Events(Vec::new()));
        }
        if let Ok(recent) = self.recent.lock() {
            if recent.front().is_some_and(|first| first.id <= after + 1) {
                let events: Vec<Event> = recent
                    .iter()
                    .filter(|e| e.id > after && e.id <= latest)
                    .take(BATCH as usize)
                    .cloned()
                    .collect();
                return Ok(Backlog::Events(events));
            }
        }
        let pruned = self.store.events_pruned_through().await?;
        if after < pruned {
            return Ok(Backlog::Lost {
                resume_from: pruned,
            });
        }
        let mut events = self.store.events_after(after, BATCH).await?;
        events.retain(|e| e.id <= latest);
        Ok(Backlog::Events(events))
    }
}

/// Reports the key-state changes a process sees (in its key-state cache) to the store,
/// which raises each one once, and wakes the process's follower when it did.
#[derive(Clone)]
pub struct KeyWatch {
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    /// Where [`changed_later`](Self::changed_later) runs (`crate::home`).
    home: Home,
}

impl KeyWatch {
    pub fn new(store: Arc<dyn Store>) -> Self {
        KeyWatch {
            store,
            wake: Arc::new(Notify::new()),
            home: Home::here(),
        }
    }

    /// What the follower waits on besides its poll.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// This process committed an event: have the follower read it now.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// The key's state went from `previous` (`None`: not known) to `now` as this process
    /// sees it: record it, raising the event if no process has yet.
    pub async fn changed(
        &self,
        tenant: &TenantId,
        key_id: &str,
        previous: Option<Option<KeyState>>,
        now: Option<KeyState>,
    ) {
        // A few tries: a change not recorded is an event storage nodes never get.
        let mut wait = Duration::from_millis(250);
        for attempt in 1..=3 {
            match self
                .store
                .observe_key_state(tenant, key_id, previous, now)
                .await
            {
                Ok(Some(_)) => return self.poke(),
                Ok(None) => return,
                Err(e) if attempt < 3 => {
                    tracing::debug!(
                        tenant = %tenant,
                        key_id,
                        error = %e.internal_detail().unwrap_or("unknown"),
                        "events: recording a key state change failed; trying again"
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
                Err(e) => tracing::warn!(
                    tenant = %tenant,
                    key_id,
                    error = %e.internal_detail().unwrap_or("unknown"),
                    "events: cannot record a key state change; the next read of the key that sees it will"
                ),
            }
        }
    }

    /// [`changed`](Self::changed), in a task of its own on the runtime the watch was made
    /// on (made outside a runtime: not at all; the next process to see the change records
    /// it). `previous` `None`: this process
    /// knew nothing of the key, or saw no change: the state is compared with the last one
    /// an event recorded, which another process may have changed since.
    pub fn changed_later(
        &self,
        tenant: &TenantId,
        key_id: &str,
        previous: Option<Option<KeyState>>,
        now: Option<KeyState>,
    ) {
        let (watch, tenant, key_id) = (self.clone(), tenant.clone(), key_id.to_owned());
        self.home.spawn(async move {
            watch.changed(&tenant, &key_id, previous, now).await;
        });
    }
}

/// The service follows the events: what an event revokes leaves its caches at once, so a
/// storage node is refused within a poll of the change, not at the end of a TTL.
impl EventSink for Service {
    fn apply(&self, event: &Event) {
        let Ok(tenant) = TenantId::parse(&event.tenant_id) else {
            return;
        };
        let t = tenant.as_str();
        match &event.change {
            Change::KeyStateChanged {
                key_id, new_state, ..
            } => {
                // Unless this process knows the new state already, the next release under
                // this key asks the KMS (failing closed), on every replica, from now on;
                // what it released under a key no longer enabled goes at once.
                self.cache.expire_unless(t, key_id, *new_state);
                if *new_state != Some(KeyState::Enabled) {
                    self.released.forget_key(t, Some(key_id));
                }
            }
            Change::GrantWithdrawn => {
                self.released.forget_key(t, None);
                self.store.forget_cached(&tenant, None);
            }
            Change::GrantRestored => self.store.forget_cached(&tenant, None),
            Change::DataKeyShredded { repo_id } | Change::RepositoryRewrapped { repo_id, .. } => {
                if let Some(repo_id) = i32::try_from(*repo_id)
                    .ok()
                    .and_then(|id| RepoId::new(i64::from(id)).ok())
                {
                    self.released.forget(t, repo_id);
                    self.store.forget_cached(&tenant, Some(repo_id));
                }
            }
            Change::Unknown => {}
        }
    }
}
