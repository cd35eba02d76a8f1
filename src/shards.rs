//! What the in-memory caches share: a fixed set of lock-guarded shards picked by a key's
//! hash (so concurrent requests rarely wait on one lock), per-shard capacities, and hit
//! and miss counters.
//!
//! A shard is a read-write lock, and a cache hit takes it shared ([`Shards::read`]): the
//! requests of one busy tenant all hit the same entries of the same shard, and with an
//! exclusive lock two worker threads took turns on it, one of them asleep in the kernel
//! at every turn (`docs/performance.md`, "Hot entries without a lock to wait on"). The
//! LRU's recency is then updated after the read, by `promote`: never when the entry is
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

/// A shard that is, or holds, a least-recently-used map (what [`Shards::peek`] looks in).
pub trait Lru {
    type K: Hash + Eq;
    type V;
    fn lru(&self) -> &LruCache<Self::K, Self::V>;
    fn lru_mut(&mut self) -> &mut LruCache<Self::K, Self::V>;
}

impl<K: Hash + Eq, V> Lru for LruCache<K, V> {
    type K = K;
    type V = V;
    fn lru(&self) -> &LruCache<K, V> {
        self
    }
    fn lru_mut(&mut self) -> &mut LruCache<K, V> {
        self
    }
}

impl<T: Lru> Shards<T> {
    /// A lookup of `key` in shard `index` under its shared lock: `look` sees the shard and
    /// the entry (if any) and returns the answer and whether it used the entry. A used
    /// entry is then made most recent, by [`promote`] (`None`: the shard is poisoned).
    pub fn peek<Q, R>(
        &self,
        index: usize,
        key: &Q,
        look: impl FnOnce(&T, Option<&T::V>) -> (R, bool),
    ) -> Option<R>
    where
        T::K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (answer, promote_it) = {
            let shard = self.read(index)?;
            let (answer, used) = look(&shard, shard.lru().peek(key));
            (answer, used && !is_most_recent(shard.lru(), key))
        };
        if promote_it {
            promote(self, index, key);
        }
        Some(answer)
    }
}

/// Whether `key` is `map`'s most recently used entry (then a hit need not promote it).
fn is_most_recent<K, Q, V>(map: &LruCache<K, V>, key: &Q) -> bool
where
    K: Borrow<Q> + Hash + Eq,
    Q: Eq + ?Sized,
{
    map.iter().next().is_some_and(|(k, _)| k.borrow() == key)
}

/// After a hit under [`Shards::read`]: make `key` the most recently used entry of shard
/// `index`, unless another thread holds the shard now.
fn promote<T: Lru, Q>(shards: &Shards<T>, index: usize, key: &Q)
where
    T::K: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    if let Ok(mut shard) = shards.at(index).try_write() {
        shard.lru_mut().promote(key);
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
        promote(&shards, 0, &1);
        assert!(is_most_recent(&shards.read(0).unwrap(), &1));
        // Held by another reader: the promotion is skipped, not waited for.
        let held = shards.read(0).unwrap();
        promote(&shards, 0, &2);
        drop(held);
        assert!(is_most_recent(&shards.read(0).unwrap(), &1));
        // 1 was promoted, so 2 is the least recent and makes room.
        shards.write(0).unwrap().put(4, 4);
        let map = shards.read(0).unwrap();
        assert!(map.peek(&2).is_none() && map.peek(&1).is_some());
    }
}
