//! Backups: the replicated state as a snapshot file (`omnikv_common::snapshot`), written from
//! one `checkpoint::StateView` (a RocksDB snapshot: writes go on while it streams), and
//! `kvd restore`, which seeds the data dir of a member of a new cluster from such a file or
//! from a surviving replica's data dir (`restore.rs`, the command line in `cli.rs`).

pub mod cli;
pub mod restore;

use crate::checkpoint::{StateView, ViewError};
use crate::codec::encode;
use crate::storage::{Db, STATE_CFS};
use omnikv_common::snapshot::{Encoder, Header, Trailer};

/// Bytes handed to the sink at a time.
pub const CHUNK_BYTES: usize = crate::checkpoint::CHUNK_BYTES;

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("the reader went away")]
    Gone,
}

/// The header of a snapshot of `view`, taken from cluster `cluster_id`.
pub fn header(view: &StateView<'_>, cluster_id: u64) -> Header {
    let m = view.meta;
    Header {
        cluster_id,
        revision: m.revision,
        applied_config_id: m.applied.config_id,
        applied_index: m.applied.index,
        keys: m.keys,
        state_hash: m.hash,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        cfs: STATE_CFS.iter().map(|s| s.to_string()).collect(),
        sm_meta: encode(&m),
    }
}

/// Writes `view` as a snapshot file with `header` into `sink`, in pieces of about
/// `CHUNK_BYTES`. `sink` returns false when nobody reads any more (the write stops).
pub fn write(
    view: &StateView<'_>,
    header: &Header,
    mut sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<Trailer, BackupError> {
    let mut enc = Encoder::new(header);
    for item in view.items() {
        let item = item.map_err(ViewError::from)?;
        enc.item(item.cf, &item.key, &item.value);
        if enc.pending() >= CHUNK_BYTES && !sink(enc.take()) {
            return Err(BackupError::Gone);
        }
    }
    let first = enc.take();
    if !first.is_empty() && !sink(first) {
        return Err(BackupError::Gone);
    }
    let (last, trailer) = enc.finish();
    if !sink(last) {
        return Err(BackupError::Gone);
    }
    Ok(trailer)
}

/// Writes the state of `db` to the file `path` (for tests and tools that hold the store).
pub fn write_file(
    db: &Db,
    cluster_id: u64,
    path: &std::path::Path,
) -> Result<Trailer, Box<dyn std::error::Error>> {
    use std::io::Write;
    let view = StateView::open(db)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut io = Ok(());
    let trailer = write(&view, &header(&view, cluster_id), |b| {
        io = f.write_all(&b);
        io.is_ok()
    });
    io?;
    let trailer = trailer?;
    f.into_inner()?.sync_all()?;
    Ok(trailer)
}
