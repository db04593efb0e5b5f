//! `lease grant TTL | keepalive ID [--once] | revoke ID | list | timetolive ID [--keys]`,
//! printed like etcdctl's (ids in lowercase hex). A lease that does not exist is exit 1.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::keys::display_bytes;
use omnikv_common::lease::{LeaseGranted, LeaseStatus};
use omnikv_common::{Client, ClientError, Consistency};
use std::io::Write;
use std::time::Instant;

/// One lease command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRequest {
    /// A new lease of `ttl` seconds.
    Grant {
        ttl: u64,
    },
    /// Renew `id` every third of its TTL until it is gone (`once`: one renewal).
    KeepAlive {
        id: u64,
        once: bool,
    },
    Revoke {
        id: u64,
    },
    List,
    TimeToLive {
        id: u64,
        keys: bool,
    },
}

/// Names the lease in a not-found answer.
fn not_found(id: u64) -> impl Fn(ClientError) -> Error {
    move |e| match e {
        ClientError::NotFound => Error::LeaseNotFound(id),
        e => Error::Client(e),
    }
}

/// `{"id": N, "id_hex": "...", ...}`: the lease's JSON with its id in hex too.
fn with_hex(v: impl serde::Serialize, id: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    v["id_hex"] = format!("{id:x}").into();
    v
}

/// `lease <hex> keepalived with TTL(<n>)` (etcdctl's line), or the grant as JSON.
fn write_renewal(out: &mut dyn Write, format: OutputFormat, g: &LeaseGranted) -> Result<(), Error> {
    match format {
        OutputFormat::Json => output::json_line(out, &with_hex(g, g.id)),
        OutputFormat::Text => writeln!(out, "lease {:x} keepalived with TTL({})", g.id, g.ttl),
    }
    .and_then(|()| out.flush())
    .map_err(Error::stdout)
}

/// etcdctl's `lease timetolive` line: `lease <hex> granted with TTL(<n>s), remaining(<m>s)`
/// and with keys `, attached keys([a b])`.
pub fn ttl_text(l: &LeaseStatus) -> String {
    let mut s = format!(
        "lease {:x} granted with TTL({}s), remaining({}s)",
        l.id,
        l.ttl,
        l.remaining_ms.div_ceil(1000)
    );
    if let Some(keys) = &l.keys {
        let keys: Vec<String> = keys.iter().map(|k| display_bytes(&k.0)).collect();
        s.push_str(&format!(", attached keys([{}])", keys.join(" ")));
    }
    s
}

/// Runs one lease command and prints its result.
pub async fn run(
    client: &Client,
    req: LeaseRequest,
    consistency: Consistency,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let json = format == OutputFormat::Json;
    match req {
        LeaseRequest::Grant { ttl } => {
            let g = client.lease_grant(ttl, None).await?;
            if json {
                output::json_line(out, &with_hex(&g, g.id))
            } else {
                writeln!(out, "lease {:x} granted with TTL({}s)", g.id, g.ttl)
            }
            .map_err(Error::stdout)
        }
        LeaseRequest::KeepAlive { id, once } => {
            let sent = Instant::now();
            let g = client.lease_keepalive(id).await.map_err(not_found(id))?;
            write_renewal(out, format, &g)?;
            if once {
                return Ok(());
            }
            let mut printed = Ok(());
            let lost = client
                .keep_lease(id, g.ttl, sent, |g| {
                    if printed.is_ok() {
                        printed = write_renewal(out, format, g);
                    }
                })
                .await;
            printed?;
            Err(lost.into())
        }
        LeaseRequest::Revoke { id } => {
            let r = client.lease_revoke(id).await.map_err(not_found(id))?;
            if json {
                output::json_line(out, &with_hex(&r, id))
            } else {
                writeln!(out, "lease {id:x} revoked")
            }
            .map_err(Error::stdout)
        }
        LeaseRequest::List => {
            let l = client.lease_list(consistency).await?;
            if json {
                let leases: Vec<_> = l.leases.iter().map(|x| with_hex(x, x.id)).collect();
                output::json_line(
                    out,
                    &serde_json::json!({"leases": leases, "revision": l.revision}),
                )
            } else {
                writeln!(out, "found {} leases", l.leases.len()).and_then(|()| {
                    l.leases
                        .iter()
                        .try_for_each(|x| writeln!(out, "{:x}", x.id))
                })
            }
            .map_err(Error::stdout)
        }
        LeaseRequest::TimeToLive { id, keys } => {
            let l = client
                .lease_time_to_live(id, keys)
                .await
                .map_err(not_found(id))?;
            if json {
                output::json_line(out, &with_hex(&l, id))
            } else {
                writeln!(out, "{}", ttl_text(&l))
            }
            .map_err(Error::stdout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnikv_common::kv::Bytes64;

    #[test]
    fn time_to_live_reads_like_etcdctl() {
        let mut l = LeaseStatus {
            id: 0x694d7a6f2bd1a504,
            ttl: 60,
            remaining_ms: 41_200,
            keys: None,
        };
        assert_eq!(
            ttl_text(&l),
            "lease 694d7a6f2bd1a504 granted with TTL(60s), remaining(42s)"
        );
        l.keys = Some(vec![Bytes64(b"lock/1".to_vec()), Bytes64(b"\xff".to_vec())]);
        assert_eq!(
            ttl_text(&l),
            "lease 694d7a6f2bd1a504 granted with TTL(60s), remaining(42s), attached keys([lock/1 0xff])"
        );
    }

    #[test]
    fn renewals_print_one_line_each() {
        let mut out = Vec::new();
        let g = LeaseGranted {
            id: 0x1f,
            ttl: 5,
            replayed: false,
        };
        write_renewal(&mut out, OutputFormat::Text, &g).unwrap();
        write_renewal(&mut out, OutputFormat::Json, &g).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "lease 1f keepalived with TTL(5)\n{\"id\":31,\"id_hex\":\"1f\",\"ttl\":5}\n"
        );
    }
}
