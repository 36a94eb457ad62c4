//! The agent's [`BarrierHub`]: arrivals and departures are counted here and forwarded to
//! the controller (as cumulative counts, so a resend after a reconnect counts nobody twice);
//! users wait until the controller releases the barrier on every agent at once.
//!
//! A user that leaves the test (its iteration ended or failed) is a departure: barriers it
//! never reached stop waiting for it, on every agent, as with the local hub. Departures
//! travel as one snapshot (users departed, and per barrier how many of them had arrived
//! there) taken under the same lock as the arrivals, so that the controller never counts
//! a user both as arrived and as departed-without-arriving.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use punisher_engine::{BarrierError, BarrierHub};
use punisher_proto::v1;
use punisher_proto::v1::agent_message::Kind as Msg;
use tokio::sync::{Notify, watch};
use tokio::time::{Duration, Instant};

/// Counts go to the controller at most this often. Without a pause every user's exit was
/// one gRPC message: in a vote storm (a few thousand exits per second per agent) those
/// messages and their wake-ups took ~10% of an agent's CPU, and as much in the controller.
/// A barrier then releases at most this much later, which nobody waiting on it notices.
pub(crate) const BARRIER_FLUSH_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Gate {
    arrived: u64,
    /// The count the controller was last told.
    sent: u64,
    /// Departed users that had arrived here (cumulative).
    arrived_then_departed: u64,
    open: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            arrived: 0,
            sent: 0,
            arrived_then_departed: 0,
            open: watch::Sender::new(false),
        }
    }
}

#[derive(Debug, Default)]
struct Gates {
    by_name: HashMap<String, Gate>,
    /// Users of this agent that left the test (cumulative).
    departed: u64,
    /// The departure count the controller was last told.
    departed_sent: u64,
}

/// Departures as the controller gets them: users departed, and per barrier how many of
/// them had arrived there (cumulative counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Departures {
    pub(crate) departed: u64,
    pub(crate) arrived_then_departed: Vec<(String, u64)>,
}

/// What to tell the controller, in this order: arrivals first, then departures (a user
/// that arrived and left is then never counted twice, only briefly not at all).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) arrivals: Vec<(String, u64)>,
    pub(crate) departures: Option<Departures>,
}

impl Changes {
    /// The messages that carry these changes, in the order they must be sent.
    pub(crate) fn into_messages(self, run_id: &str) -> Vec<Msg> {
        let mut messages: Vec<Msg> = self
            .arrivals
            .into_iter()
            .map(|(name, arrived)| {
                Msg::BarrierArrive(v1::BarrierArrive {
                    run_id: run_id.to_owned(),
                    name,
                    arrived,
                })
            })
            .collect();
        if let Some(d) = self.departures {
            messages.push(Msg::BarrierDepart(v1::BarrierDepart {
                run_id: run_id.to_owned(),
                departed: d.departed,
                arrived_then_departed: d.arrived_then_departed.into_iter().collect(),
            }));
        }
        messages
    }
}

impl Gates {
    fn departures(&mut self) -> Departures {
        self.departed_sent = self.departed;
        let mut arrived_then_departed: Vec<(String, u64)> = self
            .by_name
            .iter()
            .filter(|(_, g)| g.arrived_then_departed > 0)
            .map(|(name, g)| (name.clone(), g.arrived_then_departed))
            .collect();
        arrived_then_departed.sort();
        Departures {
            departed: self.departed,
            arrived_then_departed,
        }
    }
}

/// Barriers of one run on this agent. Called from the engine's worker threads (each with
/// its own runtime); `Notify` and `watch` work across runtimes.
#[derive(Debug, Default)]
pub(crate) struct RemoteBarrierHub {
    gates: Mutex<Gates>,
    /// Fired on every arrival and departure: the agent's loop then sends the new counts.
    pub(crate) changed: Notify,
}

impl RemoteBarrierHub {
    /// Returns once there are counts to send and [`BARRIER_FLUSH_PAUSE`] has passed since
    /// `last_flush`. Cancel-safe: a notification taken by a dropped wait is passed on.
    pub(crate) async fn changes_due(&self, last_flush: Option<Instant>) {
        if let Some(due) = last_flush.map(|at| at + BARRIER_FLUSH_PAUSE)
            && Instant::now() < due
        {
            tokio::time::sleep_until(due).await;
        }
        self.changed.notified().await;
    }

    /// Counts not yet sent to the controller; marks them sent.
    pub(crate) fn take_changes(&self) -> Changes {
        let Ok(mut gates) = self.gates.lock() else {
            return Changes::default();
        };
        let arrivals = gates
            .by_name
            .iter_mut()
            .filter(|(_, g)| g.arrived != g.sent)
            .map(|(name, g)| {
                g.sent = g.arrived;
                (name.clone(), g.arrived)
            })
            .collect();
        let departures = (gates.departed != gates.departed_sent).then(|| gates.departures());
        Changes {
            arrivals,
            departures,
        }
    }

