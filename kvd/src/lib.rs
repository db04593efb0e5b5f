//! kvd, the omnikv replica daemon: an OmniPaxos log over RocksDB, applied to a RocksDB
//! key-value state machine, served over HTTP. `docs/architecture.md` tells the whole story.

pub mod api;
pub mod checkpoint;
pub mod codec;
pub mod command;
pub mod config;
pub mod frame;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod state_machine;
pub mod storage;
pub mod transport;

pub use config::Config;
pub use node::serve;
