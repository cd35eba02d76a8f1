//! Released data keys, kept in clear for at most the key-state TTL so that a storage node
//! opening a repository again does not cost a KMS call each time.
//!
//! An entry is the repository's (tenant, id), the CMK and wrapped key it was unwrapped
//! from (a rewrap or a shred changes them, and a changed row never matches an old entry),
//! the key in clear (zeroed when the entry goes) and when it was unwrapped. The service
//! checks the CMK's state and the grant before it looks here, so an entry never outlives
//! the kill switch; [`ReleasedKeys::forget_key`] also drops a refused key's entries at
//! once, so they do not linger in memory. Bounded: least recently used first out.

use std::sync::{Arc, RwLockWriteGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::repository::{DataKey, RepoId};
use crate::clock::Clock;
use crate::shards::{per_shard, Shards};

struct Entry {
    cmk_key_id: String,
    wrapped: Vec<u8>,
    key: DataKey,
    at: Instant,
}

type Shard = LruCache<(String, RepoId), Entry>;

pub struct ReleasedKeys {
    ttl: Duration,
    shards: Shards<Shard>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ReleasedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ReleasedKeys {
    /// A TTL of zero keeps nothing.
    pub fn new(ttl: Duration, capacity: usize, clock: Arc<dyn Clock>) -> Self {
        let per_shard = per_shard(capacity);
        ReleasedKeys {
            ttl,
            shards: Shards::new(|| LruCache::new(per_shard)),
            clock,
        }
    }

    fn index(&self, tenant: &str, repo_id: RepoId) -> usize {
        self.shards.index((tenant, repo_id))
    }

    fn shard(&self, tenant: &str, repo_id: RepoId) -> Option<RwLockWriteGuard<'_, Shard>> {
        self.shards.write(self.index(tenant, repo_id))
    }

    /// The key unwrapped from exactly this CMK and wrapped key, within the TTL.
    pub fn get(
        &self,
        tenant: &str,
        repo_id: RepoId,
        cmk_key_id: &str,
        wrapped: &[u8],
    ) -> Option<DataKey> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = self.clock.monotonic();
        let index = self.index(tenant, repo_id);
        let key = (tenant.to_owned(), repo_id);
        // A hit takes its shard shared (see `crate::shards`).
        let usable = |e: &Entry| {
            e.cmk_key_id == cmk_key_id
                && e.wrapped == wrapped
                && now.saturating_duration_since(e.at) < self.ttl
        };
        // Some(Some(key)): a hit; Some(None): an entry of no further use.
        let found = self.shards.peek(index, &key, |_, entry| match entry {
            Some(e) if usable(e) => (Some(Some(e.key.clone())), true),
            Some(_) => (Some(None), false),
            None => (None, false),
        })?;
        let hit = match found {
            Some(Some(data_key)) => Some(data_key),
            // Rewrapped, or past the TTL: of no further use (unless another release
            // put a fresh one since).
            Some(None) => {
                if let Some(mut shard) = self.shards.write(index) {
                    if shard.peek(&key).is_some_and(|e| !usable(e)) {
                        shard.pop(&key);
                    }
                }
                None
            }
            None => None,
        };
        self.shards.count(hit.is_some());
        hit
    }

    /// Remember a key unwrapped at `at` (when the KMS call began).
    pub fn put(
        &self,
        tenant: &str,
        repo_id: RepoId,
        cmk_key_id: &str,
        wrapped: &[u8],
        key: &DataKey,
        at: Instant,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        if let Some(mut shard) = self.shard(tenant, repo_id) {
            shard.put(
                (tenant.to_owned(), repo_id),
                Entry {
                    cmk_key_id: cmk_key_id.to_owned(),
                    wrapped: wrapped.to_vec(),
                    key: key.clone(),
                    at,
                },
            );
        }
    }

    /// Drop one repository's key (it was shredded).
    pub fn forget(&self, tenant: &str, repo_id: RepoId) {
        if let Some(mut shard) = self.shard(tenant, repo_id) {
            shard.pop(&(tenant.to_owned(), repo_id));
        }
    }

    /// Drop every key of `tenant` wrapped by `cmk_key_id` (`None`: every key of the
    /// tenant), when the KMS or the grant refuses them.
    pub fn forget_key(&self, tenant: &str, cmk_key_id: Option<&str>) {
        for i in 0..crate::shards::SHARDS {
            if let Some(mut shard) = self.shards.write(i) {
                let gone: Vec<_> = shard
                    .iter()
                    .filter(|((t, _), e)| {
                        t == tenant && cmk_key_id.is_none_or(|k| k == e.cmk_key_id)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    shard.pop(&k);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.sum(|s| s.len())
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
    use crate::clock::ManualClock;

    #[test]
    fn keys_are_kept_for_the_ttl_and_only_for_their_wrapped_form() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let cache = ReleasedKeys::new(Duration::from_secs(10), 100, clock.clone());
        let id = RepoId::new(1).expect("id");
        let key = DataKey::from_bytes([1; 32]);
        cache.put("t", id, "k", b"w", &key, clock.monotonic());
        assert!(cache.get("t", id, "k", b"w") == Some(key.clone()));
        assert!(cache.get("t", id, "k", b"other").is_none(), "rewrapped");
        cache.put("t", id, "k", b"w", &key, clock.monotonic());
        assert!(cache.get("t", id, "k2", b"w").is_none(), "another CMK");
        cache.put("t", id, "k", b"w", &key, clock.monotonic());
        clock.advance(Duration::from_secs(10));
        assert!(cache.get("t", id, "k", b"w").is_none(), "past the TTL");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_refused_key_is_forgotten_at_once() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        // Room for every entry in whichever shard the hash puts it (the capacity is split
        // across shards: a small one evicts by chance, and the counts below would vary).
        let cache = ReleasedKeys::new(Duration::from_secs(10), 100_000, clock.clone());
        let key = DataKey::from_bytes([1; 32]);
        for i in 1..=20 {
            let cmk = if i % 2 == 0 { "even" } else { "odd" };
            cache.put(
                "t",
                RepoId::new(i).expect("id"),
                cmk,
                b"w",
                &key,
                clock.monotonic(),
            );
            cache.put(
                "u",
                RepoId::new(i).expect("id"),
                cmk,
                b"w",
                &key,
                clock.monotonic(),
            );
        }
        cache.forget_key("t", Some("even"));
        assert_eq!(cache.len(), 30);
        cache.forget_key("u", None);
        assert_eq!(cache.len(), 10);
        cache.forget("t", RepoId::new(1).expect("id"));
        assert_eq!(cache.len(), 9);
        let off = ReleasedKeys::new(Duration::ZERO, 100, clock.clone());
        off.put(
            "t",
            RepoId::new(1).expect("id"),
            "k",
            b"w",
            &key,
            clock.monotonic(),
        );
        assert!(off.is_empty());
    }
}
