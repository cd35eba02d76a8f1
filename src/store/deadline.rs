//! The deadline of every PostgreSQL call (`db_timeout`): a database that stops answering
//! (a stalled network path, a frozen server) costs a request 503 `RC.503002` within the
//! deadline, never a hang until the request timeout.
//!
//! A call cut by its deadline drops its connection mid-conversation. sqlx then tests the
//! connection on its way back to the pool with a round trip that has no deadline of its
//! own, and a connection that never answers would hold its pool slot until the kernel
//! gives up on it (many minutes): with all slots held so, the pool could not serve again
//! when the database came back. So for a while after any missed deadline the pool's
//! `after_release` hook ([`Deadline::test_released`]) first tests each returned connection
//! within the deadline, and one that does not answer is closed at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::{Error, Result};

/// How long after a missed deadline returned connections are tested within the deadline.
/// The test costs a round trip per release, so it is not made when all is well.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Deadline(Arc<Inner>);

struct Inner {
    /// The database, as the error names it.
    database: &'static str,
    limit: Duration,
    born: Instant,
    /// Milliseconds from `born` to the last missed deadline, plus one; 0 for never.
    last_missed: AtomicU64,
}

impl Deadline {
    pub(crate) fn new(database: &'static str, limit: Duration) -> Self {
        Deadline(Arc::new(Inner {
            database,
            limit,
            born: Instant::now(),
            last_missed: AtomicU64::new(0),
        }))
    }

    pub(crate) fn limit(&self) -> Duration {
        self.0.limit
    }

    /// `work`'s result, or a 503 naming the database and `call` once the deadline has
    /// passed; then `work` is dropped, after the miss is noted (so that the connection it
    /// drops is tested on release).
    pub(crate) async fn bound<T>(
        &self,
        call: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut work = std::pin::pin!(work);
        match crate::clock::within(Instant::now(), self.0.limit, work.as_mut()).await {
            Some(result) => result,
            None => Err(self.missed(call)),
        }
    }

    /// Note a missed deadline, and the error its caller gets.
    pub(crate) fn missed(&self, call: &str) -> Error {
        let ms = self.0.born.elapsed().as_millis() as u64 + 1;
        self.0.last_missed.store(ms, Ordering::Relaxed);
        Error::Store(format!(
            "{} did not answer within db_timeout ({}): {call}",
            self.0.database,
            humantime::format_duration(self.0.limit)
        ))
    }

    fn missed_recently(&self) -> bool {
        match self.0.last_missed.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let now = self.0.born.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(at) < SUSPECT_FOR.as_millis() as u64
            }
        }
    }

    /// For the pool's `after_release`: `Ok(true)` to keep a returned connection; an error
    /// (the connection is closed at once, without a goodbye that could hang) when it does
    /// not answer a round trip within the deadline while deadlines are being missed.
    pub(crate) async fn test_released<C: sqlx::Connection>(
        &self,
        conn: &mut C,
    ) -> std::result::Result<bool, sqlx::Error> {
        if !self.missed_recently() {
            return Ok(true);
        }
        match tokio::time::timeout(self.0.limit, conn.ping()).await {
            Ok(answered) => answered.map(|()| true),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_503_naming_the_database_and_the_call() {
        let d = Deadline::new("PostgreSQL", Duration::from_millis(50));
        assert!(!d.missed_recently());
        let start = Instant::now();
        let err = d
            .bound("get_grant", std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(err.code(), "RC.503002");
        assert_eq!(
            err.internal_detail(),
            Some("PostgreSQL did not answer within db_timeout (50ms): get_grant")
        );
        assert!(d.missed_recently());
        // A call that answers in time is untouched.
        assert_eq!(d.bound("ping", async { Ok(7) }).await.unwrap(), 7);
    }
}
