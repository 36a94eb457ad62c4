//! Integration tests of punisher-launcher: against moto's EC2 server (never real AWS), a
//! fake EC2 for what moto cannot do, and a fake instance-metadata server.

mod fake_ec2;
mod imds;
mod moto;
mod util;
