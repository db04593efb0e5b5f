//! A tiny fake kvd for the CLI tests: speaks just enough HTTP/1.1 (one request per
//! connection) to answer the kv, status and log endpoints from an in-memory map.
//!
//! Special keys: `toolarge` answers 413 too_large, `maybe` answers 504 indeterminate.
//! `/v1/watch` answers a stream whose one line says the revision is compacted; for
//! `key=junk` a line that is not an event, for `key=huge` a line over kvctl's 4 MiB bound.

use omnikv_common::keys::decode_key;
use omnikv_common::{ApiError, ErrorCode, LogEntryView, LogView, Role, StatusView, WriteResult};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct MockKvd {
    pub port: u16,
    pub store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl MockKvd {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub fn status_view(pid: u64, keys: u64) -> StatusView {
    StatusView {
        pid,
        role: Role::Leader,
        leader: Some(pid),
        config_id: 1,
        members: vec![1, 2, 3],
        decided_idx: 12,
        applied_idx: 12,
        compacted_idx: 5,
        keys,
        state_hash: "00ff".into(),
        revision: 0,
        cluster_id: "c0ffee".into(),
        connected_peers: vec![2, 3],
        reconfiguration: None,
        transfer: None,
    }
}

pub fn log_view() -> LogView {
    LogView {
        config_id: 1,
        decided_idx: 8,
        compacted_idx: 5,
        entries: vec![
            LogEntryView::Snapshot { upto: 5 },
            LogEntryView::Entry {
                index: 5,
                ops: vec!["put a 1".into(), "put b 2".into()],
            },
            LogEntryView::Entry {
                index: 6,
                ops: vec![],
            },
            LogEntryView::Entry {
                index: 7,
                ops: vec!["delete a".into()],
            },
        ],
    }
}

/// Starts a fake replica with `pid` on an ephemeral port; it lives until the process ends.
pub fn start(pid: u64) -> MockKvd {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let shared = store.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let store = shared.clone();
            std::thread::spawn(move || {
                let _ = serve(conn, pid, &store);
            });
        }
    });
    MockKvd { port, store }
}

/// The revision headers every successful single-key read carries (fixed numbers: the
/// tests check how kvctl renders them).
pub const READ_HEADERS: &str = "omnikv-index: 12\r\nomnikv-revision: 9\r\n\
    omnikv-create-revision: 2\r\nomnikv-mod-revision: 8\r\nomnikv-version: 3\r\n";

fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    respond_with(stream, status, "", body)
}

fn respond_with(
    stream: &mut TcpStream,
    status: u16,
    headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n{headers}connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

fn error(stream: &mut TcpStream, code: ErrorCode, msg: &str) -> std::io::Result<()> {
    let body = serde_json::to_vec(&ApiError::new(code, msg)).unwrap();
    respond(stream, code.http_status(), &body)
}

fn serve(
    mut stream: TcpStream,
    pid: u64,
    store: &Mutex<HashMap<Vec<u8>, Vec<u8>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    if let Some(enc) = path.strip_prefix("/v1/kv/") {
        let key = decode_key(enc).unwrap();
        match key.as_slice() {
            b"toolarge" => return error(&mut stream, ErrorCode::TooLarge, "value too large"),
            b"maybe" => return error(&mut stream, ErrorCode::Indeterminate, "not decided in time"),
            _ => {}
        }
        let mut store = store.lock().unwrap();
        let index = store.len() as u64 + 5;
        return match method {
            "GET" => match store.get(&key) {
                Some(v) => respond_with(&mut stream, 200, READ_HEADERS, v),
                None => error(&mut stream, ErrorCode::NotFound, "key not found"),
            },
            "PUT" => {
                let existed = store.insert(key, body).is_some();
                let w = WriteResult {
                    config_id: 1,
                    index,
                    existed,
                    revision: index,
                    prev: None,
                    replayed: false,
                };
                respond(&mut stream, 200, &json(&w))
            }
            "DELETE" => {
                let existed = store.remove(&key).is_some();
                let w = WriteResult {
                    config_id: 1,
                    index,
                    existed,
                    revision: index,
                    prev: None,
                    replayed: false,
                };
                respond(&mut stream, 200, &json(&w))
            }
            _ => error(&mut stream, ErrorCode::InvalidRequest, "bad method"),
        };
    }
    match path {
        "/v1/status" => {
            let keys = store.lock().unwrap().len() as u64;
            respond(&mut stream, 200, &json(&status_view(pid, keys)))
        }
        "/v1/log" => respond(&mut stream, 200, &json(&log_view())),
        "/v1/watch" if target.contains("key=junk") => respond(&mut stream, 200, b"junk\n"),
        "/v1/watch" if target.contains("key=huge") => {
            respond(&mut stream, 200, &vec![b'x'; 4 * 1024 * 1024 + 10])
        }
        "/v1/watch" => {
            let end = omnikv_common::kv::WatchEvent::Compacted {
                oldest_revision: 40,
                message: format!("history of fake {pid} starts at 40"),
            };
            let mut line = json(&end);
            line.push(b'\n');
            respond(&mut stream, 200, &line)
        }
        _ => error(&mut stream, ErrorCode::NotFound, "no such path"),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
