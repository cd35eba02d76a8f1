//! Coalescing: concurrent calls of one kind are collected and served by one database round
//! trip (DataLoader style). A few worker tasks share one queue; each takes the first call
//! waiting, drains whatever else is waiting (up to a batch size), runs the batch, and
//! answers each caller with its own result.
//!
//! Nothing is delayed on purpose: a call that finds a worker free is served at once, alone.
//! Batches form only under load, from the calls that queued while every worker was busy.
//!
//! A batch runs in a task of its own, so a panic in it reaches its callers as an error
//! (and leaves the worker serving the next batch); a caller whose batch never answers
//! because the workers are gone (the runtime shutting down) gets an error too, never a hang.
//!
//! With a [`Deadline`], a batch that has not answered within it is cut (its task aborted)
//! and its callers answered 503, so a database that stops answering cannot hold the
//! workers; and a call whose caller has stopped waiting (its own deadline passed) before
//! its batch formed is dropped, not run: a write nobody waits for any more is not made.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::deadline::Deadline;
use crate::domain::{Error, Result};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves one batch: one result per item, in the items' order.
pub(crate) type BatchFn<K, V> =
    Arc<dyn Fn(Vec<K>) -> BoxFuture<'static, Vec<Result<V>>> + Send + Sync>;

/// Calls queued beyond this wait for room (back-pressure), they are not refused.
const QUEUE: usize = 4096;

struct Call<K, V> {
    item: K,
    reply: oneshot::Sender<Result<V>>,
    /// When its caller stops waiting (with a deadline): its batch is cut then.
    until: Option<Instant>,
}

/// The callers' side of a coalescer. Dropping it stops its workers once the queue is
/// empty.
pub(crate) struct Coalescer<K, V> {
    queue: mpsc::Sender<Call<K, V>>,
    /// What the workers do, for the error a caller gets when they are gone.
    name: &'static str,
    /// How long a caller waits, when it has a deadline.
    limit: Option<std::time::Duration>,
}

impl<K: Send + 'static, V: Send + 'static> Coalescer<K, V> {
    /// Start `workers` tasks that serve batches of at most `max_batch` items with `run`,
    /// each cut at `deadline` if there is one.
    pub(crate) fn start(
        name: &'static str,
        workers: usize,
        max_batch: usize,
        deadline: Option<Deadline>,
        run: BatchFn<K, V>,
    ) -> Self {
        let (queue, calls) = mpsc::channel(QUEUE);
        let calls = Arc::new(Mutex::new(calls));
        for _ in 0..workers.max(1) {
            let worker = Worker {
                name,
                max_batch: max_batch.max(1),
                deadline: deadline.clone(),
                run: run.clone(),
            };
            tokio::spawn(worker.work(calls.clone()));
        }
        Coalescer {
            queue,
            name,
            limit: deadline.as_ref().map(Deadline::limit),
        }
    }

    /// Queue `item` and wait for its result.
    pub(crate) async fn call(&self, item: K) -> Result<V> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Call {
                item,
                reply,
                until: self.limit.map(|limit| Instant::now() + limit),
            })
            .await
            .map_err(|_| self.stopped())?;
        // The sender is dropped unanswered only if the batch's task died (a panic) or the
        // runtime is shutting down.
        answer.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> Error {
        Error::Store(format!("the {} batcher has stopped", self.name))
    }
}

/// What each worker of a coalescer knows.
struct Worker<K, V> {
    name: &'static str,
    max_batch: usize,
    deadline: Option<Deadline>,
    run: BatchFn<K, V>,
}

