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

/// Where users meet. Called from worker threads, each with its own tokio runtime.
///
/// A barrier `name` opens when every user of the test has either arrived at it or left the
/// test without arriving (a user whose login failed must not make everyone wait for it):
/// `arrived(name) + departed - departed_after_arriving(name) >= expected users`.
pub trait BarrierHub: Send + Sync {
    /// A user reached `name`; completes when the barrier opens.
    fn arrive(&self, name: &str) -> Pin<Box<dyn Future<Output = Result<(), BarrierError>> + Send>>;

    /// A session user ended. `reached` names the barriers it arrived at (in any order,
    /// each once per arrival); every other barrier, including those nobody reached yet,
    /// stops waiting for it. Called once per user, after its last `arrive`.
    ///
    /// The default does nothing (barriers then wait for every user); hubs that count
    /// arrivals should count departures too.
    fn depart(&self, reached: &[&str]) {
        let _ = reached;
    }
}

/// An in-process hub: releases everyone at a name when `expected` users have arrived there
/// or left the test. `tokio::sync::watch` works across the workers' separate runtimes.
#[derive(Debug)]
pub struct LocalBarrierHub {
    expected: AtomicU64,
    barriers: Mutex<Gates>,
}

#[derive(Debug, Default)]
struct Gates {
    by_name: HashMap<String, Gate>,
    /// Users that left the test.
    departed: u64,
}

#[derive(Debug)]
struct Gate {
    arrived: u64,
    /// Departed users that had arrived here (counted in `arrived` already).
    arrived_then_departed: u64,
    open: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            arrived: 0,
            arrived_then_departed: 0,
            open: watch::Sender::new(false),
        }
    }

    /// Users that will never make this gate wait any more.
    fn settled(&self, departed: u64) -> u64 {
        self.arrived + departed.saturating_sub(self.arrived_then_departed)
    }
}

impl Gates {
    fn open_full(&self, expected: u64) {
        for gate in self.by_name.values() {
            if gate.settled(self.departed) >= expected {
                gate.open.send_replace(true);
            }
        }
    }
}

impl LocalBarrierHub {
    /// A hub for a test of `expected` users.
    pub fn new(expected: u64) -> Self {
        Self {
            expected: AtomicU64::new(expected),
            barriers: Mutex::new(Gates::default()),
        }
    }

    /// Changes the number of users expected (live scaling); opens gates that are now full.
    pub fn set_expected(&self, expected: u64) {
        self.expected.store(expected, Ordering::Relaxed);
        if let Ok(gates) = self.barriers.lock() {
            gates.open_full(expected);
        }
    }

    /// How many users arrived at `name` so far.
    pub fn arrived(&self, name: &str) -> u64 {
        self.barriers
            .lock()
            .ok()
            .and_then(|g| g.by_name.get(name).map(|g| g.arrived))
            .unwrap_or(0)
    }
}

impl BarrierHub for LocalBarrierHub {
    fn arrive(&self, name: &str) -> Pin<Box<dyn Future<Output = Result<(), BarrierError>> + Send>> {
        let expected = self.expected.load(Ordering::Relaxed);
        let rx = match self.barriers.lock() {
            Ok(mut gates) => {
                let departed = gates.departed;
                let gate = gates
                    .by_name
                    .entry(name.to_owned())
                    .or_insert_with(Gate::new);
                gate.arrived += 1;
                if gate.settled(departed) >= expected {
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

    fn depart(&self, reached: &[&str]) {
        let expected = self.expected.load(Ordering::Relaxed);
        if let Ok(mut gates) = self.barriers.lock() {
            gates.departed += 1;
            for name in reached {
                if let Some(gate) = gates.by_name.get_mut(*name) {
                    gate.arrived_then_departed += 1;
                }
            }
            gates.open_full(expected);
        }
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

    #[tokio::test]
    async fn users_that_leave_without_arriving_do_not_hold_the_gate() {
        let hub = std::sync::Arc::new(LocalBarrierHub::new(4));
        // Two users arrive at "x"; one of them later leaves (it had arrived: no change).
        let a = hub.arrive("x");
        let b = hub.arrive("x");
        let waiting = tokio::spawn(async move { a.await.and(b.await) });
        hub.depart(&["x"]);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // A user whose login failed leaves without arriving: 3 of 4 are settled.
        hub.depart(&[]);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The last user arrives: open.
        hub.arrive("x").await.unwrap();
        waiting.await.unwrap().unwrap();
        // A barrier nobody reached yet counts the two that left: 2 arrivals open it.
        let c = hub.arrive("y");
        let d = hub.arrive("y");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            c.await.and(d.await)
        })
        .await
        .unwrap()
        .unwrap();
    }

    #[tokio::test]
    async fn the_last_departure_opens_a_waiting_gate() {
        let hub = std::sync::Arc::new(LocalBarrierHub::new(3));
        let a = hub.arrive("x");
        let b = hub.arrive("x");
        let waiting = tokio::spawn(async move { a.await.and(b.await) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        hub.depart(&["other"]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
