//! Integration tests of punisher-target: the HTTP contract through the `Router`
//! (`tower::ServiceExt::oneshot`), a real Socket.IO round trip with node's client, and
//! several targets acting as one.

mod util;

mod cluster;
mod http;
mod socketio;
