//! Integration tests of punisher-launcher: against moto's EC2 server (never real AWS), and a
//! fake EC2 for what moto cannot do. (The spot-notice watcher and its fake instance-metadata
//! server are in punisher-agent.)

mod fake_ec2;
mod moto;
mod util;
