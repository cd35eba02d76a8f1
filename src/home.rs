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
//! SQLite opens no socket (sqlx gives each connection a thread of its own, talked to over
//! channels), but its pool of four readers is shared by every thread: the reads on a
//! request's path that miss the row caches (a setting, a grant, a key, a repository, an
//! access key's credential) are [`run`](Home::run) at home as tasks of their own, so that
//! a pooled connection goes back to the pool when its query is done, not when the asking
//! connection thread is next scheduled (docs/performance.md, "Cold reads at home"). The
//! other SQLite calls (writes, lists, audit) are awaited where they are asked. Not
//! wrapped: the row caches and the local KMS, which are memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

/// A handle on the runtime a part was built on; none outside a runtime.
#[derive(Clone, Debug, Default)]
pub struct Home(Option<Handle>);

impl Home {
    /// The runtime this is called on (none when called outside one: then the part uses
    /// whichever runtime it is called on, as `tokio::spawn` would).
    pub fn here() -> Home {
        Home(Handle::try_current().ok())
    }

    /// `work`, run where it is awaited but with the home runtime as the current one while
    /// it is polled and when it is dropped (done, or cut short by a deadline or a client
    /// gone): the sockets it opens register with the home runtime's event loop, and the
    /// tasks and timers it starts, a pooled connection's return among them, are the home
    /// runtime's.
    pub fn within<F: Future>(&self, work: F) -> Within<F> {
        Within {
            home: self.0.clone(),
            work: Some(work),
        }
    }

    /// Run `work` as a task of its own on the home runtime (none: here, inline) and wait
    /// for its answer here. Unlike [`within`](Self::within), nothing of it waits for the
    /// asking thread: a pooled connection it takes is given back as soon as the work is
    /// done, however long the asking thread then takes to be scheduled. If the asker stops
    /// waiting, the work is cut (dropped at home, at its next turn there). `None`: the home
    /// runtime is shutting down and the work was dropped. A panic in the work is the
    /// asker's.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let Some(home) = self.0.as_ref() else {
            return Some(work.await);
        };
        let mut task = CutOnDrop(home.spawn(work));
        match (&mut task.0).await {
            Ok(done) => Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// Run `task` on the home runtime (none: on the current one), whichever thread asks.
    /// `false` when there is no runtime at all: the task is dropped.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        match self.0.clone().or_else(|| Handle::try_current().ok()) {
            Some(home) => {
                home.spawn(task);
                true
            }
            None => false,
        }
    }
}

/// A task of [`Home::run`]'s, aborted if its asker stops waiting (a no-op once it ended).
struct CutOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for CutOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pin_project_lite::pin_project! {
    /// See [`Home::within`].
    pub struct Within<F> {
        home: Option<Handle>,
        #[pin]
        work: Option<F>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _home = this.home.as_ref().map(Handle::enter);
            this.work.set(None);
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _home = this.home.as_ref().map(Handle::enter);
        // Polled again after it completed: it never completes again (as `Fuse`).
        let Some(work) = this.work.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let done = std::task::ready!(work.poll(cx));
        // What the work held (a pooled connection) is given back here, at home too.
        this.work.set(None);
        Poll::Ready(done)
    }
}

/// Runtimes for tests of what runs where: a home (one worker, named `home-worker`) and a
/// stand-in for a connection thread (single-threaded, on the calling thread).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_runtimes {
    use super::Home;

    pub(crate) fn home() -> (tokio::runtime::Runtime, Home) {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("home-worker")
            .enable_all()
            .build()
            .unwrap();
        let home = main.block_on(async { Home::here() });
        (main, home)
    }

    pub(crate) fn connection_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::test_runtimes::{connection_thread, home as home_and_other};
    use super::*;
    use std::time::Duration;

    async fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    #[test]
    fn what_is_run_runs_at_home_is_cut_there_and_its_panic_is_the_askers() {
        let (main, home) = home_and_other();
        let other = connection_thread();
        let ran = other.block_on(home.run(thread_name()));
        assert_eq!(ran.flatten().as_deref(), Some("home-worker"));
        // The asker stops waiting: the work is cut, and dropped at home.
        struct Dropped(Option<tokio::sync::oneshot::Sender<Option<String>>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let on = std::thread::current().name().map(str::to_owned);
                let _ = self.0.take().unwrap().send(on);
            }
        }
        let (done, dropped) = tokio::sync::oneshot::channel();
        let asked = home.run(async move {
            let _held = Dropped(Some(done));
            std::future::pending::<()>().await;
        });
        other.block_on(async {
            let cut = tokio::time::timeout(Duration::from_millis(20), asked).await;
            assert!(cut.is_err());
        });
        let dropped_on = main
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), dropped).await })
            .expect("the work was not cut")
            .unwrap();
        assert_eq!(dropped_on.as_deref(), Some("home-worker"));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other.block_on(home.run(async { panic!("at home") }))
        }));
        assert!(panicked.is_err());
        // Without a home, inline.
        let inline = other.block_on(Home::default().run(thread_name()));
        assert_eq!(
            inline.flatten(),
            std::thread::current().name().map(str::to_owned)
        );
    }

    #[test]
    fn what_is_spawned_within_runs_on_the_home_runtime() {
        let (_main, home) = home_and_other();
        let other = connection_thread();
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
        let other = connection_thread();
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

    /// Spawns, when dropped, a task that reports the thread it runs on (as sqlx's pooled
    /// connection does to give itself back).
    struct SpawnsOnDrop(Option<tokio::sync::oneshot::Sender<Option<String>>>);

    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            if let Some(report) = self.0.take() {
                tokio::spawn(async move {
                    let _ = report.send(thread_name().await);
                });
            }
        }
    }

    #[test]
    fn what_is_dropped_within_unfinished_drops_on_the_home_runtime() {
        let (_main, home) = home_and_other();
        let other = connection_thread();
        let on = other.block_on(async {
            let (report, reported) = tokio::sync::oneshot::channel();
            let held = SpawnsOnDrop(Some(report));
            // Cut short, as a deadline or a client gone cuts a database call.
            let work = home.within(async move {
                let _held = held;
                std::future::pending::<()>().await
            });
            let cut = tokio::time::timeout(std::time::Duration::from_millis(10), work).await;
            assert!(cut.is_err());
            reported.await.unwrap()
        });
        assert_eq!(on.as_deref(), Some("home-worker"));
    }

    #[test]
    fn outside_a_runtime_there_is_no_home() {
        let home = Home::here();
        assert!(!home.spawn(async {}));
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(other.block_on(home.within(async { 7 })), 7);
        // Asked within a runtime, a part made outside one uses that runtime.
        let (ran, done) = tokio::sync::oneshot::channel();
        other.block_on(async {
            assert!(home.spawn(async move {
                let _ = ran.send(());
            }));
            done.await.unwrap();
        });
    }
}
