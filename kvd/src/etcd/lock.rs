//! etcd's Lock service (v3lockpb): the server side of etcd's lock recipe, which client
//! libraries call instead of running the recipe themselves (etcd-client's `lock`, Go's
//! clientv3 `Lock`). As etcd's (server/etcdserver/api/v3lock over clientv3/concurrency's
//! `Mutex`): Lock puts `<name>/<lease hex>` attached to the caller's lease unless it exists,
//! then waits until every key of `<name>/` created before it is deleted, and answers the key;
//! Unlock deletes it. The lock lives as long as the lease: an expired or revoked lease
//! deletes the key and hands the lock on. A waiter holds one of the replica's
//! `--max-watchers` slots while it waits, and stops waiting when its client goes away.

use super::error::{self, invalid, KEY_NOT_PROVIDED};
use super::lease::lease_id;
use super::pb::v3lockpb as pb;
use super::EtcdState;
use crate::api::check_key_len;
use crate::api::kv::read;
use crate::auth::Call;
use crate::command::{Compare, CompareOp, CompareTarget, KeyRange, ReadOpts, Txn, TxnOp};
use crate::inbox::WriteKind;
use crate::state_machine::{EventKind, KeyValue, OpResult};
use crate::watch::Published;
use axum::http::HeaderMap;
use omnikv_common::kv::MAX_PAGE_KEYS;
use std::time::Instant;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Code, Request, Response, Status};

pub struct LockService(pub EtcdState);

/// The key that stands for `lease` holding (or waiting for) lock `name`: etcd's
/// `<name>/<lease id in lowercase hex>`.
pub(super) fn lock_key(name: &[u8], lease: u64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The newest key of `waiters` created before `mine`: the one to wait for (etcd waits for
/// each key created before its own, newest first, so every waiter watches one key).
fn newest_before(waiters: Vec<KeyValue>, mine: u64) -> Option<KeyValue> {
    waiters
        .into_iter()
        .filter(|kv| kv.create_revision < mine)
        .max_by_key(|kv| kv.create_revision)
}

impl LockService {
    /// Waits until no key of `prefix` created before revision `mine` is left; answers the
    /// revision of the read that found none.
    async fn wait_deletes(&self, prefix: &[u8], mine: u64) -> Result<u64, Status> {
        loop {
            // Subscribe before reading, so the delete cannot fall between the two.
            let mut sub = self.0.api.watch_hub.subscribe().map_err(|e| {
                Status::resource_exhausted(format!(
                    "etcdserver: too many watchers on this replica (at most {})",
                    e.0
                ))
            })?;
            let opts = ReadOpts {
                limit: MAX_PAGE_KEYS,
                ..ReadOpts::default()
            };
            let now = read(
                &self.0.api,
                &HeaderMap::new(),
                KeyRange::prefix(prefix),
                opts,
                true,
                Instant::now(),
            )
            .await?;
            if now.result.more {
                return Err(Status::resource_exhausted(format!(
                    "etcdserver: more than {MAX_PAGE_KEYS} holders and waiters of one lock"
                )));
            }
            let Some(older) = newest_before(now.result.kvs, mine) else {
                return Ok(now.revision);
            };
            // Its delete, or anything that calls for reading again.
            loop {
                match sub.rx.recv().await {
                    Ok(Published::Events { events, .. }) => {
                        let deleted = events
                            .iter()
                            .any(|e| e.kind == EventKind::Delete && e.key == older.key);
                        if deleted {
                            break;
                        }
                    }
                    Ok(Published::Reset { .. }) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        return Err(Status::unavailable("etcdserver: server stopped"))
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
        }
        let lease = lease_id(r.lease)?;
        let key = lock_key(&r.name, lease);
        check_key_len(&key)?;
        // Ours unless it exists (a retry, or the same lease asking again): then its creation
        // is where we stand in the queue.
        let txn = Txn {
            compares: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::PutLeased {
                key: key.clone(),
                value: Vec::new(),
                lease,
            }],
            failure: vec![TxnOp::Get {
                range: KeyRange::Key(key.clone()),
                opts: ReadOpts::default(),
            }],
        };
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        // The transaction's key, and the waiters' keys it reads while it waits.
        caller.may_txn(&txn)?;
        caller.may_touch(Call::Range, &KeyRange::prefix(&prefix))?;
        // etcd's v3lock hands its inner client's errors on as they are, which reaches the
        // caller as UNKNOWN with etcd's message (a lease that does not exist included).
        let answer = self
            .0
            .write(WriteKind::Txn(txn), "lock")
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => Status::unknown(s.message()),
                _ => s,
            })?;
        let mine = match (answer.outcome.succeeded, answer.results.as_deref()) {
            (true, _) => answer.outcome.revision,
            (false, Some([OpResult::Get(got)])) => match got.kvs.first() {
                Some(kv) => kv.create_revision,
                None => return Err(invalid("the lock's key vanished; ask again")),
            },
            // A write answered from its remembered outcome carries no results.
            (false, _) => return Err(invalid("the lock's key vanished; ask again")),
        };
        let revision = self.wait_deletes(&prefix, mine).await?;
        // The lease may have ended while we waited, deleting our key with it.
        let ours = read(
            &self.0.api,
            &HeaderMap::new(),
            KeyRange::Key(key.clone()),
            ReadOpts::default(),
            true,
            Instant::now(),
        )
        .await?;
        match ours.result.kvs.first() {
            Some(kv) if kv.create_revision == mine => Ok(Response::new(pb::LockResponse {
                header: self.0.header(revision.max(ours.revision)),
                key,
            })),
            _ => Err(Status::unknown(error::LEASE_NOT_FOUND)),
        }
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
        }
        check_key_len(&key)?;
        caller.may_key(Call::Delete, &key)?;
        let answer = self.0.write(WriteKind::Delete { key }, "lock").await?;
        Ok(Response::new(pb::UnlockResponse {
            header: self.0.header(answer.outcome.revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Vec::new(),
            create_revision: create,
            mod_revision: create,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn a_waiter_waits_for_the_newest_key_created_before_its_own() {
        assert_eq!(lock_key(b"jobs", 0x2a), b"jobs/2a".to_vec());
        let waiters = vec![kv("L/a", 5), kv("L/b", 9), kv("L/c", 7), kv("L/d", 12)];
        assert_eq!(newest_before(waiters.clone(), 12).unwrap().key, b"L/b");
        assert_eq!(newest_before(waiters.clone(), 7).unwrap().key, b"L/a");
        assert!(newest_before(waiters, 5).is_none());
    }
}
