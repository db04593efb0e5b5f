//! etcd's Maintenance service, the part `etcdctl endpoint status` and `endpoint health` call:
//! Status (from the replica's `/v1/status` view) and Alarm (kvd raises none; its low-space
//! guard refuses writes instead, docs/api.md).

use super::pb::etcdserverpb as pb;
use super::{error::unsupported, to_i64, EtcdState};
use crate::api::ask;
use crate::auth::Call;
use crate::inbox::ClientRequest;
use omnikv_common::api::Role;
use pb::alarm_request::AlarmAction;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The etcd version kvd reports: the v3 API release whose protocol it speaks, with omnikv's
/// own version as semver build metadata (ignored when versions are compared).
pub const VERSION: &str = concat!("3.4.0+omnikv.", env!("CARGO_PKG_VERSION"));

pub struct MaintenanceService(pub EtcdState);

/// Bytes of the files directly in `dir` (RocksDB keeps its files there): etcd's `dbSize`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        self.0.caller(&request)?.may(Call::Status)?;
        if request.into_inner().action != AlarmAction::Get as i32 {
            return Err(unsupported("activating or deactivating an alarm"));
        }
        let until = Instant::now() + self.0.api.default_timeout;
        let s = ask(&self.0.api, |reply| ClientRequest::Status { reply }, until).await?;
        Ok(Response::new(pb::AlarmResponse {
            header: self.0.header(s.revision),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.0.caller(&request)?.may(Call::Status)?;
        let until = Instant::now() + self.0.api.default_timeout;
        let s = ask(&self.0.api, |reply| ClientRequest::Status { reply }, until).await?;
        self.0.saw_config(s.config_id);
        let dir = self.0.data_dir.clone();
        let db_size = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        let mut errors = Vec::new();
        if s.leader.is_none() {
            errors.push(super::error::NO_LEADER.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: self.0.header(s.revision),
            version: VERSION.to_string(),
            db_size: to_i64(db_size),
            leader: s.leader.unwrap_or(0),
            raft_index: s.decided_idx,
            raft_term: u64::from(s.config_id),
            raft_applied_index: s.applied_idx,
            errors,
            db_size_in_use: to_i64(db_size),
            is_learner: s.role == Role::Joining,
        }))
    }
}
