//! End-to-end tests of kvd: real processes, real TCP on loopback, real RocksDB.

mod auth;
mod backup;
mod bad_input;
mod chaos;
mod chaos_watch;
mod cluster;
mod compaction;
mod crash;
mod data_model;
mod disk_full;
mod faults;
mod growth;
mod handoff;
mod harness;
mod histories;
mod http_edges;
mod kvctl_cli;
mod leases;
mod linearizability;
mod lock;
mod membership;
mod nemesis;
mod pki;
mod reference_histories;
mod tls;
mod watch;
