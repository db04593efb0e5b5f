//! The pure, storage-free half of kvd's wire vocabulary: the bincode codec, the log entry
//! type, peer frames, the state-machine position types they carry, and the parsing of the
//! client API's request headers. kvd re-exports these modules unchanged (`kvd::frame`,
//! `kvd::command`, `kvd::codec`); they live here so the fuzz targets (`fuzz/`) can decode
//! hostile input without building RocksDB.

pub mod codec;
pub mod command;
pub mod frame;
pub mod request;
pub mod state;
