//! Membership: the persisted identity and configuration of a replica (`ClusterMeta`), its
//! lifecycle, the guards a configuration change must pass, and the StopSign as stored.

use crate::codec::{decode, encode};
use crate::frame::Transition;
use crate::state_machine::pair_hash;
use crate::storage::{read_log_meta, Db, StoreError, CF_META};
use omnipaxos::storage::StopSign;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const META_CLUSTER: &[u8] = b"cluster";

/// Where a replica stands. Status, `/readyz` and the watcher all read this one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// A member holding the state: applies and serves.
    Serving,
    /// A member of `config_id` without state yet (or, with `config_id` 0, a new replica that
    /// waits to be told its configuration): takes part in consensus, waits for a checkpoint.
    Joining,
    /// Removed by a decided change: keeps the old configuration running and hands over until
    /// a majority of the new configuration holds the state.
    Leaving,
    /// Retired: keeps its data, serves nothing but status.
    Removed,
}

/// What a replica persists about itself; env only bootstraps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterMeta {
    /// 0 while a joiner has not learned it.
    pub cluster_id: u64,
    pub storage_id: u64,
    pub pid: u64,
    /// The initial configuration, from which (with the token) the cluster id derives.
    pub genesis_config_id: u32,
    pub genesis_members: Vec<u64>,
    /// The configuration this replica runs (0: a joiner that does not know it yet). For a
    /// `Leaving` replica, the old configuration it still runs.
    pub config_id: u32,
    pub members: Vec<u64>,
    /// Peer addresses of members, as announced (the StopSign metadata carries them).
    pub addrs: BTreeMap<u64, String>,
    pub lifecycle: Lifecycle,
    /// The last decided change this replica went through, re-announced after a restart.
    pub last_transition: Option<Transition>,
}

impl ClusterMeta {
    /// A new, empty replica `pid` that waits to be told its configuration (and its cluster).
    pub fn joiner(pid: u64, storage_id: u64) -> ClusterMeta {
        ClusterMeta {
            cluster_id: 0,
            storage_id,
            pid,
            genesis_config_id: 0,
            genesis_members: vec![],
            config_id: 0,
            members: vec![],
            addrs: Default::default(),
            lifecycle: Lifecycle::Joining,
            last_transition: None,
        }
    }

    pub fn load(db: &Db) -> Result<Option<ClusterMeta>, StoreError> {
        db.get(CF_META, META_CLUSTER)?
            .map(|b| {
                decode(&b).map_err(|e| StoreError::Corrupt {
                    what: "cluster meta",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// Adds the write of this meta to `batch` (the caller syncs).
    pub fn put(&self, db: &Db, batch: &mut rocksdb::WriteBatch) {
        batch.put_cf(db.cf(CF_META), META_CLUSTER, encode(self));
    }

    pub fn save_synced(&self, db: &Db) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        self.put(db, &mut batch);
        db.write_synced(batch)
    }
}

/// The cluster identity: from the token and the initial members, as etcd derives its
/// cluster id from --initial-cluster-token and --initial-cluster.
pub fn cluster_id(token: &str, config_id: u32, members: &[u64]) -> u64 {
    let members: Vec<String> = members.iter().map(u64::to_string).collect();
    pair_hash(
        token.as_bytes(),
        format!("{config_id}:{}", members.join(",")).as_bytes(),
    )
}

/// What the StopSign's metadata carries: the new members' peer addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSignMeta {
    pub addrs: BTreeMap<u64, String>,
}

impl StopSignMeta {
    pub fn from_stopsign(ss: &StopSign) -> StopSignMeta {
        ss.metadata
            .as_deref()
            .and_then(|b| decode(b).ok())
            .unwrap_or_default()
    }
}

/// A StopSign stored (accepted) for `config_id`, decided or not.
pub fn stored_stopsign(db: &Db, config_id: u32) -> Result<Option<(StopSign, u64)>, StoreError> {
    let m = read_log_meta(db, config_id)?;
    Ok(m.stopsign.map(|ss| (ss, m.log_end as u64)))
}

// The guards a configuration change must pass: one copy, which the watcher's planner shares.
pub use omnikv_common::membership::{check_change, grows_from_one, majority_holds};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopsign_meta_survives_garbage() {
        let ss = StopSign {
            next_config: omnipaxos::ClusterConfig::default(),
            metadata: Some(vec![0xff, 0xfe]),
        };
        assert_eq!(StopSignMeta::from_stopsign(&ss), StopSignMeta::default());
        let mut addrs = BTreeMap::new();
        addrs.insert(4, "127.0.0.1:7004".to_string());
        let meta = StopSignMeta { addrs };
        let ss = StopSign {
            next_config: omnipaxos::ClusterConfig::default(),
            metadata: Some(encode(&meta)),
        };
        assert_eq!(StopSignMeta::from_stopsign(&ss), meta);
    }
}
