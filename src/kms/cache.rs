//! A short, bounded cache of key states, so GET does not ask the KMS on every request,
//! and so the last known state can be served while the KMS is unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::KeyInfo;

#[derive(Debug)]
struct Entry {
    info: Option<KeyInfo>,
    at: Instant,
}

/// Keyed by (tenant, key id). `None` caches "not found".
#[derive(Debug)]
pub struct KeyStateCache {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<(String, String), Entry>>,
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
        KeyStateCache {
            ttl,
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn lookup(&self, tenant: &str, key_id: &str) -> Lookup {
        let Ok(map) = self.map.lock() else {
            return Lookup::Unknown;
        };
        match map.get(&(tenant.to_owned(), key_id.to_owned())) {
            Some(e) if !self.ttl.is_zero() && e.at.elapsed() < self.ttl => {
                Lookup::Fresh(e.info.clone())
            }
            Some(e) => Lookup::Stale(e.info.clone()),
            None => Lookup::Unknown,
        }
    }

    pub fn put(&self, tenant: &str, key_id: &str, info: Option<KeyInfo>) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, e| e.at.elapsed() < ttl);
            if map.len() >= self.capacity {
                // Still full of fresh entries: drop the oldest.
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            (tenant.to_owned(), key_id.to_owned()),
            Entry {
                info,
                at: Instant::now(),
            },
        );
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
    }

    #[test]
    fn zero_ttl_is_never_fresh() {
        let c = KeyStateCache::new(Duration::ZERO, 10);
        c.put("t", "k", info(KeyState::Enabled));
        assert!(matches!(c.lookup("t", "k"), Lookup::Stale(Some(_))));
    }

    #[test]
    fn bounded() {
        let c = KeyStateCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            c.put("t", &i.to_string(), None);
        }
        assert!(c.map.lock().map(|m| m.len()).unwrap_or(0) <= 3);
        assert!(matches!(c.lookup("t", "9"), Lookup::Fresh(None)));
    }
}
