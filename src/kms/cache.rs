//! A short, bounded cache of key states, so GET does not ask the KMS on every request,
//! and so the last known state can be served while the KMS is unreachable.
//!
//! It is a least-recently-used map split into shards (so concurrent GETs rarely wait on
//! one lock), holding at most `capacity` entries in all. Every part of an entry has a
//! bounded length (ids and names are at most 1,000 characters by the API's rules), so the
//! memory it can take is bounded by the capacity: a few KiB an entry at most, about 300
//! bytes for real ids. Only keys that exist are cached from writes, so a tenant naming
//! made-up keys cannot fill it.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::KeyInfo;

/// Number of shards; each holds `capacity / SHARDS` entries (at least one).
const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    info: Option<KeyInfo>,
    at: Instant,
}

type Shard = LruCache<(String, String), Entry>;

/// Keyed by (tenant, key id). `None` caches "not found".
pub struct KeyStateCache {
    ttl: Duration,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for KeyStateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStateCache")
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// What the cache knows of a key.
pub enum Lookup {
    /// Fetched within the TTL.
    Fresh(Option<KeyInfo>),
    /// Known, but older than the TTL (usable only as a fallback).
    Stale(Option<KeyInfo>),
    Unknown,
}

impl KeyStateCache {
    /// A TTL of zero turns caching off (the fallback still remembers the last answer).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        KeyStateCache {
            ttl,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, tenant: &str, key_id: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one((tenant, key_id)) as usize) % SHARDS]
    }

    pub fn lookup(&self, tenant: &str, key_id: &str) -> Lookup {
        let found = match self.shard(tenant, key_id).lock() {
            Ok(mut shard) => shard
                .get(&(tenant.to_owned(), key_id.to_owned()))
                .map(|e| (e.info.clone(), e.at)),
            Err(_) => None,
        };
        let out = match found {
            Some((info, at)) if !self.ttl.is_zero() && at.elapsed() < self.ttl => {
                Lookup::Fresh(info)
            }
            Some((info, _)) => Lookup::Stale(info),
            None => Lookup::Unknown,
        };
        let counter = match out {
            Lookup::Fresh(_) => &self.hits,
            _ => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// Remember the KMS's answer; the least recently used entry of the shard makes room.
    pub fn put(&self, tenant: &str, key_id: &str, info: Option<KeyInfo>) {
        if let Ok(mut shard) = self.shard(tenant, key_id).lock() {
            shard.put(
                (tenant.to_owned(), key_id.to_owned()),
                Entry {
                    info,
                    at: Instant::now(),
                },
            );
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most entries the cache will hold.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.cap().get()).unwrap_or(0))
            .sum()
    }

    /// Lookups answered fresh from the cache, and the others.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyState;

    fn info(state: KeyState) -> Option<KeyInfo> {
        Some(KeyInfo {
            key_id: "k".into(),
            key_name: "n".into(),
            key_state: state,
        })
    }

    #[test]
    fn fresh_then_stale() {
        let c = KeyStateCache::new(Duration::from_millis(30), 10);
        c.put("t", "k", info(KeyState::Enabled));
        assert!(matches!(c.lookup("t", "k"), Lookup::Fresh(Some(_))));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(c.lookup("t", "k"), Lookup::Stale(Some(_))));
        assert!(matches!(c.lookup("other", "k"), Lookup::Unknown));
        assert_eq!(c.hits_and_misses(), (1, 2));
    }

    #[test]
    fn zero_ttl_is_never_fresh() {
        let c = KeyStateCache::new(Duration::ZERO, 10);
        c.put("t", "k", info(KeyState::Enabled));
        assert!(matches!(c.lookup("t", "k"), Lookup::Stale(Some(_))));
    }

    #[test]
    fn bounded_by_capacity() {
        let c = KeyStateCache::new(Duration::from_secs(60), 64);
        for i in 0..10_000 {
            c.put("t", &i.to_string(), None);
        }
        assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        assert!(c.capacity() <= 64 + SHARDS);
        assert!(matches!(c.lookup("t", "9999"), Lookup::Fresh(None)));
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        // Two entries a shard: a third key in the same shard evicts the older unless it
        // was used since.
        let c = KeyStateCache::new(Duration::from_secs(60), SHARDS * 2);
        let same_shard: Vec<String> = (0..10_000)
            .map(|i| i.to_string())
            .filter(|k| std::ptr::eq(c.shard("t", k), c.shard("t", "a")))
            .take(2)
            .collect();
        c.put("t", "a", info(KeyState::Enabled));
        c.put("t", &same_shard[0], None);
        assert!(matches!(c.lookup("t", "a"), Lookup::Fresh(Some(_)))); // "a" used: now newest
        c.put("t", &same_shard[1], None); // evicts same_shard[0], not "a"
        assert!(matches!(c.lookup("t", "a"), Lookup::Fresh(Some(_))));
        assert!(matches!(c.lookup("t", &same_shard[0]), Lookup::Unknown));
    }
}