impl<K: Send + 'static, V: Send + 'static> Worker<K, V> {
    /// Take the first call waiting and every other call already queued (up to
    /// `max_batch`), serve those whose caller still waits, answer each; until the queue is
    /// closed and empty.
    async fn work(self, calls: Arc<Mutex<mpsc::Receiver<Call<K, V>>>>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            // One worker at a time waits on the queue; the others are serving their batch
            // or waiting for this lock. The lock is held only while taking calls.
            let taken = calls
                .lock()
                .await
                .recv_many(&mut batch, self.max_batch)
                .await;
            if taken == 0 {
                return; // the store is gone
            }
            // Cut when the last of its callers stops waiting (each waits from its own
            // call, not from the batch's start).
            let until = batch.iter().filter_map(|c| c.until).max();
            let (items, replies): (Vec<K>, Vec<_>) = batch
                .drain(..)
                .filter(|c| !c.reply.is_closed())
                .map(|c| (c.item, c.reply))
                .unzip();
            if items.is_empty() {
                continue;
            }
            let results = self.serve(items, until).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result); // the caller may have gone
            }
        }
    }

    /// One result per item, whatever happens to the batch.
    async fn serve(&self, items: Vec<K>, until: Option<Instant>) -> Vec<Result<V>> {
        let n = items.len();
        let name = self.name;
        let mut task = tokio::spawn((self.run)(items));
        let outcome = match (&self.deadline, until) {
            (Some(deadline), Some(until)) => {
                match tokio::time::timeout_at(until.into(), &mut task).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        let errors: Vec<_> = (0..n).map(|_| Err(deadline.missed(name))).collect();
                        task.abort();
                        tracing::warn!(
                            batcher = name, calls = n, limit = ?deadline.limit(),
                            "a database batch did not answer within db_timeout and was cut"
                        );
                        return errors;
                    }
                }
            }
            _ => (&mut task).await,
        };
        match outcome {
            Ok(results) if results.len() == n => results,
            outcome => {
                let detail = match outcome {
                    Ok(results) => format!("{} results for {n} calls", results.len()),
                    Err(e) => e.to_string(),
                };
                tracing::error!(batcher = name, error = %detail, "a database batch failed");
                (0..n)
                    .map(|_| Err(Error::Store(format!("the {name} batch failed: {detail}"))))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A batch function that echoes its items after a pause, counting batches.
    fn echo(batches: Arc<AtomicUsize>) -> BatchFn<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            let batches = batches.clone();
            Box::pin(async move {
                batches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| Ok(i * 10)).collect()
            }) as BoxFuture<'static, _>
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let c = Arc::new(Coalescer::start("test", 2, 64, None, echo(batches.clone())));
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { (i, c.call(i).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, v) = t.await.unwrap();
            assert_eq!(v, i * 10);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(
            (4..200).contains(&n),
            "{n} batches for 200 calls of at most 64"
        );
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_its_callers_with_an_error_and_the_worker_goes_on() {
        let run: BatchFn<u32, u32> = Arc::new(|items: Vec<u32>| {
            Box::pin(async move {
                if items.contains(&13) {
                    panic!("unlucky");
                }
                items.into_iter().map(Ok).collect()
            }) as BoxFuture<'static, _>
        });
        let c = Coalescer::start("test", 1, 8, None, run);
        let err = c.call(13).await.unwrap_err();
        assert!(
            matches!(err, Error::Store(ref d) if d.contains("batch failed")),
            "{err:?}"
        );
        assert_eq!(c.call(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_batch_with_the_wrong_number_of_results_fails_every_caller() {
        let run: BatchFn<u32, u32> =
            Arc::new(|_: Vec<u32>| Box::pin(async { Vec::new() }) as BoxFuture<'static, _>);
        let c = Coalescer::start("test", 1, 8, None, run);
        assert!(matches!(c.call(1).await, Err(Error::Store(_))));
    }

    #[tokio::test]
    async fn a_batch_past_its_deadline_is_cut_and_a_call_nobody_waits_for_is_not_run() {
        let runs = Arc::new(AtomicUsize::new(0));
        let run: BatchFn<u32, u32> = {
            let runs = runs.clone();
            Arc::new(move |items: Vec<u32>| {
                runs.fetch_add(items.len(), Ordering::SeqCst);
                Box::pin(async move {
                    if items.contains(&0) {
                        std::future::pending::<()>().await;
                    }
                    items.into_iter().map(Ok).collect()
                }) as BoxFuture<'static, _>
            })
        };
        let deadline = Deadline::new("PostgreSQL", Duration::from_millis(500));
        let c = Arc::new(Coalescer::start("test", 1, 8, Some(deadline), run));
        // The hung batch holds the only worker; a call queued behind it whose caller gives
        // up before the batch forms must not run when the worker is free again.
        let hung = tokio::spawn({
            let c = c.clone();
            async move { c.call(0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), c.call(5)).await;
        assert!(
            gave_up.is_err(),
            "the call behind the hung batch had to wait"
        );
        let err = hung.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::Store(ref d) if d.contains("did not answer within db_timeout")),
            "{err:?}"
        );
        // The worker serves again after the cut.
        assert_eq!(c.call(7).await.unwrap(), 7);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "0 and 7 ran; 5 was dropped unrun"
        );
    }

    #[test]
    fn callers_get_an_error_when_the_workers_are_gone() {
        // Workers spawned on a runtime that is then shut down, a caller on another.
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = first.block_on(async {
            Coalescer::start("test", 2, 8, None, echo(Arc::new(AtomicUsize::new(0))))
        });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = second.block_on(c.call(1)).unwrap_err();
        assert!(
            matches!(err, Error::Store(ref d) if d.contains("stopped")),
            "{err:?}"
        );
    }
}
