//! A short, bounded cache of key states, so GET does not ask the KMS on every request,
//! and so the last known state can be served while the KMS is unreachable.
//!
//! It is a least-recently-used map split into shards (so concurrent GETs rarely wait on
//! one lock), holding at most `capacity` entries in all. An entry is the tenant and key
//! id (each at most 1,000 characters by the API's rules) and the state, so the memory it
//! can take is bounded by the capacity: a few KiB an entry at most, under 200 bytes for
//! real ids. Only keys that exist are cached from writes, so a tenant naming
//! made-up keys cannot fill it.
//!
//! An entry past three quarters of its TTL is refreshed ahead of time: the first lookup to
//! see it gets [`Lookup::Refresh`] (the state, and the duty to ask the KMS in the
//! background) while later ones keep getting the cached state, so a tenant read more often
//! than every quarter TTL never waits on the KMS. The price is KMS calls: about a third
//! more for a tenant read often (one every three quarters of a TTL instead of one a TTL),
//! and up to twice as many for one read about once a TTL (every read past three quarters
//! refreshes, where without it every other read found the entry expired). The bound on
//! staleness stays the TTL: an answer is stamped with the moment its read began, and an
//! older answer never replaces a newer one.

use std::cell::RefCell;
use std::sync::{Arc, RwLockWriteGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::ports::KeyInfo;
use super::types::KeyState;
use crate::clock::Clock;
#[cfg(test)]
use crate::shards::SHARDS;
use crate::shards::{per_shard, Shards};

#[derive(Debug)]
struct Entry {
    state: Option<KeyState>,
    /// When the read that gave `state` began.
    at: Instant,
    /// A refresh ahead of the TTL has been handed out and has not answered yet.
    refreshing: bool,
    /// An event said the state changed at this moment: no answer to a read that began
    /// before it is taken (it may predate the change).
    floor: Option<Instant>,
}

/// Keyed by `tenant NUL key id` (a tenant id has no control characters, so the pair is
/// unambiguous), one string so that a lookup can borrow it instead of allocating.
type Shard = LruCache<String, Entry>;

thread_local! {
    /// Where a lookup spells its key.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Run `f` with the key of (`tenant`, `key_id`).
fn with_key<R>(tenant: &str, key_id: &str, f: impl FnOnce(&str) -> R) -> R {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut key) => {
            key.clear();
            key.push_str(tenant);
            key.push('\0');
            key.push_str(key_id);
            f(&key)
        }
        Err(_) => f(&format!("{tenant}\0{key_id}")),
    })
}

/// Keyed by (tenant, key id). `None` caches "not found".
pub struct KeyStateCache {
    ttl: Duration,
    shards: Shards<Shard>,
    /// What ages are measured with (`Clock::monotonic`).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KeyStateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStateCache")
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// What the cache knows of a key's state (`None`: the key does not exist).
pub enum Lookup {
    /// Fetched within the TTL.
    Fresh(Option<KeyState>),
    /// Fetched within the TTL but past three quarters of it: serve it, and refresh it in the
    /// background (handed to one caller only until the refresh answers).
    Refresh(Option<KeyState>),
    /// Known, but older than the TTL (usable only as a fallback).
    Stale(Option<KeyState>),
    Unknown,
}

impl KeyStateCache {
    /// A TTL of zero turns caching off (the fallback still remembers the last answer).
    /// Ages are read from `clock`'s monotonic reading.
    pub fn new(ttl: Duration, capacity: usize, clock: Arc<dyn Clock>) -> Self {
        let per_shard = per_shard(capacity);
        KeyStateCache {
            ttl,
            shards: Shards::new(|| LruCache::new(per_shard)),
            clock,
        }
    }

    /// How long a state is served without asking the KMS again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The clock ages are read from.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The moment a read of the KMS begins, to give [`KeyStateCache::put`].
    pub fn now(&self) -> Instant {
        self.clock.monotonic()
    }

    /// `key`'s shard, exclusive.
    fn shard(&self, key: &str) -> Option<RwLockWriteGuard<'_, Shard>> {
        self.shards.write(self.shards.index(key))
    }

