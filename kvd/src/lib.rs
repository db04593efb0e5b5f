//! kvd, the omnikv replica daemon: an OmniPaxos log over RocksDB, applied to a RocksDB
//! key-value state machine, served over HTTP. `docs/architecture.md` tells the whole story.

pub mod api;
pub mod auth;
pub mod backup;
// The pure decoders live in omnikv-wire (fuzzable without RocksDB); same paths as before.
pub use omnikv_wire::{codec, command, frame};
pub mod checkpoint;
pub mod client_conn;
pub mod config;
pub mod consensus_thread;
pub mod etcd;
pub mod failpoint;
pub mod inbox;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod omnipaxos_workarounds;
pub mod peers;
pub mod replica;
pub mod space;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod watch;

pub use config::Config;
pub use node::serve;
