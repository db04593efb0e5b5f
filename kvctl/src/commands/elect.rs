//! `elect NAME VALUE [--ttl S]` campaigns in the queue `lock` uses (the key `NAME/<lease
//! hex>` holding VALUE): once it is the oldest key it leads, prints the key, and holds
//! leadership until SIGINT/SIGTERM (then resigns by revoking its lease) or until the lease is
//! lost (an error). `elect NAME --observe` prints the leader's value whenever the leader (the
//! oldest key under `NAME/`) or its value changes: it reads the queue, then follows a watch of
//! the prefix from the revision it read.

use super::lock::{self, Acquired, Session, Signals};
use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::client::{KeySet, WatchError, WatchItem, WatchRequest};
use omnikv_common::keys::display_bytes;
use omnikv_common::kv::WatchEvent;
use omnikv_common::{Client, Consistency};
use std::collections::BTreeMap;
use std::io::Write;

/// Campaigns with `value`, prints the key once elected, holds leadership until a signal or
/// the loss of the lease. Returns the exit code: 0 after resigning on SIGINT/SIGTERM/SIGHUP,
/// 128 + signal when interrupted before being elected.
pub async fn run(
    client: &Client,
    name: &[u8],
    value: &[u8],
    ttl: u64,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, Error> {
    let prefix = lock::queue_prefix(name)?;
    let mut signals = Signals::catch()?;
    let session = Session::grant(client, ttl).await?;
    let keeper = session.keep(client);
    tokio::pin!(keeper);
    let acquired = lock::acquire(
        client,
        &prefix,
        &session,
        value,
        &mut keeper,
        &mut signals,
        err,
    )
    .await?;
    let entry = match acquired {
        Acquired::Entry(entry) => entry,
        Acquired::Interrupted(code) => return Ok(code),
    };
    lock::write_held(out, format, &entry, session.id, Some(value))?;
    lock::hold(client, &session, &mut keeper, &mut signals, err).await
}

/// The candidates under the prefix as last seen: key -> (create revision, value).
#[derive(Debug, Default)]
pub struct Candidates(BTreeMap<Vec<u8>, (u64, Vec<u8>)>);

impl Candidates {
    /// Applies a change; ignores progress and other items.
    pub fn apply(&mut self, e: &WatchEvent) {
        match e {
            WatchEvent::Put {
                key,
                value,
                create_revision,
                ..
            } => {
                self.0
                    .insert(key.0.clone(), (*create_revision, value.0.clone()));
            }
            WatchEvent::Delete { key, .. } => {
                self.0.remove(&key.0);
            }
            _ => {}
        }
    }

    /// The leader: the oldest candidate, with its value.
    pub fn leader(&self) -> Option<(&[u8], u64, &[u8])> {
        self.0
            .iter()
            .min_by_key(|(_, (rev, _))| *rev)
            .map(|(k, (rev, v))| (k.as_slice(), *rev, v.as_slice()))
    }
}

/// Prints the leader's value (text) or key, value and create revision (JSON).
fn write_leader(
    out: &mut dyn Write,
    format: OutputFormat,
    (key, create_revision, value): (&[u8], u64, &[u8]),
) -> Result<(), Error> {
    match format {
        OutputFormat::Json => {
            let mut v = output::value_json(key, value);
            v["create_revision"] = create_revision.into();
            output::json_line(out, &v)
        }
        OutputFormat::Text => writeln!(out, "{}", display_bytes(value)),
    }
    .and_then(|()| out.flush())
    .map_err(Error::stdout)
}

/// Prints the leader's value each time it changes, for ever (or until the watch fails).
pub async fn observe(
    client: &Client,
    name: &[u8],
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let prefix = lock::queue_prefix(name)?;
    let queue = lock::read_queue(client, &prefix, true).await?;
    let mut candidates = Candidates::default();
    for kv in &queue.kvs {
        let value = kv.value.as_ref().map(|v| v.0.clone()).unwrap_or_default();
        candidates
            .0
            .insert(kv.key.0.clone(), (kv.create_revision, value));
    }
    let mut shown: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut show = |c: &Candidates, out: &mut dyn Write| -> Result<(), Error> {
        if let Some(leader @ (key, _, value)) = c.leader() {
            if shown.as_ref().is_none_or(|(k, v)| k != key || v != value) {
                write_leader(out, format, leader)?;
                shown = Some((key.to_vec(), value.to_vec()));
            }
        }
        Ok(())
    };
    show(&candidates, out)?;
    let mut watch = client.watch(WatchRequest {
        keys: KeySet::Prefix(prefix),
        start_revision: Some(queue.revision + 1),
        prev_value: false,
        progress_ms: crate::cli::DEFAULT_WATCH_PROGRESS_MS,
        consistency: Consistency::Linearizable,
    });
    loop {
        match watch.next().await {
            Ok(WatchItem::Event(e)) => {
                candidates.apply(&e);
                show(&candidates, out)?;
            }
            Ok(WatchItem::Resumed { .. }) => {}
            Err(WatchError::Client(e)) => return Err(e.into()),
            Err(e @ WatchError::Compacted { .. }) => return Err(Error::Compacted(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, create_revision: u64) -> WatchEvent {
        WatchEvent::Put {
            key: key.into(),
            value: value.into(),
            revision: create_revision,
            create_revision,
            version: 1,
            prev_value: None,
        }
    }

    #[test]
    fn the_oldest_candidate_leads() {
        let mut c = Candidates::default();
        assert!(c.leader().is_none());
        c.apply(&put("e/b", "two", 8));
        c.apply(&put("e/a", "one", 5));
        assert_eq!(c.leader(), Some((&b"e/a"[..], 5, &b"one"[..])));
        c.apply(&WatchEvent::Delete {
            key: "e/a".into(),
            revision: 9,
            prev_value: None,
        });
        assert_eq!(c.leader(), Some((&b"e/b"[..], 8, &b"two"[..])));
        c.apply(&WatchEvent::Progress { revision: 10 });
        assert_eq!(c.leader().map(|l| l.2), Some(&b"two"[..]));
    }

    #[test]
    fn leaders_print_as_values_or_json() {
        let mut out = Vec::new();
        write_leader(&mut out, OutputFormat::Text, (b"e/a", 5, b"node-1")).unwrap();
        write_leader(&mut out, OutputFormat::Json, (b"e/a", 5, b"node-1")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "node-1\n{\"create_revision\":5,\"key\":\"e/a\",\"value\":\"node-1\"}\n"
        );
    }
}
