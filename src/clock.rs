//! Time comes in through this trait so tests can control it: the wall time (what records
//! and tokens carry) and a monotonic reading (what caches, limiters and reuse windows
//! measure ages with).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;

    /// A reading that never goes back, for measuring how long ago something happened.
    fn monotonic(&self) -> Instant;

    /// Whole seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// RFC 3339 timestamp with milliseconds, UTC.
    fn rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.now()).to_string()
    }
}

/// `work`'s output, or `None` once `limit` has passed since `start` (then `work` is
/// dropped). The timer is made only when `work` is not done at its first poll: what is
/// answered from memory never needs one (making it costs a runtime-handle lookup and a
/// clock read).
pub async fn within<F: Future>(start: Instant, limit: Duration, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return Some(out);
    }
    tokio::time::timeout_at((start + limit).into(), work)
        .await
        .ok()
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move by hand: both readings stand still until [`ManualClock::advance`]
/// moves them, together, by the same amount (to the nanosecond).
#[derive(Debug)]
pub struct ManualClock {
    /// The wall time it started at, in seconds since the Unix epoch.
    start_unix: u64,
    /// The monotonic reading it started at.
    start: Instant,
    /// Nanoseconds advanced since (u64 holds 584 years of them).
    advanced: AtomicU64,
}

impl ManualClock {
    pub fn at_unix(secs: u64) -> Self {
        ManualClock {
            start_unix: secs,
            start: Instant::now(),
            advanced: AtomicU64::new(0),
        }
    }

    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Saturating, so that a huge step cannot wrap the clock back.
        let _ = self
            .advanced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(nanos))
            });
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.advanced.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.start_unix) + self.elapsed()
    }

    fn monotonic(&self) -> Instant {
        self.start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_both_readings_together() {
        let c = ManualClock::at_unix(1_767_225_600);
        let (wall, mono) = (c.now(), c.monotonic());
        assert_eq!(c.unix_seconds(), 1_767_225_600);
        assert_eq!(c.rfc3339(), "2026-01-01T00:00:00.000Z");
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!((c.now(), c.monotonic()), (wall, mono));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.monotonic() - mono, Duration::from_millis(1500));
        assert_eq!(
            c.now().duration_since(wall).ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(c.unix_seconds(), 1_767_225_601);
        assert_eq!(c.rfc3339(), "2026-01-01T00:00:01.500Z");
    }
}
