//! `reconfigure --nodes 1,2,3,4 [--config-id N] [--force] [--peer PID=ADDR]`, and the shell's
//! `reconfigure 4` (add node 4 to the current members). Asking for the configuration already
//! in place (the same members; with `--config-id`, that id current) succeeds and says so, as
//! the watcher treats it: whoever made the change first (the watcher, an earlier try), the
//! members are what was asked for.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::{Client, ClientError, MembersView, ReconfigureRequest, ReconfigureResult};
use std::collections::BTreeMap;
use std::io::Write;

/// Which members the change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Exactly these.
    Exactly(Vec<u64>),
    /// The current members plus this one (the seed's `reconfigure 4`).
    Add(u64),
}

/// A requested change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub members: Members,
    pub config_id: Option<u32>,
    pub force: bool,
    pub peers: BTreeMap<u64, String>,
}

/// The configuration `view` describes, when it is what was asked for: the members `nodes`
/// (in any order) and, when an id was asked for, that id.
fn in_place(
    view: &MembersView,
    nodes: &[u64],
    config_id: Option<u32>,
) -> Option<ReconfigureResult> {
    let mut now: Vec<u64> = view.members.iter().map(|m| m.pid).collect();
    now.sort_unstable();
    let mut asked = nodes.to_vec();
    asked.sort_unstable();
    asked.dedup();
    let same = now == asked && config_id.is_none_or(|id| id == view.config_id);
    same.then_some(ReconfigureResult {
        config_id: view.config_id,
        members: now,
    })
}

/// Asks the leader among `client`'s endpoints for the change and prints the configuration
/// now in force. The configuration in place is read first, and again after a refusal (a
/// change made meanwhile, e.g. by the watcher): when it is the one asked for, nothing is
/// proposed and the answer is "already in place" (exit 0). A refusal of anything else stands.
pub async fn run(
    client: &Client,
    change: Change,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let (nodes, request_id) = match change.members {
        Members::Exactly(nodes) => {
            // Unanswered, the change itself says what is wrong.
            if let Ok(view) = client.members().await {
                if let Some(r) = in_place(&view, &nodes, change.config_id) {
                    return print(out, format, &r, true);
                }
            }
            (nodes, change.config_id)
        }
        Members::Add(pid) => {
            let view = client.members().await?;
            let mut nodes: Vec<u64> = view.members.iter().map(|m| m.pid).collect();
            if !nodes.contains(&pid) {
                nodes.push(pid);
            }
            if let Some(r) = in_place(&view, &nodes, change.config_id) {
                return print(out, format, &r, true);
            }
            (nodes, change.config_id.or(Some(view.config_id + 1)))
        }
    };
    let request = ReconfigureRequest {
        nodes,
        config_id: request_id,
        force: change.force,
        peers: change.peers,
    };
    match client.reconfigure(&request).await {
        Ok(result) => print(out, format, &result, false),
        Err(refused @ ClientError::Rejected { .. }) => {
            if let Ok(view) = client.members().await {
                if let Some(r) = in_place(&view, &request.nodes, change.config_id) {
                    return print(out, format, &r, true);
                }
            }
            Err(refused.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn print(
    out: &mut dyn Write,
    format: OutputFormat,
    result: &ReconfigureResult,
    already: bool,
) -> Result<(), Error> {
    output::write_reconfigured(out, format, result, already).map_err(Error::stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnikv_common::MemberView;

    fn view(config_id: u32, pids: &[u64]) -> MembersView {
        MembersView {
            config_id,
            leader: pids.first().copied(),
            members: pids
                .iter()
                .map(|&pid| MemberView {
                    pid,
                    peer_addr: None,
                })
                .collect(),
        }
    }

    #[test]
    fn in_place_is_the_same_members_and_any_asked_id() {
        let v = view(2, &[1, 2, 3, 4]);
        let want = Some(ReconfigureResult {
            config_id: 2,
            members: vec![1, 2, 3, 4],
        });
        assert_eq!(in_place(&v, &[4, 3, 2, 1], None), want);
        assert_eq!(in_place(&v, &[1, 2, 3, 4], Some(2)), want);
        assert_eq!(in_place(&v, &[1, 2, 3, 4], Some(3)), None);
        assert_eq!(in_place(&v, &[1, 2, 3, 4], Some(1)), None);
        assert_eq!(in_place(&v, &[1, 2, 3], None), None);
        assert_eq!(in_place(&v, &[1, 2, 3, 4, 5], None), None);
    }

    /// A replica whose configuration changes (to `after`) when a reconfigure reaches it, as
    /// when the watcher made the same change first: the request is refused, the members
    /// read after the refusal are `after`.
    async fn changing_replica(after: MembersView) -> String {
        use axum::routing::{get, post};
        use std::sync::{Arc, Mutex};
        let now = Arc::new(Mutex::new(view(1, &[1, 2, 3])));
        let (read, write) = (now.clone(), now);
        let router = axum::Router::new()
            .route(
                "/v1/members",
                get(move || async move { axum::Json(read.lock().unwrap().clone()) }),
            )
            .route(
                "/v1/reconfigure",
                post(move || async move {
                    *write.lock().unwrap() = after;
                    let body = r#"{"error":{"code":"rejected","message":"a change to configuration 2 with members [1, 2, 3, 4] is already in flight"}}"#;
                    (axum::http::StatusCode::CONFLICT, body)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    async fn ask(endpoint: String, change: Change) -> (Result<(), Error>, String) {
        let client = Client::new(&[endpoint], std::time::Duration::from_secs(2)).unwrap();
        let mut out = Vec::new();
        let r = run(&client, change, OutputFormat::Text, &mut out).await;
        (r, String::from_utf8(out).unwrap())
    }

    fn change(members: Members, config_id: Option<u32>) -> Change {
        Change {
            members,
            config_id,
            force: false,
            peers: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_refusal_of_what_is_now_in_place_is_success() {
        let want = "already in place: configuration 2 with members [1, 2, 3, 4]\n";
        for c in [
            change(Members::Exactly(vec![1, 2, 3, 4]), None),
            change(Members::Exactly(vec![1, 2, 3, 4]), Some(2)),
            change(Members::Add(4), None),
        ] {
            let endpoint = changing_replica(view(2, &[1, 2, 3, 4])).await;
            let (r, out) = ask(endpoint, c.clone()).await;
            assert!(r.is_ok(), "{c:?}: {r:?}");
            assert_eq!(out, want, "{c:?}");
        }
        // The refusal stands when what is in place then is not what was asked for.
        for (c, after) in [
            (change(Members::Add(4), None), view(2, &[1, 2, 3, 5])),
            (
                change(Members::Exactly(vec![1, 2, 3, 4]), Some(2)),
                view(3, &[1, 2, 3, 4]),
            ),
        ] {
            let (r, out) = ask(changing_replica(after).await, c.clone()).await;
            let e = r.unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::REJECTED, "{c:?}: {e}");
            assert!(e.to_string().contains("already in flight"), "{e}");
            assert_eq!(out, "");
        }
    }
}
