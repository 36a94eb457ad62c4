//! Barriers: `await barrier('connected')` releases every user of the test together. The
//! engine only sees the [`BarrierHub`] trait; the cluster implements it over gRPC, and
//! [`LocalBarrierHub`] serves one process.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Why a barrier could not be passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    #[error("barrier {0:?} was cancelled")]
    Cancelled(String),
    #[error("barrier {name:?}: {message}")]
    Failed { name: String, message: String },
}

/// Where users meet. `arrive` completes when every expected user of the test arrived at
/// the barrier `name`. It is called from worker threads, each with its own tokio runtime.
pub trait BarrierHub: Send + Sync {
    fn arrive(&self, name: &str) -> Pin<Box<dyn Future<Output = Result<(), BarrierError>> + Send>>;
}

/// An in-process hub: releases everyone when `expected` users have arrived at a name.
/// `tokio::sync::watch` works across the workers' separate runtimes.
#[derive(Debug)]
pub struct LocalBarrierHub {
    expected: AtomicU64,
    barriers: Mutex<HashMap<String, Gate>>,
}

#[derive(Debug)]
struct Gate {
    arrived: u64,
    open: watch::Sender<bool>,
}

impl LocalBarrierHub {
    /// A hub for a test of `expected` users.
    pub fn new(expected: u64) -> Self {
        Self {
            expected: AtomicU64::new(expected),
            barriers: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the number of users expected (live scaling); opens gates that are now full.
    pub fn set_expected(&self, expected: u64) {
        self.expected.store(expected, Ordering::Relaxed);
        if let Ok(gates) = self.barriers.lock() {
            for gate in gates.values() {
                if gate.arrived >= expected {
                    gate.open.send_replace(true);
                }
            }
        }
    }

    /// How many users arrived at `name` so far.
    pub fn arrived(&self, name: &str) -> u64 {
        self.barriers
            .lock()
            .ok()
            .and_then(|g| g.get(name).map(|g| g.arrived))
            .unwrap_or(0)
    }
}

impl BarrierHub for LocalBarrierHub {
    fn arrive(&self, name: &str) -> Pin<Box<dyn Future<Output = Result<(), BarrierError>> + Send>> {
        let expected = self.expected.load(Ordering::Relaxed);
        let rx = match self.barriers.lock() {
            Ok(mut gates) => {
                let gate = gates.entry(name.to_owned()).or_insert_with(|| Gate {
                    arrived: 0,
                    open: watch::Sender::new(false),
                });
                gate.arrived += 1;
                if gate.arrived >= expected {
                    gate.open.send_replace(true);
                }
                gate.open.subscribe()
            }
            Err(_) => {
                let name = name.to_owned();
                return Box::pin(async move { Err(BarrierError::Cancelled(name)) });
            }
        };
        let name = name.to_owned();
        Box::pin(async move {
            let mut rx = rx;
            rx.wait_for(|open| *open)
                .await
                .map(|_| ())
                .map_err(|_| BarrierError::Cancelled(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn releases_when_all_arrived() {
        let hub = std::sync::Arc::new(LocalBarrierHub::new(3));
        let a = hub.arrive("x");
        let b = hub.arrive("x");
        let both = tokio::spawn(async move { a.await.and(b.await) });
        tokio::task::yield_now().await;
        assert!(!both.is_finished());
        assert_eq!(hub.arrived("x"), 2);
        hub.arrive("x").await.unwrap();
        both.await.unwrap().unwrap();
        // A later arrival at an open gate passes at once.
        hub.arrive("x").await.unwrap();
    }
}