    /// What an entry read at `now` is worth.
    fn classify(&self, entry: &Entry, now: Instant) -> Lookup {
        let (ttl, age) = (self.ttl, now.saturating_duration_since(entry.at));
        if ttl.is_zero() || age >= ttl {
            Lookup::Stale(entry.state)
        } else if age >= ttl / 4 * 3 && !entry.refreshing {
            Lookup::Refresh(entry.state)
        } else {
            Lookup::Fresh(entry.state)
        }
    }

    /// A hit takes its shard shared (see `crate::shards`); only the lookup that hands out
    /// a refresh takes it exclusive, to claim it.
    pub fn lookup(&self, tenant: &str, key_id: &str) -> Lookup {
        let now = self.now();
        let out = with_key(tenant, key_id, |key| {
            let index = self.shards.index(key);
            let out = self.shards.peek(index, key, |_, entry| match entry {
                None => (Lookup::Unknown, false),
                Some(entry) => {
                    let out = self.classify(entry, now);
                    let used = !matches!(out, Lookup::Refresh(_));
                    (out, used)
                }
            });
            let Some(out) = out else {
                return Lookup::Unknown;
            };
            if !matches!(out, Lookup::Refresh(_)) {
                return out;
            }
            // Claim the refresh, unless another lookup did since (or the entry changed).
            let Some(mut shard) = self.shards.write(index) else {
                return Lookup::Unknown;
            };
            let Some(entry) = shard.get_mut(key) else {
                return Lookup::Unknown;
            };
            let out = self.classify(entry, now);
            if matches!(out, Lookup::Refresh(_)) {
                entry.refreshing = true;
            }
            out
        });
        self.shards
            .count(matches!(out, Lookup::Fresh(_) | Lookup::Refresh(_)));
        out
    }

    /// Remember the KMS's answer to a read that began at `read_at`, unless the cache
    /// already holds an answer to a later read; the least recently used entry of the
    /// shard makes room. The state it replaced, when the answer changed it (a change
    /// in the KMS that this process has seen).
    pub fn put(
        &self,
        tenant: &str,
        key_id: &str,
        info: Option<&KeyInfo>,
        read_at: Instant,
    ) -> Option<Option<KeyState>> {
        let key = format!("{tenant}\0{key_id}");
        let state = info.map(|i| i.key_state);
        let mut shard = self.shard(&key)?;
        if shard
            .peek(&key)
            .is_some_and(|e| e.at > read_at || e.floor.is_some_and(|floor| read_at < floor))
        {
            return None;
        }
        let entry = Entry {
            state,
            at: read_at,
            refreshing: false,
            floor: None,
        };
        shard
            .put(key, entry)
            .map(|old| old.state)
            .filter(|old| *old != state)
    }

    /// The key's state changed to `state` somewhere (an event said so), now. Unless the
    /// entry holds that state already, the next lookup finds it past its TTL and asks the
    /// KMS; and no answer to a read that began before now is taken, since it may predate
    /// the change (a refresh in flight would otherwise put the old state back for a TTL).
    /// The state itself is not taken from the event: a later read of the KMS may already
    /// be here, and an older event must not overwrite it. A key the cache does not hold
    /// gets an expired entry with the event's state, for the same reason.
    pub fn expire_unless(&self, tenant: &str, key_id: &str, state: Option<KeyState>) {
        let now = self.now();
        let aged = now.checked_sub(self.ttl.max(Duration::from_millis(1)));
        let key = format!("{tenant}\0{key_id}");
        let Some(mut shard) = self.shard(&key) else {
            return;
        };
        match shard.peek_mut(&key) {
            Some(entry) => {
                entry.floor = Some(now);
                if entry.state != state {
                    match aged {
                        Some(at) => {
                            entry.at = entry.at.min(at);
                            entry.refreshing = false;
                        }
                        None => {
                            shard.pop(&key);
                        }
                    }
                }
            }
            None => {
                if let Some(at) = aged {
                    shard.put(
                        key,
                        Entry {
                            state,
                            at,
                            refreshing: false,
                            floor: Some(now),
                        },
                    );
                }
            }
        }
    }

