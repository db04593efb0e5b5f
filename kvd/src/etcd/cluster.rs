//! etcd's Cluster service, read-only: MemberList from the replica's member view. A member's
//! id is its pid, its name `kvd-<pid>`; its client URL is known for this replica only (the
//! address it serves etcd's API on).

use super::pb::etcdserverpb as pb;
use super::EtcdState;
use crate::api::ask;
use crate::auth::Call;
use crate::inbox::ClientRequest;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct ClusterService(pub EtcdState);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.0.caller(&request)?.may(Call::Members)?;
        let until = Instant::now() + self.0.api.default_timeout;
        let view = ask(&self.0.api, |reply| ClientRequest::Members { reply }, until).await?;
        self.0.saw_config(view.config_id);
        let position = crate::api::kv::position(&self.0.api, &Default::default(), false).await;
        let revision = position.map_or(0, |p| p.revision);
        let members = view
            .members
            .into_iter()
            .map(|m| pb::Member {
                id: m.pid,
                name: format!("kvd-{}", m.pid),
                peer_ur_ls: m
                    .peer_addr
                    .map(|a| format!("{}://{a}", self.0.peer_scheme))
                    .into_iter()
                    .collect(),
                client_ur_ls: if m.pid == self.0.member_id {
                    vec![self.0.client_url.clone()]
                } else {
                    Vec::new()
                },
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: self.0.header(revision),
            members,
        }))
    }
}
