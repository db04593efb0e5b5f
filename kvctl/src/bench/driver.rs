//! What a logical client of `kvctl bench` sends its operations through: omnikv's client or
//! the etcd one, behind one interface with the outcomes the load generator counts.

use crate::bench::etcd::EtcdClient;
use crate::cli::Target;
use omnikv_common::{Client, ClientError, Consistency};
use std::sync::Arc;
use std::time::Duration;

/// How one operation ended.
pub enum Outcome {
    Ok,
    /// A get of a key that does not exist (a success).
    Miss,
    Err(ClientError),
}

/// What a logical client sends its operations through.
#[derive(Clone)]
pub enum Driver {
    Omnikv(Arc<Client>),
    Etcd(Arc<EtcdClient>),
}

impl Driver {
    /// A connection pool to `endpoints` (tried in order) of `target`.
    pub fn new(
        target: Target,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(match target {
            Target::Omnikv => Driver::Omnikv(Arc::new(Client::new(endpoints, timeout)?)),
            Target::Etcd => Driver::Etcd(Arc::new(EtcdClient::new(endpoints, timeout)?)),
        })
    }

    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Outcome {
        let found = match self {
            Driver::Omnikv(c) => match c.get(key, consistency).await {
                Ok(_) => Ok(true),
                Err(ClientError::NotFound) => Ok(false),
                Err(e) => Err(e),
            },
            Driver::Etcd(c) => c.get(key, consistency).await,
        };
        match found {
            Ok(true) => Outcome::Ok,
            Ok(false) => Outcome::Miss,
            Err(e) => Outcome::Err(e),
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Outcome {
        let done = match self {
            Driver::Omnikv(c) => c.put(key, value.to_vec()).await.map(|_| ()),
            Driver::Etcd(c) => c.put(key, value).await,
        };
        match done {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Err(e),
        }
    }
}