    /// A refresh ahead of the TTL failed: let a later lookup try again.
    pub fn refresh_failed(&self, tenant: &str, key_id: &str) {
        with_key(tenant, key_id, |key| {
            if let Some(mut shard) = self.shard(key) {
                if let Some(entry) = shard.peek_mut(key) {
                    entry.refreshing = false;
                }
            }
        })
    }

    /// Keep serving what is known of a key for another TTL (the KMS is unreachable).
    pub fn touch(&self, tenant: &str, key_id: &str) {
        with_key(tenant, key_id, |key| {
            if let Some(mut shard) = self.shard(key) {
                if let Some(entry) = shard.get_mut(key) {
                    entry.at = self.now();
                    entry.refreshing = false;
                }
            }
        })
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.shards.sum(|s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most entries the cache will hold.
    pub fn capacity(&self) -> usize {
        self.shards.sum(|s| s.cap().get())
    }

    /// Lookups answered fresh from the cache, and the others.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        self.shards.hits_and_misses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn info(state: KeyState) -> Option<&'static KeyInfo> {
        Some(Box::leak(Box::new(KeyInfo {
            key_id: "k".into(),
            key_name: "n".into(),
            key_state: state,
        })))
    }

    /// Room for every key of a test in any one shard: a shard holds `capacity / SHARDS`
    /// entries, and which shard a key falls in changes from run to run (the hasher is
    /// seeded at random), so a smaller cache would evict a test's own entries now and then.
    const ROOMY: usize = SHARDS * 8;

    /// A cache on a clock the test moves: entries age only when it says so, so a test
    /// thread held up on a busy machine cannot move an entry past a threshold.
    fn cache(ttl: u64, capacity: usize) -> (KeyStateCache, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at_unix(1_767_225_600));
        let c = KeyStateCache::new(Duration::from_secs(ttl), capacity, clock.clone());
        (c, clock)
    }

    #[test]
    fn fresh_then_stale() {
        let (c, clock) = cache(60, ROOMY);
        c.put("t", "k", info(KeyState::Enabled), c.now());
        c.put("t", "old", info(KeyState::Enabled), c.now());
        clock.advance(Duration::from_secs(44));
        assert!(matches!(c.lookup("t", "k"), Lookup::Fresh(Some(_))));
        clock.advance(Duration::from_secs(17));
        assert!(matches!(c.lookup("t", "old"), Lookup::Stale(Some(_))));
        assert!(matches!(c.lookup("other", "k"), Lookup::Unknown));
        assert_eq!(c.hits_and_misses(), (1, 2));
    }

    #[test]
    fn zero_ttl_is_never_fresh() {
        let (c, _) = cache(0, ROOMY);
        c.put("t", "k", info(KeyState::Enabled), c.now());
        assert!(matches!(c.lookup("t", "k"), Lookup::Stale(Some(_))));
    }

    #[test]
    fn bounded_by_capacity() {
        let (c, _) = cache(60, 64);
        for i in 0..10_000 {
            c.put("t", &i.to_string(), None, c.now());
        }
        assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        assert!(c.capacity() <= 64 + SHARDS);
        assert!(matches!(c.lookup("t", "9999"), Lookup::Fresh(None)));
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        // Two entries a shard: a third key in the same shard evicts the older unless it
        // was used since.
        let (c, _) = cache(60, SHARDS * 2);
        let same_shard: Vec<String> = (0..10_000)
            .map(|i| i.to_string())
            .filter(|k| c.shards.index(format!("t\0{k}").as_str()) == c.shards.index("t\0a"))
            .take(2)
            .collect();
        c.put("t", "a", info(KeyState::Enabled), c.now());
        c.put("t", &same_shard[0], None, c.now());
        assert!(matches!(c.lookup("t", "a"), Lookup::Fresh(Some(_)))); // "a" used: now newest
        c.put("t", &same_shard[1], None, c.now()); // evicts same_shard[0], not "a"
        assert!(matches!(c.lookup("t", "a"), Lookup::Fresh(Some(_))));
        assert!(matches!(c.lookup("t", &same_shard[0]), Lookup::Unknown));
    }

