//! Integration tests: real redis-server, real UDP sockets, nodes in-process (and, in `netns`,
//! the real binary with real DHCP clients in network namespaces).

mod abuse;
mod chaos;
mod cli;
mod cluster;
mod common;
mod depth;
mod hive;
mod hostile;
mod netns;
mod netns_classes;
mod netns_dhcpcd;
mod netns_options;
mod ops;
mod options;
mod paths;
