//! Token buckets per tenant and per credential, so one client cannot take the service
//! from the others.
//!
//! A bucket holds two seconds' worth of requests and refills at the configured rate. The
//! buckets live in a sharded LRU map of bounded size, keyed by a 64-bit hash of the
//! tenant or credential: a key that has been idle long enough to be evicted had a full
//! bucket anyway, so eviction never admits more than the rate allows for an active client.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;

use crate::clock::Clock;
use crate::shards::{index_of, per_shard, Shards};

/// Buckets each limiter keeps at most (about 40 bytes each).
pub const MAX_BUCKETS: usize = 100_000;

/// How many seconds of the rate a full bucket holds.
const BURST_SECONDS: f64 = 2.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rate: f64,
    capacity: f64,
    buckets: Shards<LruCache<u64, Bucket>>,
    rejected: AtomicU64,
    /// What refills are measured with (`Clock::monotonic`).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .finish()
    }
}

impl RateLimiter {
    /// `rate` requests per second for each key, on `clock`'s monotonic reading.
    pub fn new(rate: NonZeroU32, max_buckets: usize, clock: Arc<dyn Clock>) -> Self {
        let rate = f64::from(rate.get());
        let per_shard = per_shard(max_buckets);
        RateLimiter {
            rate,
            capacity: rate * BURST_SECONDS,
            buckets: Shards::new(|| LruCache::new(per_shard)),
            rejected: AtomicU64::new(0),
            clock,
        }
    }

    /// `None` for a rate of 0 (no limit).
    pub fn per_second(rate: u32, clock: Arc<dyn Clock>) -> Option<Self> {
        NonZeroU32::new(rate).map(|r| RateLimiter::new(r, MAX_BUCKETS, clock))
    }

    /// Take one request from `key`'s bucket, or say in how many whole seconds (at least
    /// 1) one will be available.
    pub fn check(&self, key: impl Hash) -> Result<(), u64> {
        self.check_at(key, self.clock.monotonic())
    }

    pub fn check_at(&self, key: impl Hash, now: Instant) -> Result<(), u64> {
        let hash = self.buckets.hash(key);
        let shard = self.buckets.at(index_of(hash));
        let mut shard = match shard.write() {
            Ok(s) => s,
            // A panic while holding the lock cannot leave a bucket half-written in a way
            // that matters; keep limiting rather than failing requests.
            Err(poisoned) => poisoned.into_inner(),
        };
        let bucket = shard.get_or_insert_mut(hash, || Bucket {
            tokens: self.capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// Requests refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use std::time::Duration;

    fn limiter(rate: u32) -> RateLimiter {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        RateLimiter::new(rate, 1000, Arc::new(SystemClock))
    }

    #[test]
    fn a_full_bucket_admits_two_seconds_of_requests_then_refuses() {
        let l = limiter(5);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(l.check_at("t1", t0), Ok(()), "request {i}");
        }
        assert_eq!(l.check_at("t1", t0), Err(1));
        assert_eq!(l.rejected(), 1);
        // Other keys have their own buckets.
        assert_eq!(l.check_at("t2", t0), Ok(()));
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let l = limiter(5);
        let t0 = Instant::now();
        for _ in 0..10 {
            let _ = l.check_at("t1", t0);
        }
        assert!(l.check_at("t1", t0).is_err());
        // 200 ms at 5/s is one request.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(l.check_at("t1", t1), Ok(()));
        assert!(l.check_at("t1", t1).is_err());
        // Never more than the burst, however long the key was idle.
        let later = t1 + Duration::from_secs(3600);
        let admitted = (0..100).filter(|_| l.check_at("t1", later).is_ok()).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let l = limiter(1);
        let t0 = Instant::now();
        assert!(l.check_at("k", t0).is_ok());
        assert!(l.check_at("k", t0).is_ok());
        // Empty: the next token is one second away.
        assert_eq!(l.check_at("k", t0), Err(1));
        // Half a token: still rounds up to one second.
        assert_eq!(l.check_at("k", t0 + Duration::from_millis(500)), Err(1));
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(NonZeroU32::MIN, 1000, Arc::new(SystemClock));
        let t0 = Instant::now();
        for i in 0..50_000u32 {
            let _ = l.check_at(i, t0);
        }
        assert!(l.buckets.sum(|s| s.len()) <= 1000 + crate::shards::SHARDS);
    }

    #[test]
    fn check_reads_the_clock_it_was_given() {
        let clock = Arc::new(ManualClock::at_unix(1_767_225_600));
        let l = RateLimiter::new(
            NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            1000,
            clock.clone(),
        );
        let admitted = (0..20).filter(|_| l.check("t1").is_ok()).count();
        assert_eq!(admitted, 10);
        assert_eq!(l.check("t1"), Err(1));
        clock.advance(Duration::from_millis(400));
        assert_eq!(l.check("t1"), Ok(()));
        assert_eq!(l.check("t1"), Ok(()));
        assert_eq!(l.check("t1"), Err(1));
    }
}
