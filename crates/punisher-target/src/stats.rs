//! The target's counters: lock-free atomics on the hot path, and the serialisable
//! [`StatsSnapshot`] served by `GET /admin/stats`, which merges exactly across processes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use socketioxide::socket::DisconnectReason;

/// Logins by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logins {
    pub guest: u64,
    pub sns: u64,
}

/// A count per Engine.IO transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByTransport {
    pub websocket: u64,
    pub polling: u64,
}

/// Socket.IO connection counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStats {
    /// Sockets connected at the time of the snapshot, by their current transport.
    pub connected_now: ByTransport,
    /// Sockets connected since the last reset, by the transport they connected with.
    pub total: ByTransport,
    /// Polling sockets that moved to websocket.
    pub upgrades: u64,
    /// Disconnects by reason (socket.io's reason strings, as node's server names them).
    pub disconnects: BTreeMap<String, u64>,
}

/// Everything `GET /admin/stats` reports. Counters only: merging two snapshots adds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub logins: Logins,
    pub info_calls: u64,
    pub timeline_calls: u64,
    /// Votes accepted: at most one per session, so this is also the number of distinct
    /// voters (HTTP and Socket.IO votes together).
    pub votes: u64,
    /// Votes refused because their session had voted already.
    pub duplicate_votes: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub errors_injected: u64,
    pub sockets: SocketStats,
    pub broadcasts: u64,
    /// Question emits handed to sockets, one per socket per broadcast.
    pub questions_delivered: u64,
    /// How many target processes this snapshot adds up (1 for a single process).
    #[serde(default = "one")]
    pub processes: u64,
}

fn one() -> u64 {
    1
}

impl StatsSnapshot {
    /// Adds `other` into `self`: the stats of several target processes are the sum of theirs.
    pub fn merge(&mut self, other: &StatsSnapshot) {
        self.logins.guest += other.logins.guest;
        self.logins.sns += other.logins.sns;
        self.info_calls += other.info_calls;
        self.timeline_calls += other.timeline_calls;
        self.votes += other.votes;
        self.duplicate_votes += other.duplicate_votes;
        self.unauthorized += other.unauthorized;
        self.bad_requests += other.bad_requests;
        self.errors_injected += other.errors_injected;
        let (s, o) = (&mut self.sockets, &other.sockets);
        s.connected_now.websocket += o.connected_now.websocket;
        s.connected_now.polling += o.connected_now.polling;
        s.total.websocket += o.total.websocket;
        s.total.polling += o.total.polling;
        s.upgrades += o.upgrades;
        for (reason, n) in &o.disconnects {
            *s.disconnects.entry(reason.clone()).or_default() += n;
        }
        self.broadcasts += other.broadcasts;
        self.questions_delivered += other.questions_delivered;
        self.processes += other.processes;
    }
}

/// Disconnect reasons in a fixed order, so that their counters are a plain array.
const REASONS: [(DisconnectReason, &str); 8] = [
    (DisconnectReason::TransportClose, "transport close"),
    (DisconnectReason::TransportError, "transport error"),
    (DisconnectReason::HeartbeatTimeout, "ping timeout"),
    (DisconnectReason::PacketParsingError, "parse error"),
    (
        DisconnectReason::MultipleHttpPollingError,
        "multiple http polling",
    ),
    (
        DisconnectReason::ClientNSDisconnect,
        "client namespace disconnect",
    ),
    (
        DisconnectReason::ServerNSDisconnect,
        "server namespace disconnect",
    ),
    (DisconnectReason::ClosingServer, "server shutting down"),
];

fn reason_index(reason: DisconnectReason) -> usize {
    REASONS.iter().position(|(r, _)| *r == reason).unwrap_or(0)
}

