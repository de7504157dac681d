//! The transfer pool: a fixed set of threads for the blocking work of uploads and downloads
//! (file reads and writes, hashing, verification).
//!
//! Transfers used to run on tokio's shared blocking pool, each upload owning four of its
//! threads and each download one for as long as it lasted. A crowd of slow transfers then
//! filled that pool, and every metadata call (redb runs there too) queued behind them. Here a
//! transfer owns no thread: each step (one buffer written, one buffer hashed, one range read
//! and verified) is a job, queued in order of arrival and run by one of a few threads, while
//! the transfer waits for its client without holding anything but memory. The blocking pool
//! is left to metadata work.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads with one FIFO queue.
pub struct TransferPool {
    queue: Mutex<mpsc::Sender<Job>>,
}

/// A job's result: the job panicked, or the pool is gone.
#[derive(Debug)]
pub struct JobFailed;

impl std::fmt::Display for JobFailed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a transfer job failed")
    }
}

impl std::error::Error for JobFailed {}

impl From<JobFailed> for std::io::Error {
    fn from(error: JobFailed) -> std::io::Error {
        std::io::Error::other(error)
    }
}

impl TransferPool {
    /// The default size: twice the cores (a job may wait for the disk), at least four, so that
    /// one upload's writer and three hashers can all run.
    pub fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        (2 * cores).max(4)
    }

    /// Starts `threads` workers. They end when the pool is dropped and the queue drains.
    pub fn new(threads: usize) -> std::io::Result<Arc<TransferPool>> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("ocellus-io-{index}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, never while running one.
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Arc::new(TransferPool {
            queue: Mutex::new(sender),
        }))
    }

    /// Queues `job` and returns a handle to its result. The job runs whether or not the handle
    /// is awaited; a job that panics reports `JobFailed` and leaves its thread running.
    pub fn spawn<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            if result.is_err() {
                tracing::error!("a transfer job panicked");
            }
            let _ = sender.send(result.ok());
        });
        let queued = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(job);
        if queued.is_err() {
            tracing::error!("the transfer pool has stopped");
        }
        Pending { receiver }
    }

    /// Runs `job` on the pool and waits for it.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        self.spawn(job).wait().await
    }
}

/// The result of a queued job, to come.
pub struct Pending<T> {
    receiver: oneshot::Receiver<Option<T>>,
}

impl<T> Pending<T> {
    /// Waits for the job.
    pub async fn wait(self) -> Result<T, JobFailed> {
        match self.receiver.await {
            Ok(Some(value)) => Ok(value),
            _ => Err(JobFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_panics_are_reported() {
        let pool = TransferPool::new(2).unwrap();
        assert_eq!(pool.run(|| 40 + 2).await.unwrap(), 42);
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(failed.is_err());
        // The worker survived the panic.
        let results: Vec<_> = futures_util::future::join_all((0..8).map(|n| pool.run(move || n)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(results, (0..8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_busy_pool_queues_instead_of_growing() {
        let pool = TransferPool::new(2).unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                pool.spawn(move || gate.lock().unwrap().recv().unwrap())
            })
            .collect();
        let mut queued = std::pin::pin!(pool.run(|| 7));
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), &mut queued).await;
        assert!(waited.is_err(), "both threads are busy, so the job waits");
        release.send(()).unwrap();
        release.send(()).unwrap();
        for job in blocked {
            job.wait().await.unwrap();
        }
        assert_eq!(queued.await.unwrap(), 7);
    }
}
