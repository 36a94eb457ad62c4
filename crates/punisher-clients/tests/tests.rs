//! The integration tests of punisher-clients, one binary (so the crate is linked once):
//! each module tests one area through the public API only.

mod socketio;
mod util;
