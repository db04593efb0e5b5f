//! `snapshot save FILE` and `snapshot status FILE`: backups of the replicated state.
//!
//! save streams `GET /v1/snapshot` into `FILE.part`, verifying the stream as it arrives
//! (format, SHA-256, counts), then syncs and renames it to `FILE`: a file named `FILE` is
//! always a whole, verified snapshot. A stream that breaks is retried from the start (a new
//! snapshot, possibly of a later revision, on whichever endpoint answers), up to `attempts`
//! times; a `FILE.part` left by a killed kvctl is simply overwritten by the next save.
//! Progress goes to stderr: a bar on a terminal, a plain line every few seconds otherwise.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::progress::Progress;
use bytes::{Buf, Bytes};
use omnikv_common::client::SnapshotStream;
use omnikv_common::snapshot::{FormatError, Header, Reader, Trailer};
use omnikv_common::{Client, ClientError, Consistency};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A verified snapshot: what its header and trailer say, and its size.
pub struct Summary {
    pub header: Header,
    pub trailer: Trailer,
    pub bytes: u64,
}

/// Bytes in MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `FILE.part`, where a save writes until the file verified.
pub fn part_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// The body as a `Read` for the verifying reader, written to the `.part` file as it passes.
struct Tee {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    file: std::io::BufWriter<std::fs::File>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.file.write_all(&b)?;
                    self.current = b;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Why one attempt failed.
enum Failed {
    /// The stream broke or did not verify: worth another attempt.
    Stream(String, bool),
    /// Writing the local file failed: not.
    Local(Error),
}

fn local(context: &'static str) -> impl FnOnce(std::io::Error) -> Failed {
    move |source| Failed::Local(Error::Io { context, source })
}

/// Receives one stream into `part`, verifying it; returns its summary.
async fn receive(mut stream: SnapshotStream, part: &Path) -> Result<Summary, Failed> {
    let file = std::fs::File::create(part).map_err(local("cannot create the snapshot file"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let total_hint = stream.keys;
    let verify = tokio::task::spawn_blocking(move || {
        let mut tee = Tee {
            rx,
            current: Bytes::new(),
            file: std::io::BufWriter::with_capacity(1 << 20, file),
        };
        let mut progress = Progress::new("snapshot", total_hint);
        let result = (|| {
            let mut reader = Reader::open(&mut tee)?;
            let total = reader.header().keys;
            let kv = reader.header().cfs.iter().position(|c| c == "kv");
            let mut keys = 0u64;
            while let Some(item) = reader.next_item()? {
                if Some(usize::from(item.cf)) == kv {
                    keys += 1;
                    if keys.is_multiple_of(4096) {
                        progress.update(
                            keys,
                            total,
                            format!("{:.1} MiB received", mib(reader.bytes)),
                        );
                    }
                }
            }
            let trailer = reader.trailer().cloned().expect("set at the end");
            progress.update(
                keys,
                total,
                format!("{:.1} MiB received", mib(reader.bytes)),
            );
            Ok::<_, FormatError>(Summary {
                header: reader.header().clone(),
                trailer,
                bytes: reader.bytes,
            })
        })();
        progress.done();
        let file = tee.file.into_inner().map_err(|e| e.into_error());
        (result, file)
    });
    let mut broken = None;
    loop {
        match stream.chunk().await {
            Ok(Some(b)) => {
                if tx.send(b).await.is_err() {
                    break; // the reader stopped: it says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let (result, file) = verify
        .await
        .map_err(|e| Failed::Stream(format!("verifier failed: {e}"), false))?;
    let file = file.map_err(local("cannot write the snapshot file"))?;
    match result {
        Ok(summary) => {
            file.sync_all()
                .map_err(local("cannot sync the snapshot file"))?;
            Ok(summary)
        }
        Err(FormatError::Io(e)) => Err(local("cannot write the snapshot file")(e)),
        Err(e) => {
            let truncated = matches!(e, FormatError::Truncated);
            let why = match broken {
                Some(b) if truncated => format!("the stream broke: {b}"),
                _ => e.to_string(),
            };
            Err(Failed::Stream(why, !truncated))
        }
    }
}

/// `snapshot save FILE`.
pub async fn save(
    client: &Client,
    file: &Path,
    attempts: u32,
    consistency: Consistency,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let part = part_path(file);
    let started = Instant::now();
    let mut last = String::new();
    let mut corrupt = false;
    for attempt in 1..=attempts.max(1) {
        let stream = client.snapshot(consistency).await?;
        let endpoint = stream.endpoint.clone();
        match receive(stream, &part).await {
            Ok(summary) => {
                std::fs::rename(&part, file).map_err(|source| Error::Io {
                    context: "cannot rename the snapshot file into place",
                    source,
                })?;
                sync_parent(file).map_err(|source| Error::Io {
                    context: "cannot sync the snapshot's directory",
                    source,
                })?;
                return print_saved(out, format, file, &summary, &endpoint, started.elapsed())
                    .map_err(Error::stdout);
            }
            Err(Failed::Local(e)) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
            Err(Failed::Stream(why, bad)) => {
                eprintln!("snapshot: attempt {attempt}/{attempts} from {endpoint} failed: {why}");
                last = why;
                corrupt = bad;
            }
        }
    }
    let _ = std::fs::remove_file(&part);
    let msg = format!("snapshot not saved after {attempts} attempts: {last}");
    Err(if corrupt {
        Error::BadSnapshot(msg)
    } else {
        Error::Client(ClientError::Unavailable(msg))
    })
}

fn sync_parent(file: &Path) -> std::io::Result<()> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

fn print_saved(
    out: &mut dyn Write,
    format: OutputFormat,
    file: &Path,
    s: &Summary,
    endpoint: &str,
    took: Duration,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Text => writeln!(
            out,
            "saved {}: revision {}, {} keys, {} items, {} bytes, sha256 {} (from {endpoint} in {:.1}s)",
            file.display(),
            s.header.revision,
            s.header.keys,
            s.trailer.counts.iter().sum::<u64>(),
            s.bytes,
            s.trailer.sha256_hex(),
            took.as_secs_f64()
        ),
        OutputFormat::Json => {
            let mut v = summary_json(s);
            v["file"] = file.display().to_string().into();
            v["endpoint"] = endpoint.into();
            v["seconds"] = took.as_secs_f64().into();
            writeln!(out, "{v}")
        }
    }
}

fn summary_json(s: &Summary) -> serde_json::Value {
    let h = &s.header;
    let counts: serde_json::Map<String, serde_json::Value> = h
        .cfs
        .iter()
        .zip(&s.trailer.counts)
        .map(|(n, c)| (n.clone(), (*c).into()))
        .collect();
    serde_json::json!({
        "version": omnikv_common::snapshot::VERSION,
        "cluster_id": format!("{:016x}", h.cluster_id),
        "revision": h.revision,
        "applied": {"config_id": h.applied_config_id, "index": h.applied_index},
        "keys": h.keys,
        "state_hash": format!("{:016x}", h.state_hash),
        "created_unix_ms": h.created_unix_ms,
        "items": counts,
        "bytes": s.bytes,
        "sha256": s.trailer.sha256_hex(),
    })
}

/// `snapshot status FILE`: verifies the whole file and prints what it holds.
pub fn status(file: &Path, format: OutputFormat, out: &mut dyn Write) -> Result<(), Error> {
    let f = std::fs::File::open(file).map_err(|source| Error::Io {
        context: "cannot open the snapshot file",
        source,
    })?;
    let bad = |e: FormatError| match e {
        FormatError::Io(source) => Error::Io {
            context: "cannot read the snapshot file",
            source,
        },
        e => Error::BadSnapshot(format!("{}: {e}", file.display())),
    };
    let mut reader = Reader::open(std::io::BufReader::with_capacity(1 << 20, f)).map_err(bad)?;
    let trailer = reader.verify_all(|_| Ok(())).map_err(bad)?;
    let s = Summary {
        header: reader.header().clone(),
        trailer,
        bytes: reader.bytes,
    };
    match format {
        OutputFormat::Text => {
            let h = &s.header;
            let items: Vec<String> = h
                .cfs
                .iter()
                .zip(&s.trailer.counts)
                .map(|(n, c)| format!("{n}={c}"))
                .collect();
            writeln!(
                out,
                "ok: format {}, cluster {:016x}, revision {}, applied {}:{}, {} keys, state hash \
                 {:016x}, items {}, {} bytes, sha256 {}",
                omnikv_common::snapshot::VERSION,
                h.cluster_id,
                h.revision,
                h.applied_config_id,
                h.applied_index,
                h.keys,
                h.state_hash,
                items.join(" "),
                s.bytes,
                s.trailer.sha256_hex()
            )
        }
        OutputFormat::Json => writeln!(out, "{}", summary_json(&s)),
    }
    .map_err(Error::stdout)
}
