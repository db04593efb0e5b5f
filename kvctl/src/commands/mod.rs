//! One module per command; each calls the client and prints through `output`. The one-shot
//! commands and the shell share these functions.

pub mod certs;
pub mod delete;
pub mod elect;
pub mod get;
pub mod lease;
pub mod lock;
pub mod log;
pub mod members;
pub mod move_leader;
pub mod put;
pub mod range;
pub mod reconfigure;
pub mod snapshot;
pub mod status;
pub mod token;
pub mod txn;
pub mod txn_text;
pub mod wait_serving;
pub mod watch;

use crate::context::Context;
use crate::exit::Error;
use omnikv_common::client::KeySet;
use omnikv_common::kv::TxnRequest;
use omnikv_common::Client;
use std::io::Write;

/// Refuses the empty key before anything is sent (kvd refuses it too).
pub fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::usage("the key must not be empty"));
    }
    Ok(())
}

/// A single-endpoint-list request, as the one-shot commands and the shell issue them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A put, attached to `lease` if given.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<u64>,
    },
    /// A put only if the condition holds (a transaction).
    PutIf {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<u64>,
        condition: put::Condition,
    },
    Get {
        key: Vec<u8>,
    },
    /// Every key of a range (or of a one-key set), page after page.
    Range {
        keys: KeySet,
        list: range::List,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Every key of a range, as one write.
    DeleteRange {
        keys: KeySet,
    },
    Txn(TxnRequest),
    Status,
    Log {
        limit: usize,
    },
    Members,
    Reconfigure(reconfigure::Change),
    Lease(lease::LeaseRequest),
    /// Hand leadership to this member.
    MoveLeader {
        to: u64,
    },
}

/// Runs `req` through `client`, printing the result to `out` in `ctx.output`.
pub async fn execute(
    ctx: &Context,
    client: &Client,
    req: Request,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match req {
        Request::Put { key, value, lease } => {
            put::run(client, &key, value, lease, ctx.output, out).await
        }
        Request::PutIf {
            key,
            value,
            lease,
            condition,
        } => put::run_if(client, &key, value, lease, &condition, ctx.output, out).await,
        Request::Get { key } => get::run(client, &key, ctx.consistency, ctx.output, out).await,
        Request::Range { keys, list } => {
            range::get(client, &keys, &list, ctx.consistency, ctx.output, out).await
        }
        Request::Delete { key } => delete::run(client, &key, ctx.output, out).await,
        Request::DeleteRange { keys } => range::delete(client, &keys, ctx.output, out).await,
        Request::Txn(t) => txn::run(client, &t, ctx.output, out).await,
        Request::Status => status::run(client, ctx.output, out).await,
        Request::Log { limit } => log::run(client, limit, ctx.output, out).await,
        Request::Members => members::run(client, ctx.output, out).await,
        Request::Reconfigure(change) => reconfigure::run(client, change, ctx.output, out).await,
        Request::Lease(req) => lease::run(client, req, ctx.consistency, ctx.output, out).await,
        Request::MoveLeader { to } => move_leader::run(client, to, ctx.output, out).await,
    }
}
