//! [`LiveNumbers`]: the few run-wide numbers that are not metrics (they are states, set by
//! the controller rather than recorded by workers), journalled once per second beside them.

use serde::{Deserialize, Serialize};

/// Users and connections at the end of one second, over the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveNumbers {
    /// Users running an iteration or holding a session.
    pub users_active: u64,
    /// Users the schedule (or the operator) asks for now.
    pub users_target: u64,
    /// Open TCP connections (HTTP, WebSocket, Socket.IO), when the agents report them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_connections: Option<u64>,
    /// Open WebSocket and Socket.IO sessions, when the agents report them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_sockets: Option<u64>,
    /// Agents reporting.
    pub agents: u32,
}
