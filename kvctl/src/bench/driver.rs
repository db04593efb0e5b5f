//! What a logical client of the load generator sends its operations through. The loop draws
//! a key and whether the operation is a read (`--read-ratio`); a [`Driver`] carries it out.
//! kvctl's own driver is omnikv's client (a get or a put of that key); the benchmark tool
//! (bench/driver, `omnikv-bench`) plugs in etcd's native client and other workloads (a
//! range read as the read, a compare-and-swap as the write) without a copy of the loop.

use omnikv_common::{Client, ClientError, Consistency};
use std::future::Future;

/// How one operation ended.
pub enum Outcome {
    Ok,
    /// A success that found nothing: a get of a missing key, a compare that failed. Counted
    /// in `ok` and, separately, in the report's `misses`.
    Miss,
    Err(ClientError),
}

/// What a logical client sends its operations through (one per connection, shared by the
/// clients assigned to it).
pub trait Driver: Send + Sync + 'static {
    /// The operation drawn as a read, of `key`.
    fn read(&self, key: &[u8], consistency: Consistency) -> impl Future<Output = Outcome> + Send;
    /// The operation drawn as a write of `value` to `key`.
    fn write(&self, key: &[u8], value: &[u8]) -> impl Future<Output = Outcome> + Send;
}

/// omnikv: a read is a get of the key, a write a put.
impl Driver for Client {
    async fn read(&self, key: &[u8], consistency: Consistency) -> Outcome {
        match self.get(key, consistency).await {
            Ok(_) => Outcome::Ok,
            Err(ClientError::NotFound) => Outcome::Miss,
            Err(e) => Outcome::Err(e),
        }
    }

    async fn write(&self, key: &[u8], value: &[u8]) -> Outcome {
        match self.put(key, value.to_vec()).await {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Err(e),
        }
    }
}
