//! Whether the node still works: the tasks it cannot run without (each
//! media worker, the cluster's link tasks) are watched, and the first one
//! that panics or ends on its own marks the node failed. A failed node
//! answers `503` on `/healthz` and `/readyz`, reports `sfu_worker_up 0`,
//! refuses joins, tells its members, and exits non-zero (`server::serve`) so
//! that systemd or Kubernetes restart it: a node that keeps answering `200`
//! while its media worker is gone is a black hole for every member sent to it.
//!
//! A leaf: it imports nothing of the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a watched task ended, when it ended without panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// It was asked to (the node is shutting down): not a failure.
    Stopped,
    /// It could not go on (its socket failed, its listener closed…).
    Failed(String),
}

/// The health of the node's essential tasks. Shared by the handlers
/// (`/healthz`, `/readyz`, `/metrics`), the watchers and `serve`.
#[derive(Debug)]
pub struct Health {
    /// Each media worker: false once its task ended.
    workers: Vec<AtomicBool>,
    /// The first failure, for every later reader.
    failure: watch::Sender<Option<String>>,
}

impl Health {
    /// A node with `workers` media workers, all up.
    pub fn new(workers: usize) -> Arc<Health> {
        Arc::new(Health {
            workers: (0..workers).map(|_| AtomicBool::new(true)).collect(),
            failure: watch::Sender::new(None),
        })
    }

    /// Whether each worker is up, by index.
    pub fn workers_up(&self) -> impl Iterator<Item = bool> + '_ {
        self.workers.iter().map(|w| w.load(Ordering::Relaxed))
    }

    /// Why the node failed; `None` while it works.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Marks the node failed (the first reason is kept).
    pub fn fail(&self, reason: String) {
        self.failure.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!(%reason, "the node failed");
            *f = Some(reason);
            true
        });
    }

    /// Resolves with the reason once the node failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`: it cannot be dropped while we wait.
            Err(_) => std::future::pending().await,
        };
        reason
    }

    /// Watches the task of media worker `index`: when it ends other than by
    /// being stopped, the worker is down and the node failed.
    pub fn watch_worker(self: &Arc<Self>, index: usize, task: JoinHandle<TaskEnd>) {
        let health = self.clone();
        tokio::spawn(async move {
            if let Some(reason) = failure_of(task.await) {
                if let Some(up) = health.workers.get(index) {
                    up.store(false, Ordering::Relaxed);
                }
                health.fail(format!("media worker {index} stopped: {reason}"));
            }
        });
    }

    /// Watches another task the node cannot work without (`what` names it
    /// in the reason).
    pub fn watch(self: &Arc<Self>, what: &'static str, task: JoinHandle<TaskEnd>) {
        let health = self.clone();
        tokio::spawn(async move {
            if let Some(reason) = failure_of(task.await) {
                health.fail(format!("{what} stopped: {reason}"));
            }
        });
    }
}

/// The message a panic was raised with (`"a panic"` when it is not text).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Why a task's end is a failure, or `None` when it is not (stopped, or
/// aborted because its owner was dropped).
fn failure_of(end: Result<TaskEnd, tokio::task::JoinError>) -> Option<String> {
    match end {
        Ok(TaskEnd::Stopped) => None,
        Ok(TaskEnd::Failed(reason)) => Some(reason),
        Err(e) if e.is_cancelled() => None,
        Err(e) => Some(format!(
            "panicked: {}",
            panic_message(e.into_panic().as_ref())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_worker_fails_the_node_with_its_message() {
        let health = Health::new(2);
        health.watch_worker(1, tokio::spawn(async { panic!("boom") }));
        let reason = health.failed().await;
        assert_eq!(reason, "media worker 1 stopped: panicked: boom");
        assert_eq!(health.workers_up().collect::<Vec<_>>(), [true, false]);
        assert_eq!(health.failure().as_deref(), Some(reason.as_str()));
    }

    #[tokio::test]
    async fn a_stopped_or_aborted_task_is_no_failure_and_the_first_reason_stays() {
        let health = Health::new(1);
        let stopped = tokio::spawn(async { TaskEnd::Stopped });
        let aborted = tokio::spawn(std::future::pending::<TaskEnd>());
        aborted.abort();
        health.watch_worker(0, stopped);
        health.watch("the core's accept loop", aborted);
        let failed = tokio::spawn(async { TaskEnd::Failed("socket closed".into()) });
        health.watch("the edge's dialer", failed);
        assert_eq!(
            health.failed().await,
            "the edge's dialer stopped: socket closed"
        );
        assert!(health.workers_up().all(|up| up));
        health.fail("later".into());
        assert_eq!(
            health.failure().as_deref(),
            Some("the edge's dialer stopped: socket closed")
        );
    }
}
