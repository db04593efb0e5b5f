//! The closed-loop workloads, as drivers of kvctl's load generator (`kvctl::bench::Driver`):
//! the loop draws the key (`bench-N`) and read-or-write; the workload says what a read and a
//! write are.

use crate::conn::Conn;
use kvctl::bench::{Driver, Outcome};
use omnikv_common::{ClientError, Consistency, ErrorCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a read and a write are.
pub enum Kind {
    /// kvctl bench's: a get and a put of the drawn key.
    Kv,
    /// A read is a range read of every key under `prefix`, which must return `keys` keys.
    Range { prefix: Vec<u8>, keys: usize },
    /// A write is a compare-and-swap of the drawn key: put if its mod revision is the one
    /// last seen (by any client of the run), else read it back to learn the current one.
    Cas { seen: Mutex<HashMap<Vec<u8>, u64>> },
}

impl Kind {
    /// Compare-and-swap, knowing the mod revisions `seen` (read before the run, as a client
    /// reads the state it then updates).
    pub fn cas(seen: impl IntoIterator<Item = (Vec<u8>, u64)>) -> Kind {
        Kind::Cas {
            seen: Mutex::new(seen.into_iter().collect()),
        }
    }
}

/// One connection running a workload (its kind shared by every connection of the run).
pub struct Load {
    pub conn: Conn,
    pub kind: Arc<Kind>,
}

impl Driver for Load {
    async fn read(&self, key: &[u8], consistency: Consistency) -> Outcome {
        match &*self.kind {
            Kind::Range { prefix, keys } => match self.conn.range(prefix, consistency).await {
                Ok(n) if n == *keys => Outcome::Ok,
                Ok(n) => Outcome::Err(ClientError::Rejected {
                    code: ErrorCode::Rejected,
                    message: format!("the range returned {n} keys, not {keys}"),
                }),
                Err(e) => Outcome::Err(e),
            },
            _ => self.conn.get(key, consistency).await,
        }
    }

    async fn write(&self, key: &[u8], value: &[u8]) -> Outcome {
        match &*self.kind {
            Kind::Cas { seen } => {
                let expect = seen.lock().unwrap().get(key).copied().unwrap_or(0);
                match self.conn.cas(key, expect, value).await {
                    Ok(swap) => {
                        let mut seen = seen.lock().unwrap();
                        let rev = seen.entry(key.to_vec()).or_insert(0);
                        // Answers of concurrent swaps may arrive out of order: keep the newest.
                        *rev = (*rev).max(swap.mod_revision);
                        if swap.swapped {
                            Outcome::Ok
                        } else {
                            Outcome::Miss
                        }
                    }
                    Err(e) => Outcome::Err(e),
                }
            }
            _ => self.conn.put(key, value).await,
        }
    }
}
