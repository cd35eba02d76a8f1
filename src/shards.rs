//! What the in-memory caches share: a fixed set of mutex-guarded shards picked by a key's
//! hash (so concurrent requests rarely wait on one lock), per-shard capacities, and hit
//! and miss counters.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Number of shards.
pub const SHARDS: usize = 16;

pub struct Shards<T> {
    shards: Vec<Mutex<T>>,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Entries each shard may hold for `capacity` in all (rounded up; at least one).
pub fn per_shard(capacity: usize) -> NonZeroUsize {
    NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN)
}

/// The index of the shard that holds a key of this hash.
pub fn index_of(hash: u64) -> usize {
    (hash as usize) % SHARDS
}

impl<T> Shards<T> {
    pub fn new(make: impl Fn() -> T) -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::new(make())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The index of the shard that holds `key`.
    pub fn index(&self, key: impl Hash) -> usize {
        index_of(self.hash(key))
    }

    /// `key`'s hash under this set's (randomly seeded) hasher.
    pub fn hash(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn at(&self, index: usize) -> &Mutex<T> {
        &self.shards[index]
    }

    /// The sum of `f` over the shards (a poisoned shard counts 0).
    pub fn sum(&self, f: impl Fn(&T) -> usize) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| f(&s)).unwrap_or(0))
            .sum()
    }

    pub fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups answered from the cache, and the others.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