    #[test]
    fn late_in_the_ttl_one_lookup_is_asked_to_refresh() {
        let (c, clock) = cache(60, ROOMY);
        c.put("t", "young", info(KeyState::Enabled), c.now());
        c.put("t", "k", info(KeyState::Enabled), c.now());
        clock.advance(Duration::from_millis(44_999));
        assert!(matches!(c.lookup("t", "young"), Lookup::Fresh(Some(_))));
        // Past three quarters of the TTL (45 s), not past the TTL.
        clock.advance(Duration::from_secs(5));
        assert!(matches!(c.lookup("t", "k"), Lookup::Refresh(Some(_))));
        // Handed out once: the others keep the cached state meanwhile.
        assert!(matches!(c.lookup("t", "k"), Lookup::Fresh(Some(_))));
        // A failed refresh lets the next lookup try again.
        c.refresh_failed("t", "k");
        assert!(matches!(c.lookup("t", "k"), Lookup::Refresh(Some(_))));
        // The refresh's answer starts a new TTL.
        c.put("t", "k", info(KeyState::Disabled), c.now());
        clock.advance(Duration::from_secs(44));
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Fresh(Some(KeyState::Disabled))
        ));
    }

    #[test]
    fn an_older_read_does_not_replace_a_newer_one() {
        let (c, clock) = cache(60, ROOMY);
        let before = c.now();
        clock.advance(Duration::from_millis(1));
        c.put("t", "k", info(KeyState::Disabled), c.now());
        // A refresh that began before the write above answers after it.
        c.put("t", "k", info(KeyState::Enabled), before);
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Fresh(Some(KeyState::Disabled))
        ));
    }

    #[test]
    fn touch_serves_the_last_state_for_another_ttl() {
        let (c, clock) = cache(60, ROOMY);
        c.put("t", "k", info(KeyState::Enabled), c.now());
        clock.advance(Duration::from_secs(61));
        assert!(matches!(c.lookup("t", "k"), Lookup::Stale(Some(_))));
        c.touch("t", "k");
        clock.advance(Duration::from_secs(44));
        assert!(matches!(c.lookup("t", "k"), Lookup::Fresh(Some(_))));
    }

    #[test]
    fn put_reports_a_change_and_an_event_expires_only_a_different_state() {
        let (c, clock) = cache(60, ROOMY);
        clock.advance(Duration::from_secs(120)); // room below the entries' times
        assert_eq!(c.put("t", "k", info(KeyState::Enabled), c.now()), None);
        assert_eq!(c.put("t", "k", info(KeyState::Enabled), c.now()), None);
        assert_eq!(
            c.put("t", "k", info(KeyState::Disabled), c.now()),
            Some(Some(KeyState::Enabled))
        );
        // An event saying what the cache knows changes nothing.
        c.expire_unless("t", "k", Some(KeyState::Disabled));
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Fresh(Some(KeyState::Disabled))
        ));
        // One saying otherwise sends the next lookup to the KMS.
        c.expire_unless("t", "k", Some(KeyState::Enabled));
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Stale(Some(KeyState::Disabled))
        ));
        // An answer to a read that began before the event is not taken...
        let before = c.now();
        clock.advance(Duration::from_millis(5));
        c.expire_unless("t", "k", Some(KeyState::Disabled));
        assert_eq!(c.put("t", "k", info(KeyState::Enabled), before), None);
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Stale(Some(KeyState::Disabled))
        ));
        // ...one that began after it is.
        c.put("t", "k", info(KeyState::Disabled), c.now());
        assert!(matches!(
            c.lookup("t", "k"),
            Lookup::Fresh(Some(KeyState::Disabled))
        ));
        // A key the cache does not hold gets an expired entry with the event's state, which
        // a read begun before the event cannot overwrite.
        let before = c.now();
        clock.advance(Duration::from_millis(5));
        c.expire_unless("t", "other", Some(KeyState::Disabled));
        c.put("t", "other", info(KeyState::Enabled), before);
        assert!(matches!(
            c.lookup("t", "other"),
            Lookup::Stale(Some(KeyState::Disabled))
        ));
    }
}
