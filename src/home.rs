//! The runtime a long-lived part of the service belongs to: its home.
//!
//! `serve` answers requests on connection threads of their own (`http::server`), each a
//! single-threaded event loop. A socket belongs to the event loop it was opened on, and a
//! task to the runtime it was spawned on: had a request opened the database pool's next
//! PostgreSQL connection, or the AWS or Keystone client's next HTTP connection, on its
//! connection thread, every later request using that connection, from whatever thread,
//! would be woken only when that one thread next turned its event loop (later still if the
//! kernel had preempted it), and the connection would die with the thread's runtime.
//!
//! So each long-lived part takes its [`Home`] when it is built (in `serve`, the main
//! runtime, on which `App::open` runs) and polls its outbound calls
//! [`within`](Home::within) it, and starts its background tasks there
//! ([`spawn`](Home::spawn)). The request's task still runs on its connection thread; only
//! what it opens and spawns belongs to the home runtime, whose idle workers wake it.
//!
//! Not wrapped: SQLite, which opens no socket (sqlx gives each connection a thread of its
//! own, talked to over channels); the row caches and the local KMS, which are memory.

use std::future::Future;

/// A handle on the runtime a part was built on; none outside a runtime.
#[derive(Clone, Debug, Default)]
pub struct Home(Option<tokio::runtime::Handle>);

impl Home {
    /// The runtime this is called on (none when called outside one: then
    /// [`within`](Self::within) just polls, and [`spawn`](Self::spawn) drops the task).
    pub fn here() -> Home {
        Home(tokio::runtime::Handle::try_current().ok())
    }

    /// Run `work` where it is awaited, but with the home runtime as the current one while
    /// it is polled: the sockets it opens register with the home runtime's event loop, and
    /// the tasks and timers it starts are the home runtime's.
    pub async fn within<F: Future>(&self, work: F) -> F::Output {
        let Some(home) = &self.0 else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            let _home = home.enter();
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Run `task` on the home runtime, whichever thread asks. `false` when there is no
    /// home runtime (the task is dropped).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        match &self.0 {
            Some(home) => {
                home.spawn(task);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A home runtime, whose one worker is named `home-worker`.
    fn home_and_other() -> (tokio::runtime::Runtime, Home) {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("home-worker")
            .enable_all()
            .build()
            .unwrap();
        let home = main.block_on(async { Home::here() });
        (main, home)
    }

    async fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    #[test]
    fn what_is_spawned_within_runs_on_the_home_runtime() {
        let (_main, home) = home_and_other();
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (inside, outside) = other.block_on(async {
            let inside = home
                .within(async { tokio::spawn(thread_name()).await })
                .await;
            let outside = tokio::spawn(thread_name());
            (inside.unwrap(), outside.await.unwrap())
        });
        assert_eq!(inside.as_deref(), Some("home-worker"));
        assert_ne!(outside.as_deref(), Some("home-worker"));
    }

    #[test]
    fn a_socket_opened_within_is_served_by_the_home_event_loop() {
        let (main, home) = home_and_other();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream =
            other.block_on(home.within(async { tokio::net::TcpStream::connect(addr).await }));
        let stream = stream.unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        // The thread whose runtime opened the socket is gone; the home one still serves it.
        drop(other);
        let read = main.block_on(async move {
            use std::io::Write;
            use tokio::io::AsyncReadExt;
            peer.write_all(b"x").unwrap();
            let mut stream = stream;
            let mut byte = [0u8; 1];
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_exact(&mut byte),
            )
            .await
            .map(|r| r.map(|_| byte[0]))
        });
        assert_eq!(read.unwrap().unwrap(), b'x');
    }

    #[test]
    fn outside_a_runtime_there_is_no_home() {
        let home = Home::here();
        assert!(!home.spawn(async {}));
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(other.block_on(home.within(async { 7 })), 7);
    }
}