    /// Every count of a barrier not yet released, and the departures (after a reconnect).
    pub(crate) fn pending(&self) -> Changes {
        let Ok(mut gates) = self.gates.lock() else {
            return Changes::default();
        };
        let arrivals = gates
            .by_name
            .iter_mut()
            .filter(|(_, g)| !*g.open.borrow())
            .map(|(name, g)| {
                g.sent = g.arrived;
                (name.clone(), g.arrived)
            })
            .collect();
        let departures = (gates.departed > 0).then(|| gates.departures());
        Changes {
            arrivals,
            departures,
        }
    }

    /// The controller released `name`: everyone waiting (and arriving later) passes.
    pub(crate) fn release(&self, name: &str) {
        if let Ok(mut gates) = self.gates.lock() {
            gates
                .by_name
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
                let gate = gates
                    .by_name
                    .entry(name.to_owned())
                    .or_insert_with(Gate::new);
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

    fn depart(&self, reached: &[&str]) {
        if let Ok(mut gates) = self.gates.lock() {
            gates.departed += 1;
            for name in reached {
                // A gate the user reached exists: it was created by that arrival.
                if let Some(gate) = gates.by_name.get_mut(*name) {
                    gate.arrived_then_departed += 1;
                }
            }
        }
        self.changed.notify_one();
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
        assert_eq!(hub.take_changes().arrivals, vec![("x".to_owned(), 2)]);
        assert_eq!(hub.take_changes(), Changes::default());
        assert_eq!(hub.pending().arrivals, vec![("x".to_owned(), 2)]);
        let waiting = tokio::spawn(async move { a.await.and(b.await) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        hub.release("x");
        waiting.await.unwrap().unwrap();
        hub.arrive("x").await.unwrap();
        assert_eq!(hub.pending(), Changes::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_exits_is_sent_as_one_count_after_the_pause() {
        let hub = Arc::new(RemoteBarrierHub::default());
        // The first change after a quiet spell goes out at once.
        hub.depart(&[]);
        hub.changes_due(None).await;
        let flushed_at = Instant::now();
        assert_eq!(hub.take_changes().departures.map(|d| d.departed), Some(1));
        // A thousand exits right after that flush wait for the pause, then travel as one.
        for _ in 0..1000 {
            hub.depart(&[]);
        }
        let due = tokio::spawn({
            let hub = hub.clone();
            async move { hub.changes_due(Some(flushed_at)).await }
        });
        tokio::time::sleep(BARRIER_FLUSH_PAUSE - Duration::from_millis(1)).await;
        assert!(!due.is_finished(), "flushed before the pause ended");
        tokio::time::sleep(Duration::from_millis(2)).await;
        due.await.unwrap();
        assert_eq!(hub.take_changes().into_messages("r").len(), 1);
        assert_eq!(hub.take_changes(), Changes::default());
        // Nothing new: the pause alone does not wake the agent.
        let idle = tokio::spawn({
            let hub = hub.clone();
            async move { hub.changes_due(Some(Instant::now())).await }
        });
        tokio::time::sleep(BARRIER_FLUSH_PAUSE * 10).await;
        assert!(!idle.is_finished(), "woke up with nothing to send");
        idle.abort();
    }

    #[tokio::test]
    async fn departures_travel_with_the_barriers_the_users_had_reached() {
        let hub = Arc::new(RemoteBarrierHub::default());
        let _a = hub.arrive("x");
        let _b = hub.arrive("x");
        assert_eq!(hub.take_changes().arrivals, vec![("x".to_owned(), 2)]);
        // One user had reached x and leaves; one leaves without reaching anything.
        hub.depart(&["x"]);
        hub.depart(&[]);
        hub.changed.notified().await;
        let changes = hub.take_changes();
        assert!(changes.arrivals.is_empty());
        assert_eq!(
            changes.departures,
            Some(Departures {
                departed: 2,
                arrived_then_departed: vec![("x".to_owned(), 1)],
            })
        );
        // Nothing new: nothing to send; after a reconnect, everything again.
        assert_eq!(hub.take_changes(), Changes::default());
        let pending = hub.pending();
        assert_eq!(pending.arrivals, vec![("x".to_owned(), 2)]);
        assert_eq!(pending.departures.map(|d| d.departed), Some(2));
        // An arrival and a departure in one flush come as one snapshot, arrivals first.
        let _c = hub.arrive("y");
        hub.depart(&["y"]);
        let changes = hub.take_changes();
        assert_eq!(changes.arrivals, vec![("y".to_owned(), 1)]);
        assert_eq!(
            changes.departures,
            Some(Departures {
                departed: 3,
                arrived_then_departed: vec![("x".to_owned(), 1), ("y".to_owned(), 1)],
            })
        );
    }
}
