//! dhcp-hive-mind: a DHCPv4 server made of many identical, stateless nodes that keep every
//! lease in a shared Redis.
//!
//! `config` reads and validates the JSON config; `protocol` decides what to answer; `lease`
//! keeps the leases in Redis with one atomic script per message; `transport` owns sockets;
//! `node` wires them and runs, `backlog` ordering what waits when it is behind; `metrics` names
//! what is counted.
pub mod admin;
pub mod backlog;
pub mod classify;
pub mod config;
pub mod icmp;
pub mod import;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod options;
pub mod protocol;
pub mod transport;
