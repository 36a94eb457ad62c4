//! The agent's [`BarrierHub`]: arrivals are counted here and forwarded to the controller
//! (as cumulative counts, so a resend after a reconnect counts nobody twice); users wait
//! until the controller releases the barrier on every agent at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use punisher_engine::{BarrierError, BarrierHub};
use tokio::sync::{Notify, watch};

#[derive(Debug)]
struct Gate {
    arrived: u64,
    /// The count the controller was last told.
    sent: u64,
    open: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            arrived: 0,
            sent: 0,
            open: watch::Sender::new(false),
        }
    }
}

/// Barriers of one run on this agent. Called from the engine's worker threads (each with
/// its own runtime); `Notify` and `watch` work across runtimes.
#[derive(Debug, Default)]
pub(crate) struct RemoteBarrierHub {
    gates: Mutex<HashMap<String, Gate>>,
    /// Fired on every arrival: the agent's loop then sends the new counts.
    pub(crate) changed: Notify,
}

impl RemoteBarrierHub {
    /// Counts not yet sent to the controller; marks them sent.
    pub(crate) fn take_changes(&self) -> Vec<(String, u64)> {
        let Ok(mut gates) = self.gates.lock() else {
            return Vec::new();
        };
        gates
            .iter_mut()
            .filter(|(_, g)| g.arrived != g.sent)
            .map(|(name, g)| {
                g.sent = g.arrived;
                (name.clone(), g.arrived)
            })
            .collect()
    }

    /// Every count of a barrier not yet released (after a reconnect).
    pub(crate) fn pending(&self) -> Vec<(String, u64)> {
        let Ok(mut gates) = self.gates.lock() else {
            return Vec::new();
        };
        gates
            .iter_mut()
            .filter(|(_, g)| !*g.open.borrow())
            .map(|(name, g)| {
                g.sent = g.arrived;
                (name.clone(), g.arrived)
            })
            .collect()
    }

    /// The controller released `name`: everyone waiting (and arriving later) passes.
    pub(crate) fn release(&self, name: &str) {
        if let Ok(mut gates) = self.gates.lock() {
            gates
                .entry(name.to_owned())
                .or_insert_with(Gate::new)
                .open
                .send_replace(true);
        }
    }
}

impl BarrierHub for RemoteBarrierHub {
    fn arrive(&self, name: &str) -> Pin<Box<dyn Future<Output = Result<(), BarrierError>> + Send>> {
        let rx = match self.gates.lock() {
            Ok(mut gates) => {
                let gate = gates.entry(name.to_owned()).or_insert_with(Gate::new);
                gate.arrived += 1;
                gate.open.subscribe()
            }
            Err(_) => {
                let name = name.to_owned();
                return Box::pin(async move { Err(BarrierError::Cancelled(name)) });
            }
        };
        self.changed.notify_one();
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
    use std::sync::Arc;

    #[tokio::test]
    async fn counts_are_forwarded_and_release_opens_the_gate() {
        let hub = Arc::new(RemoteBarrierHub::default());
        let a = hub.arrive("x");
        let b = hub.arrive("x");
        hub.changed.notified().await; // a permit was stored by the arrivals
        assert_eq!(hub.take_changes(), vec![("x".to_owned(), 2)]);
        assert!(hub.take_changes().is_empty());
        assert_eq!(hub.pending(), vec![("x".to_owned(), 2)]);
        let waiting = tokio::spawn(async move { a.await.and(b.await) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        hub.release("x");
        waiting.await.unwrap().unwrap();
        hub.arrive("x").await.unwrap();
        assert!(hub.pending().is_empty());
    }
}
