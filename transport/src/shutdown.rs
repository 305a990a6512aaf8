//! Knowing when every connection task has finished, and the OS signals that
//! start a graceful shutdown.
//!
//! hyper's graceful shutdown does not cover upgraded connections (they leave
//! hyper when the upgrade completes), so the server tracks its own tasks:
//! every HTTP connection task and every WebSocket connection task holds a
//! [`TaskToken`]; shutdown waits, with a bound, for the count to reach zero.
//! A token is released on drop, so a task that ends any way (even by panic)
//! is counted out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
}

/// Counts live tasks. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TaskTracker {
    inner: Arc<Inner>,
}

/// Held by a tracked task for as long as it runs.
#[derive(Debug)]
pub struct TaskToken {
    inner: Arc<Inner>,
}

impl TaskTracker {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a new task in until the token is dropped.
    #[must_use]
    pub fn token(&self) -> TaskToken {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        TaskToken {
            inner: self.inner.clone(),
        }
    }

    /// Tasks holding a token now.
    #[must_use]
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Waits until no task holds a token, or `limit` passes. Returns the
    /// number still running (0 on success).
    pub async fn wait(&self, limit: Duration) -> usize {
        let idle = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                // Register before checking, so a release in between is not missed.
                notified.as_mut().enable();
                if self.live() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, idle).await;
        self.live()
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// The signals that start a graceful shutdown: SIGINT (Ctrl-C) and SIGTERM.
///
/// Installed up front, before the server listens, so a signal that arrives
/// early is not lost (or fatal, as the default action would be).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves at the first signal; returns its name.
    pub async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_every_token() {
        let tracker = TaskTracker::new();
        assert_eq!(tracker.wait(Duration::from_millis(1)).await, 0);
        let a = tracker.token();
        let b = tracker.token();
        assert_eq!(tracker.wait(Duration::from_millis(20)).await, 2);
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(a);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(b);
        });
        assert_eq!(tracker.wait(Duration::from_secs(10)).await, 0);
        task.await.expect("task ran");
    }
}
