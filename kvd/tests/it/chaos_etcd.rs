//! The chaos run's etcd front door: one of its clients speaks etcd's v3 gRPC API through a
//! client library written elsewhere (the `etcd-client` crate), with the same operations as
//! the HTTP clients (put, linearizable get, compare-and-swap as a Txn, delete), each answer
//! in the HTTP client's terms so the same history and checker take it.
//!
//! An error counts as "not applied" (`ClientError::Unavailable`) only when kvd said so in
//! etcd's words: `UNAVAILABLE` with an `etcdserver:` message other than "request timed out",
//! or `RESOURCE_EXHAUSTED` "too many requests" (docs/api.md's error table). Anything else a
//! call ends with (a transport error, a deadline, a reset stream) may have been applied.

use omnikv_common::api::ErrorCode;
use omnikv_common::ClientError;
use std::time::Duration;

/// etcd's messages for a request that was not applied or may have been (kvd/src/etcd/error.rs).
const TIMED_OUT: &str = "etcdserver: request timed out";
const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";

/// An etcd-client connected to some of the members' etcd endpoints (`host:port`).
pub struct EtcdFront {
    client: etcd_client::Client,
}

/// An etcd-client error in the HTTP client's terms.
fn classify(e: etcd_client::Error) -> ClientError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::Unavailable if msg.starts_with("etcdserver: ") && msg != TIMED_OUT => {
                    ClientError::Unavailable(msg)
                }
                Code::ResourceExhausted if msg == TOO_MANY_REQUESTS => {
                    ClientError::Unavailable(msg)
                }
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                    ClientError::Rejected {
                        code: ErrorCode::InvalidRequest,
                        message: format!("{:?}: {msg}", s.code()),
                    }
                }
                code => ClientError::Indeterminate(format!("{code:?}: {msg}")),
            }
        }
        e => ClientError::Indeterminate(e.to_string()),
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision() as u64)
}

impl EtcdFront {
    /// A client of `endpoints` whose every call ends within `timeout`. Connecting is lazy: a
    /// member that is down fails the calls routed to it, not this.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> EtcdFront {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        let client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .expect("etcd-client connects lazily");
        EtcdFront { client }
    }

    /// Put: the revision it was answered with.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let r = self
            .client
            .kv_client()
            .put(key, value, None)
            .await
            .map_err(classify)?;
        Ok(revision(r.header()))
    }

    /// A linearizable get: the value, `NotFound` when the key is absent.
    pub async fn get(&self, key: &[u8]) -> Result<Vec<u8>, ClientError> {
        let r = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(classify)?;
        match r.kvs() {
            [kv] => Ok(kv.value().to_vec()),
            [] => Err(ClientError::NotFound),
            more => Err(ClientError::Indeterminate(format!(
                "a get of one key answered {} keys",
                more.len()
            ))),
        }
    }

    /// Delete: the revision answered and whether the key existed.
    pub async fn delete(&self, key: &[u8]) -> Result<(u64, bool), ClientError> {
        let r = self
            .client
            .kv_client()
            .delete(key, None)
            .await
            .map_err(classify)?;
        Ok((revision(r.header()), r.deleted() > 0))
    }

    /// Puts `value` if `key` holds `expect` (`None`: is absent, said as version 0 or as
    /// create revision 0): the revision answered and whether it swapped.
    pub async fn cas(
        &self,
        key: &[u8],
        expect: Option<&[u8]>,
        value: &[u8],
        by_version: bool,
    ) -> Result<(u64, bool), ClientError> {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
        let compare = match expect {
            Some(v) => Compare::value(key, CompareOp::Equal, v),
            None if by_version => Compare::version(key, CompareOp::Equal, 0),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, None::<PutOptions>)]);
        let r = self.client.kv_client().txn(txn).await.map_err(classify)?;
        Ok((revision(r.header()), r.succeeded()))
    }
}
