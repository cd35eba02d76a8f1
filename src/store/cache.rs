//! A bounded read-through cache of rows that only this process writes (SQLite's settings
//! and grants), so GETs need not read the database.
//!
//! Exactness rests on one rule: a reader may store what it read only if no write to that
//! shard has finished since it started reading. Readers take a `Ticket` (the shard's
//! generation) before reading the database; writers bump the generation and drop the
//! entry after they commit. So a reader that raced with a write never stores its (maybe
//! older) row, and a later read goes to the database.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;

const SHARDS: usize = 16;

struct Shard<V> {
    generation: u64,
    map: LruCache<String, V>,
}

pub struct RowCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    hasher: std::collections::hash_map::RandomState,
    enabled: bool,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Proof of the shard's generation when a read began.
pub struct Ticket {
    shard: usize,
    generation: u64,
}

impl<V: Clone> RowCache<V> {
    /// At most `capacity` rows (rounded up to a multiple of the shard count); 0 turns the
    /// cache off.
    pub fn new(capacity: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        RowCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        generation: 0,
                        map: LruCache::new(per_shard),
                    })
                })
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            enabled: capacity > 0,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// The cached row, or a ticket to read the database with.
    pub fn get(&self, key: &str) -> Result<V, Ticket> {
        let shard = self.shard_of(key);
        let found = match self.shards[shard].lock() {
            Ok(mut s) if self.enabled => match s.map.get(key) {
                Some(v) => Ok(v.clone()),
                None => Err(s.generation),
            },
            Ok(s) => Err(s.generation),
            Err(_) => Err(u64::MAX),
        };
        match found {
            Ok(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(v)
            }
            Err(generation) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Err(Ticket { shard, generation })
            }
        }
    }

    /// Store what was read with `ticket`, unless a write finished since.
    pub fn fill(&self, key: &str, ticket: Ticket, value: V) {
        if !self.enabled {
            return;
        }
        if let Ok(mut s) = self.shards[ticket.shard].lock() {
            if s.generation == ticket.generation {
                s.map.put(key.to_owned(), value);
            }
        }
    }

    /// A write to `key` has committed: forget it, and refuse fills that began before.
    pub fn invalidate(&self, key: &str) {
        if let Ok(mut s) = self.shards[self.shard_of(key)].lock() {
            s.generation = s.generation.wrapping_add(1);
            s.map.pop(key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

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

    #[test]
    fn read_through() {
        let c = RowCache::<u32>::new(100);
        let t = c.get("a").expect_err("miss");
        c.fill("a", t, 1);
        assert_eq!(c.get("a").ok(), Some(1));
        assert_eq!(c.hits_and_misses(), (1, 1));
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let c = RowCache::<u32>::new(100);
        let t = c.get("a").expect_err("miss"); // reader starts, reads the old row (1)
        c.invalidate("a"); // a write commits (2)
        c.fill("a", t, 1); // the reader's old row must not be kept
        assert!(c.get("a").is_err());
        // A write to another key of the same shard also refuses it (coarse, never wrong).
        let t = c.get("a").expect_err("miss");
        c.fill("a", t, 2);
        assert_eq!(c.get("a").ok(), Some(2));
    }

    #[test]
    fn off_and_bounded() {
        let off = RowCache::<u32>::new(0);
        let t = off.get("a").expect_err("miss");
        off.fill("a", t, 1);
        assert!(off.get("a").is_err());
        let c = RowCache::<u32>::new(32);
        for i in 0..1000 {
            let k = i.to_string();
            if let Err(t) = c.get(&k) {
                c.fill(&k, t, i);
            }
        }
        assert!(c.len() <= 32, "{}", c.len());
    }
}
