//! Key states refreshed ahead of their TTL, in the background and in batches.
//!
//! A GET that finds its key's cached state late in its TTL ([`Lookup::Refresh`]) queues
//! the key here and answers from the cache. One task gathers the keys queued over a short
//! window and asks the KMS for all of them with one [`Kms::describe_keys`] (for the local
//! KMS, one database read), so a server whose tenants are each read about once a TTL does
//! not pay a database round trip, and a thread hand-off, per GET.
//!
//! Nothing is lost if a refresh does not happen: the entry is handed back
//! ([`KeyStateCache::refresh_failed`]) so a later GET queues it again, and once the TTL
//! runs out a GET reads the key itself. Staleness stays bounded by the TTL: each answer
//! is stamped with the moment its batch's read began.
//!
//! [`Lookup::Refresh`]: super::cache::Lookup::Refresh

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::cache::KeyStateCache;
use super::Kms;
use crate::domain::TenantId;

/// The longest a queued key waits for others to join its batch. The TTL is refreshed a
/// quarter of it ahead of time (2.5 s with the default 10 s), so this is small beside it.
const GATHER: Duration = Duration::from_millis(20);
/// Most keys in one batch.
const MAX_BATCH: usize = 256;
/// Most keys waiting; beyond it a refresh is handed back to a later GET.
const QUEUE: usize = 8192;

type Queued = (TenantId, String);

/// The GETs' side of the refresh task (started on the first refresh).
pub struct Refresher {
    kms: Arc<dyn Kms>,
    cache: Arc<KeyStateCache>,
    gather: Duration,
    queue: OnceLock<mpsc::Sender<Queued>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("gather", &self.gather)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(kms: Arc<dyn Kms>, cache: Arc<KeyStateCache>) -> Self {
        // A short TTL (tests) gathers for a sixteenth of it at most.
        let gather = GATHER.min(cache.ttl() / 16);
        Refresher {
            kms,
            cache,
            gather,
            queue: OnceLock::new(),
        }
    }

    /// Refresh this key's cached state in the background. The caller got
    /// [`Lookup::Refresh`](super::cache::Lookup::Refresh) for it. Outside a tokio
    /// runtime (never the case in `serve`), or with the queue full, the entry is handed
    /// back to a later GET.
    pub fn request(&self, tenant: &TenantId, key_id: &str) {
        let queued = self
            .queue()
            .is_some_and(|q| q.try_send((tenant.clone(), key_id.to_owned())).is_ok());
        if !queued {
            self.cache.refresh_failed(tenant.as_str(), key_id);
        }
    }

    fn queue(&self) -> Option<&mpsc::Sender<Queued>> {
        if let Some(queue) = self.queue.get() {
            return Some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (queue, keys) = mpsc::channel(QUEUE);
            runtime.spawn(refresh(
                self.kms.clone(),
                self.cache.clone(),
                self.gather,
                keys,
            ));
            queue
        }))
    }
}

