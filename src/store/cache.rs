//! A bounded read-through cache of rows that only this process writes (SQLite's settings
//! and grants), so GETs need not read the database.
//!
//! Exactness rests on one rule: a reader may store what it read only if no write to that
//! shard has finished since it started reading. Readers take a `Ticket` (the shard's
//! generation) before reading the database; writers bump the generation and drop the
//! entry after they commit. So a reader that raced with a write never stores its (maybe
//! older) row, and a later read goes to the database.

use lru::LruCache;

use crate::shards::{per_shard, Lru, Shards};

struct Shard<V> {
    generation: u64,
    map: LruCache<String, V>,
}

impl<V> Lru for Shard<V> {
    type K = String;
    type V = V;
    fn lru(&self) -> &LruCache<String, V> {
        &self.map
    }
    fn lru_mut(&mut self) -> &mut LruCache<String, V> {
        &mut self.map
    }
}

pub struct RowCache<V> {
    shards: Shards<Shard<V>>,
    enabled: bool,
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
        let per_shard = per_shard(capacity);
        RowCache {
            shards: Shards::new(|| Shard {
                generation: 0,
                map: LruCache::new(per_shard),
            }),
            enabled: capacity > 0,
        }
    }

    /// The cached row, or a ticket to read the database with. A hit takes its shard
    /// shared (see `crate::shards`).
    pub fn get(&self, key: &str) -> Result<V, Ticket> {
        let shard = self.shards.index(key);
        let found = self
            .shards
            .peek(shard, key, |s, found| match found {
                Some(v) if self.enabled => (Ok(v.clone()), true),
                _ => (Err(s.generation), false),
            })
            .unwrap_or(Err(u64::MAX));
        self.shards.count(found.is_ok());
        found.map_err(|generation| Ticket { shard, generation })
    }

    /// Store what was read with `ticket`, unless a write finished since.
    pub fn fill(&self, key: &str, ticket: Ticket, value: V) {
        if !self.enabled {
            return;
        }
        if let Some(mut s) = self.shards.write(ticket.shard) {
            if s.generation == ticket.generation {
                s.map.put(key.to_owned(), value);
            }
        }
    }

    /// A write to `key` has committed: forget it, and refuse fills that began before.
    pub fn invalidate(&self, key: &str) {
        if let Some(mut s) = self.shards.write(self.shards.index(key)) {
            s.generation = s.generation.wrapping_add(1);
            s.map.pop(key);
        }
    }

    /// A write to every key that starts with `prefix` has committed: forget them all, and
    /// refuse every fill that began before (in any shard: the keys are spread over all).
    pub fn invalidate_prefix(&self, prefix: &str) {
        for index in 0..crate::shards::SHARDS {
            if let Some(mut s) = self.shards.write(index) {
                s.generation = s.generation.wrapping_add(1);
                let keys: Vec<String> = s
                    .map
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    s.map.pop(&k);
                }
            }
        }
    }

    /// Writes this cache cannot name have committed: forget everything, and refuse fills
    /// that began before.
    pub fn clear(&self) {
        for i in 0..crate::shards::SHARDS {
            if let Some(mut s) = self.shards.write(i) {
                s.generation = s.generation.wrapping_add(1);
                s.map.clear();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.sum(|s| s.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hits_and_misses(&self) -> (u64, u64) {
        self.shards.hits_and_misses()
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
    fn a_prefix_is_forgotten_in_every_shard_and_races_are_refused() {
        let c = RowCache::<u32>::new(1000);
        for i in 0..100 {
            for tenant in ["a", "b"] {
                let k = format!("{tenant}\0{i}");
                let t = c.get(&k).expect_err("miss");
                c.fill(&k, t, i);
            }
        }
        let raced = c.get("a\0new").expect_err("miss"); // a reader starts
        c.invalidate_prefix("a\0");
        c.fill("a\0new", raced, 1); // what it read may be older than the write
        for i in 0..100 {
            assert!(c.get(&format!("a\0{i}")).is_err(), "a {i} forgotten");
            assert_eq!(c.get(&format!("b\0{i}")).ok(), Some(i), "b {i} kept");
        }
        assert!(c.get("a\0new").is_err(), "the raced read was not kept");
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
