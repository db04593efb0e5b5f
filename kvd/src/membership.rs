//! Membership: the persisted identity and configuration of a replica (`ClusterMeta`), its
//! lifecycle, a removed replica starting over as a joiner, whose disks the peer handshake
//! pins, the guards a configuration change must pass, and the StopSign as stored.

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
    /// Retired: keeps its data, serves nothing but status, until a restart whose env names it
    /// in a later configuration (`ClusterMeta::starts_over`).
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

    /// Whether this replica, started with `CONFIG_ID` `env_config_id` and `NODES`
    /// `env_nodes`, starts over as a joiner: it was removed (by configuration
    /// `self.config_id`) and the env asks for a later configuration that names it again,
    /// as a StatefulSet scaled back up over the retained PVC of a removed ordinal does.
    pub fn starts_over(&self, env_config_id: u32, env_nodes: &[u64]) -> bool {
        self.lifecycle == Lifecycle::Removed
            && env_config_id > self.config_id
            && env_nodes.contains(&self.pid)
    }

    /// The record of this replica starting over: the same identity (cluster, pid, storage
    /// id, genesis) and the peer addresses it knew; no configuration, no history, `Joining`.
    pub fn starting_over(&self) -> ClusterMeta {
        ClusterMeta {
            config_id: 0,
            members: vec![],
            lifecycle: Lifecycle::Joining,
            last_transition: None,
            ..self.clone()
        }
    }
}

/// Wipes everything `db` holds (logs, state, history, peers' storage ids) and writes `meta`
/// (`ClusterMeta::starting_over`) in its place: one synced batch, so a crash leaves either
/// the removed replica as it was or the new joiner.
///
/// Keeping the storage id is safe: the id exists so that a replica that forgot promises it
/// made never votes again under its pid, and a removed replica's promises were all made in
/// configurations that are over. It joins the next one as any joiner does, with an empty
/// log, and takes the state by checkpoint.
pub fn start_over(db: &Db, meta: &ClusterMeta) -> Result<(), StoreError> {
    let mut batch = rocksdb::WriteBatch::default();
    db.wipe_into(&mut batch);
    meta.put(db, &mut batch);
    db.write_synced(batch)
}

/// Key of the storage id last seen for peer `pid` (the peer handshake's pin on its disk).
pub fn peer_storage_key(pid: u64) -> Vec<u8> {
    format!("peer_storage/{pid}").into_bytes()
}

/// Adds to `batch` forgetting the disks of `pids`, which a change removed: one of them added
/// again later joins as new, on its old disk or on another (its first session then pins it).
pub fn release_disks(db: &Db, batch: &mut rocksdb::WriteBatch, pids: &[u64]) {
    for &pid in pids {
        batch.delete_cf(db.cf(CF_META), peer_storage_key(pid));
    }
}

