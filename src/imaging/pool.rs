//! The decode pool: where every image decode and mask conversion of the gateway and the
//! simulator runs. A job runs on tokio's blocking threads (never on an async worker, so a
//! slow decode cannot delay other requests or `/health`), and at most `limits.decode_concurrency`
//! jobs run at once (so many large decodes cannot take every core and their memory at once);
//! the others wait their turn. The pool also carries the pixel budget
//! (`limits.max_image_pixels`) its jobs decode within.

use super::ImagingError;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A bounded pool of blocking decode jobs; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct DecodePool {
    permits: Arc<Semaphore>,
    max_pixels: u64,
}

impl DecodePool {
    /// A pool running at most `concurrency` (at least 1) jobs at once, for images of at most
    /// `max_pixels` pixels.
    pub fn new(concurrency: usize, max_pixels: u64) -> Self {
        DecodePool {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_pixels,
        }
    }

    /// The pixel budget of every decode (`limits.max_image_pixels`).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Runs `job` on the blocking pool once a place is free, and returns its result. The place
    /// is held until the job ends, even when the caller stops waiting (a client gone), so the
    /// bound holds for the work actually running.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ImagingError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ImagingError::Worker(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|e| ImagingError::Worker(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_concurrency_jobs_run_at_once() {
        let pool = DecodePool::new(2, 100);
        assert_eq!(pool.max_pixels(), 100);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|i| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                })
                .await
                .unwrap()
            })
        });
        let mut done = Vec::new();
        for j in jobs.collect::<Vec<_>>() {
            done.push(j.await.unwrap());
        }
        assert_eq!(done, (0..8).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