/// The live counters. Relaxed atomics: each counter is independent, and a snapshot taken
/// while traffic flows is a consistent-enough view for a load test's sign-off (the run is
/// over when it is read).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) guest_logins: AtomicU64,
    pub(crate) sns_logins: AtomicU64,
    pub(crate) info_calls: AtomicU64,
    pub(crate) timeline_calls: AtomicU64,
    pub(crate) votes: AtomicU64,
    pub(crate) duplicate_votes: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) errors_injected: AtomicU64,
    // Gauges are signed: a reset may zero nothing of them, but a socket that connected
    // before a reset must not make them wrap when it leaves.
    pub(crate) now_websocket: AtomicI64,
    pub(crate) now_polling: AtomicI64,
    pub(crate) total_websocket: AtomicU64,
    pub(crate) total_polling: AtomicU64,
    pub(crate) upgrades: AtomicU64,
    disconnects: [AtomicU64; REASONS.len()],
    pub(crate) broadcasts: AtomicU64,
    pub(crate) questions_delivered: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn disconnected(&self, reason: DisconnectReason) {
        self.disconnected_many(reason, 1);
    }

    pub(crate) fn disconnected_many(&self, reason: DisconnectReason, n: u64) {
        self.disconnects[reason_index(reason)].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gauge = |c: &AtomicI64| c.load(Ordering::Relaxed).max(0) as u64;
        let disconnects = REASONS
            .iter()
            .zip(&self.disconnects)
            .filter_map(|((_, name), c)| {
                let n = get(c);
                (n > 0).then(|| ((*name).to_owned(), n))
            })
            .collect();
        StatsSnapshot {
            logins: Logins {
                guest: get(&self.guest_logins),
                sns: get(&self.sns_logins),
            },
            info_calls: get(&self.info_calls),
            timeline_calls: get(&self.timeline_calls),
            votes: get(&self.votes),
            duplicate_votes: get(&self.duplicate_votes),
            unauthorized: get(&self.unauthorized),
            bad_requests: get(&self.bad_requests),
            errors_injected: get(&self.errors_injected),
            sockets: SocketStats {
                connected_now: ByTransport {
                    websocket: gauge(&self.now_websocket),
                    polling: gauge(&self.now_polling),
                },
                total: ByTransport {
                    websocket: get(&self.total_websocket),
                    polling: get(&self.total_polling),
                },
                upgrades: get(&self.upgrades),
                disconnects,
            },
            broadcasts: get(&self.broadcasts),
            questions_delivered: get(&self.questions_delivered),
            processes: 1,
        }
    }

    /// Zeroes every counter. The connected-now gauges describe sockets that still exist, so
    /// they are kept.
    pub(crate) fn reset(&self) {
        let zero = |c: &AtomicU64| c.store(0, Ordering::Relaxed);
        for c in [
            &self.guest_logins,
            &self.sns_logins,
            &self.info_calls,
            &self.timeline_calls,
            &self.votes,
            &self.duplicate_votes,
            &self.unauthorized,
            &self.bad_requests,
            &self.errors_injected,
            &self.total_websocket,
            &self.total_polling,
            &self.upgrades,
            &self.broadcasts,
            &self.questions_delivered,
        ] {
            zero(c);
        }
        self.disconnects.iter().for_each(zero);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_counter() {
        let c = Counters::default();
        inc(&c.guest_logins);
        inc(&c.votes);
        c.now_polling.fetch_add(2, Ordering::Relaxed);
        c.disconnected(DisconnectReason::HeartbeatTimeout);
        let mut a = c.snapshot();
        let b = a.clone();
        a.merge(&b);
        assert_eq!(a.logins.guest, 2);
        assert_eq!(a.votes, 2);
        assert_eq!(a.sockets.connected_now.polling, 4);
        assert_eq!(a.sockets.disconnects["ping timeout"], 2);
        assert_eq!(a.processes, 2);
    }

    #[test]
    fn reset_keeps_gauges() {
        let c = Counters::default();
        inc(&c.info_calls);
        c.now_websocket.fetch_add(3, Ordering::Relaxed);
        c.disconnected(DisconnectReason::TransportClose);
        c.reset();
        let s = c.snapshot();
        assert_eq!(s.info_calls, 0);
        assert!(s.sockets.disconnects.is_empty());
        assert_eq!(s.sockets.connected_now.websocket, 3);
    }

    #[test]
    fn every_reason_has_a_slot() {
        for (i, (r, _)) in REASONS.iter().enumerate() {
            assert_eq!(reason_index(*r), i);
        }
    }
}