/// Whether replica `db`'s peer `pid` must keep the disk (storage id) it was first seen
/// with: while it is a member of the configuration this replica runs, of the change this
/// replica went through last, or of a change stored in its log. Any other pid (removed, or
/// not yet added) may come back with another disk: it can only join as a new member, with
/// an empty log, so nothing it forgot counts anywhere.
pub fn disk_pinned(db: &Db, pid: u64) -> Result<bool, StoreError> {
    let Some(meta) = ClusterMeta::load(db)? else {
        return Ok(true);
    };
    if meta.members.contains(&pid)
        || meta
            .last_transition
            .as_ref()
            .is_some_and(|t| t.members.contains(&pid))
    {
        return Ok(true);
    }
    if meta.config_id == 0 {
        return Ok(false);
    }
    Ok(stored_stopsign(db, meta.config_id)?
        .is_some_and(|(ss, _)| ss.next_config.nodes.contains(&pid)))
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
    use crate::storage::{CF_KV, CF_LOG, CF_PAXOS};

    /// Replica 4 removed by configuration 3 (members 1-3), as `retire` leaves it.
    fn removed_four() -> ClusterMeta {
        let t = Transition {
            from_config: 2,
            end_idx: 17,
            config_id: 3,
            members: vec![1, 2, 3],
            addrs: BTreeMap::from([(1, "a:7000".to_string())]),
        };
        ClusterMeta {
            cluster_id: 0xc1,
            storage_id: 0x5,
            pid: 4,
            genesis_config_id: 1,
            genesis_members: vec![1, 2, 3],
            config_id: 3,
            members: vec![1, 2, 3],
            addrs: BTreeMap::from([(1, "a:7000".to_string()), (4, "d:7000".to_string())]),
            lifecycle: Lifecycle::Removed,
            last_transition: Some(t),
        }
    }

    #[test]
    fn a_removed_replica_starts_over_only_when_a_later_configuration_names_it() {
        let m = removed_four();
        assert!(m.starts_over(4, &[1, 2, 3, 4]));
        assert!(m.starts_over(9, &[2, 4, 5]));
        // The env it was started with before (or the one that removed it): stays removed.
        assert!(!m.starts_over(2, &[1, 2, 3, 4]));
        assert!(!m.starts_over(3, &[1, 2, 3, 4]));
        // A later configuration without it.
        assert!(!m.starts_over(4, &[1, 2, 3]));
        // Members, joiners and leaving replicas never start over.
        for lifecycle in [Lifecycle::Serving, Lifecycle::Joining, Lifecycle::Leaving] {
            let m = ClusterMeta {
                lifecycle,
                ..removed_four()
            };
            assert!(!m.starts_over(4, &[1, 2, 3, 4]), "{lifecycle:?}");
        }
        let fresh = m.starting_over();
        assert_eq!(
            (
                fresh.cluster_id,
                fresh.storage_id,
                fresh.pid,
                fresh.genesis_members.clone()
            ),
            (0xc1, 0x5, 4, vec![1, 2, 3])
        );
        assert_eq!((fresh.config_id, fresh.members.len()), (0, 0));
        assert_eq!(fresh.lifecycle, Lifecycle::Joining);
        assert_eq!(fresh.last_transition, None);
        assert_eq!(fresh.addrs, m.addrs);
    }

    #[test]
    fn starting_over_wipes_everything_but_the_new_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let old = removed_four();
        old.save_synced(&db).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(db.cf(CF_KV), b"k", b"v");
        batch.put_cf(
            db.cf(CF_LOG),
            [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
            b"entry",
        );
        batch.put_cf(db.cf(CF_PAXOS), [0, 0, 0, 2, 1], b"promise");
        batch.put_cf(db.cf(CF_META), b"sm", b"applied");
        batch.put_cf(db.cf(CF_META), peer_storage_key(1), 7u64.to_be_bytes());
        db.write_synced(batch).unwrap();

        let fresh = old.starting_over();
        start_over(&db, &fresh).unwrap();
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(ClusterMeta::load(&db).unwrap(), Some(fresh));
        for name in crate::storage::ALL_CFS {
            let left = db
                .raw()
                .iterator_cf(db.cf(name), rocksdb::IteratorMode::Start)
                .map(|i| i.unwrap().0.to_vec())
                .filter(|k| !(name == CF_META && k.as_slice() == META_CLUSTER))
                .count();
            assert_eq!(left, 0, "{name} still holds {left} keys");
        }
    }

    #[test]
    fn a_disk_is_pinned_while_its_pid_is_a_member() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        // No record yet: everything pinned (nothing is known, nothing is given away).
        assert!(disk_pinned(&db, 4).unwrap());
        // Replica 1 after 4 was removed by configuration 3: 1-3 pinned, 4 free.
        let one = ClusterMeta {
            pid: 1,
            lifecycle: Lifecycle::Serving,
            ..removed_four()
        };
        one.save_synced(&db).unwrap();
        for pid in [1, 2, 3] {
            assert!(disk_pinned(&db, pid).unwrap(), "{pid}");
        }
        assert!(!disk_pinned(&db, 4).unwrap());
        // Still leaving configuration 2 [1, 2, 3, 4] (the change that removes 4 decided):
        // 4 is a member of the configuration it runs.
        let leaving = ClusterMeta {
            config_id: 2,
            members: vec![1, 2, 3, 4],
            lifecycle: Lifecycle::Leaving,
            ..one.clone()
        };
        leaving.save_synced(&db).unwrap();
        assert!(disk_pinned(&db, 4).unwrap());
        // A joiner told nothing yet pins nobody.
        ClusterMeta::joiner(1, 9).save_synced(&db).unwrap();
        assert!(!disk_pinned(&db, 2).unwrap());
    }

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