/// The refresh task: until every sender is gone, take the keys queued within `gather` of
/// the first, ask the KMS for them at once, and cache each answer.
async fn refresh(
    kms: Arc<dyn Kms>,
    cache: Arc<KeyStateCache>,
    gather: Duration,
    mut keys: mpsc::Receiver<Queued>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while keys.recv_many(&mut batch, MAX_BATCH).await > 0 {
        tokio::time::sleep(gather).await;
        while batch.len() < MAX_BATCH {
            match keys.try_recv() {
                Ok(key) => batch.push(key),
                Err(_) => break,
            }
        }
        let read_at = Instant::now();
        let mut answers = kms.describe_keys(&batch).await.into_iter();
        for (tenant, key_id) in batch.drain(..) {
            match answers.next() {
                Some(Ok(info)) => cache.put(tenant.as_str(), &key_id, info.as_ref(), read_at),
                failed => {
                    if let Some(Err(e)) = failed {
                        tracing::debug!(
                            tenant = %tenant,
                            key_id,
                            error = %e.internal_detail().unwrap_or("unknown"),
                            "refreshing a key state ahead of its TTL failed"
                        );
                    }
                    cache.refresh_failed(tenant.as_str(), &key_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::domain::{Actor, Error, KeyState, Result};
    use crate::kms::cache::Lookup;
    use crate::kms::{KeyInfo, KeyOrigin};

    /// A KMS that knows key states and remembers the size of each batch it was asked.
    #[derive(Default)]
    struct Fake {
        states: Mutex<HashMap<String, KeyState>>,
        batches: Mutex<Vec<usize>>,
        down: AtomicBool,
    }

    fn down() -> Error {
        Error::KmsUnavailable("fake KMS: down".into())
    }

    #[async_trait]
    impl Kms for Fake {
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
        async fn check_access(&self, _: &TenantId) -> Result<()> {
            Ok(())
        }
        async fn describe_key(&self, _: &TenantId, key_id: &str) -> Result<Option<KeyInfo>> {
            if self.down.load(Ordering::SeqCst) {
                return Err(down());
            }
            let states = self.states.lock().unwrap();
            Ok(states.get(key_id).map(|&key_state| KeyInfo {
                key_id: key_id.to_owned(),
                key_name: "n".into(),
                key_state,
            }))
        }
        async fn describe_keys(&self, keys: &[(TenantId, String)]) -> Vec<Result<Option<KeyInfo>>> {
            self.batches.lock().unwrap().push(keys.len());
            let mut answers = Vec::new();
            for (tenant, key_id) in keys {
                answers.push(self.describe_key(tenant, key_id).await);
            }
            answers
        }
        async fn create_key(
            &self,
            _: &TenantId,
            _: &str,
            _: KeyOrigin,
            _: bool,
            _: &Actor,
        ) -> Result<KeyInfo> {
            Err(down())
        }
        async fn list_keys(&self, _: &TenantId) -> Result<Vec<KeyInfo>> {
            Err(down())
        }
        async fn enable_key(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            Err(down())
        }
        async fn disable_key(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            Err(down())
        }
        async fn schedule_key_deletion(
            &self,
            _: &TenantId,
            _: &str,
            _: u32,
            _: &Actor,
        ) -> Result<KeyInfo> {
            Err(down())
        }
        async fn cancel_key_deletion(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            Err(down())
        }
        async fn import_key_material(
            &self,
            _: &TenantId,
            _: &str,
            _: Option<Vec<u8>>,
            _: &Actor,
        ) -> Result<KeyInfo> {
            Err(down())
        }
    }

    const TTL: Duration = Duration::from_secs(2);

    fn tenant() -> TenantId {
        TenantId::parse("t".to_owned()).unwrap()
    }

    /// `n` keys cached as enabled, read late in their TTL; the KMS says they are disabled
    /// now. Each key's lookup has been handed the refresh.
    fn setup(n: usize) -> (Arc<Fake>, Arc<KeyStateCache>, Refresher, Vec<String>) {
        let kms = Arc::new(Fake::default());
        let cache = Arc::new(KeyStateCache::new(TTL, 10_000));
        let refresher = Refresher::new(kms.clone(), cache.clone());
        let late = Instant::now() - TTL / 8 * 7;
        let enabled = KeyInfo {
            key_id: String::new(),
            key_name: "n".into(),
            key_state: KeyState::Enabled,
        };
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        for key in &keys {
            kms.states
                .lock()
                .unwrap()
                .insert(key.clone(), KeyState::Disabled);
            cache.put("t", key, Some(&enabled), late);
            assert!(matches!(cache.lookup("t", key), Lookup::Refresh(_)));
        }
        (kms, cache, refresher, keys)
    }

    /// Wait until every key's cached state is `state` (a second at most).
    async fn until_all(cache: &KeyStateCache, keys: &[String], state: KeyState) {
        let start = Instant::now();
        while !keys
            .iter()
            .all(|k| matches!(cache.lookup("t", k), Lookup::Fresh(Some(s)) if s == state))
        {
            assert!(start.elapsed() < Duration::from_secs(1), "not refreshed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn keys_queued_together_are_refreshed_in_one_batch() {
        let (kms, cache, refresher, keys) = setup(100);
        for key in &keys {
            refresher.request(&tenant(), key);
        }
        until_all(&cache, &keys, KeyState::Disabled).await;
        assert_eq!(*kms.batches.lock().unwrap(), [100]);
    }

    #[tokio::test]
    async fn keys_queued_within_the_gather_window_share_a_batch() {
        // Five keys 2 ms apart: all within the 20 ms the first one waits.
        let (kms, cache, refresher, keys) = setup(5);
        for key in &keys {
            refresher.request(&tenant(), key);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        until_all(&cache, &keys, KeyState::Disabled).await;
        // One batch, or two if this machine stalled past the window.
        let batches = kms.batches.lock().unwrap().clone();
        assert!(batches.len() <= 2, "{batches:?}");
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_batch_keys() {
        let (kms, cache, refresher, keys) = setup(MAX_BATCH * 2 + 1);
        for key in &keys {
            refresher.request(&tenant(), key);
        }
        until_all(&cache, &keys, KeyState::Disabled).await;
        assert_eq!(*kms.batches.lock().unwrap(), [MAX_BATCH, MAX_BATCH, 1]);
    }

    #[tokio::test]
    async fn a_failed_refresh_is_handed_back_to_a_later_lookup() {
        let kms = Arc::new(Fake::default());
        kms.down.store(true, Ordering::SeqCst);
        let cache = Arc::new(KeyStateCache::new(TTL, 100));
        let refresher = Refresher::new(kms.clone(), cache.clone());
        let enabled = KeyInfo {
            key_id: "k".into(),
            key_name: "n".into(),
            key_state: KeyState::Enabled,
        };
        cache.put("t", "k", Some(&enabled), Instant::now() - TTL / 8 * 7);
        assert!(matches!(cache.lookup("t", "k"), Lookup::Refresh(_)));
        refresher.request(&tenant(), "k");
        // Meanwhile the state is served, and the refresh is not handed out twice.
        assert!(matches!(
            cache.lookup("t", "k"),
            Lookup::Fresh(Some(KeyState::Enabled))
        ));
        let start = Instant::now();
        while kms.batches.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(1), "never asked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            cache.lookup("t", "k"),
            Lookup::Refresh(Some(KeyState::Enabled))
        ));
    }

    #[test]
    fn outside_a_runtime_the_refresh_is_handed_back() {
        let kms = Arc::new(Fake::default());
        let cache = Arc::new(KeyStateCache::new(TTL, 100));
        let refresher = Refresher::new(kms, cache.clone());
        cache.put("t", "k", None, Instant::now() - TTL / 8 * 7);
        assert!(matches!(cache.lookup("t", "k"), Lookup::Refresh(None)));
        refresher.request(&tenant(), "k");
        assert!(matches!(cache.lookup("t", "k"), Lookup::Refresh(None)));
    }
}
