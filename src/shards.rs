//! What the in-memory caches share: a fixed set of lock-guarded shards picked by a key's
//! hash (so concurrent requests rarely wait on one lock), per-shard capacities, and hit
//! and miss counters.
//!
//! A shard is a read-write lock, and a cache hit takes it shared ([`Shards::read`]): the
//! requests of one busy tenant all hit the same entries of the same shard, and with an
//! exclusive lock two worker threads took turns on it, one of them asleep in the kernel
//! at every turn (`docs/performance.md`, "Hot entries without a lock to wait on"). The
//! LRU's recency is then updated after the read, by [`promote`]: never when the entry is
//! already the most recent one (the hot entry of a busy tenant), and only when the shard
//! is free at that moment. So single-threaded use is exactly least recently used, and
//! under contention an entry may miss a promotion (overlapping hits may all skip theirs);
//! a hit never waits for one. Hits still wait behind a change of the shard (a fill, an
//! invalidation, a refresh claimed, an expired entry removed), which holds it briefly.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use lru::LruCache;

/// Number of shards.
pub const SHARDS: usize = 16;

pub struct Shards<T> {
    shards: Vec<RwLock<T>>,
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
            shards: (0..SHARDS).map(|_| RwLock::new(make())).collect(),
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

    pub fn at(&self, index: usize) -> &RwLock<T> {
        &self.shards[index]
    }

    /// Shard `index`, shared: for a lookup that changes nothing (`None`: a thread panicked
    /// holding it; the caches then answer as a miss).
    pub fn read(&self, index: usize) -> Option<RwLockReadGuard<'_, T>> {
        self.shards[index].read().ok()
    }

    /// Shard `index`, exclusive: for anything that changes it.
    pub fn write(&self, index: usize) -> Option<RwLockWriteGuard<'_, T>> {
        self.shards[index].write().ok()
    }

    /// The sum of `f` over the shards (a poisoned shard counts 0).
    pub fn sum(&self, f: impl Fn(&T) -> usize) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|s| f(&s)).unwrap_or(0))
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

/// Whether `key` is `map`'s most recently used entry (then a hit need not promote it).
pub fn is_most_recent<K, Q, V>(map: &LruCache<K, V>, key: &Q) -> bool
where
    K: Borrow<Q> + Hash + Eq,
    Q: Eq + ?Sized,
{
    map.iter().next().is_some_and(|(k, _)| k.borrow() == key)
}

/// After a hit under [`Shards::read`]: make `key` the most recently used entry of shard
/// `index`'s map (`lru` finds it in the shard), unless another thread holds the shard now.
pub fn promote<T, K, Q, V>(
    shards: &Shards<T>,
    index: usize,
    lru: impl FnOnce(&mut T) -> &mut LruCache<K, V>,
    key: &Q,
) where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    if let Ok(mut shard) = shards.at(index).try_write() {
        lru(&mut shard).promote(key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_hit_promotes_its_entry_unless_the_shard_is_busy() {
        let shards = Shards::new(|| LruCache::<u32, u32>::new(NonZeroUsize::new(3).unwrap()));
        let mut map = shards.write(0).unwrap();
        for k in 1..=3 {
            map.put(k, k);
        }
        assert!(is_most_recent(&map, &3) && !is_most_recent(&map, &1));
        drop(map);
        promote(&shards, 0, |m| m, &1);
        assert!(is_most_recent(&shards.read(0).unwrap(), &1));
        // Held by another reader: the promotion is skipped, not waited for.
        let held = shards.read(0).unwrap();
        promote(&shards, 0, |m| m, &2);
        drop(held);
        assert!(is_most_recent(&shards.read(0).unwrap(), &1));
        // 1 was promoted, so 2 is the least recent and makes room.
        shards.write(0).unwrap().put(4, 4);
        let map = shards.read(0).unwrap();
        assert!(map.peek(&2).is_none() && map.peek(&1).is_some());
    }
}
