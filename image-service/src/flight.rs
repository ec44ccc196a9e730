//! Singleflight: concurrent requests for the same key share one spawned task and its result.
//!
//! The work runs in its own tokio task, so it completes (and cleans up after itself) even when
//! every caller's future is dropped; the task removes its map entry when done, so a later call
//! after a failure retries instead of seeing a stale error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use crate::error::ImageError;

type SharedResult<T> = Shared<BoxFuture<'static, Result<T, ImageError>>>;

/// A map of in-flight tasks keyed by string (a digest or chain id).
pub struct Flights<T: Clone + Send + Sync + 'static> {
    map: Arc<Mutex<HashMap<String, SharedResult<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Runs `work` for `key` unless a task for `key` is already running, in which case its
    /// result is awaited instead. `work` is only polled if this call started the task.
    pub async fn run<F>(&self, key: &str, work: F) -> Result<T, ImageError>
    where
        F: Future<Output = Result<T, ImageError>> + Send + 'static,
    {
        let fut = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = map.get(key) {
                f.clone()
            } else {
                let map_ref = Arc::clone(&self.map);
                let k = key.to_string();
                // The lock is held until the entry is inserted, so the task's removal below
                // always happens after the insertion.
                let handle = tokio::spawn(async move {
                    let r = work.await;
                    map_ref
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&k);
                    r
                });
                let what = key.to_string();
                let shared = async move {
                    match handle.await {
                        Ok(r) => r,
                        Err(e) => Err(ImageError::Task {
                            what,
                            reason: e.to_string(),
                        }),
                    }
                }
                .boxed()
                .shared();
                map.insert(key.to_string(), shared.clone());
                shared
            }
        };
        fut.await
    }

    /// Number of tasks in flight (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn shares_one_execution() {
        let f: Arc<Flights<u32>> = Arc::new(Flights::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for _ in 0..8 {
            let f = Arc::clone(&f);
            let runs = Arc::clone(&runs);
            joins.push(tokio::spawn(async move {
                f.run("k", async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
            }));
        }
        for j in joins {
            assert_eq!(j.await.expect("join").expect("run"), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn completes_when_caller_dropped_and_retries_after_error() {
        let f: Flights<u32> = Flights::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        let fut = f.run("k", async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            d.fetch_add(1, Ordering::SeqCst);
            Err(ImageError::Task {
                what: "x".into(),
                reason: "boom".into(),
            })
        });
        // poll once then drop
        let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(f.len(), 0);
        assert_eq!(f.run("k", async { Ok(1) }).await.expect("retry"), 1);
    }
}
