//! Printers: every result in text and in JSON, and errors (always for stderr).

use crate::cli::OutputFormat;
use crate::exit::Error;
use omnikv_common::client::ValueRead;
use omnikv_common::keys::display_bytes;
use omnikv_common::kv::{
    DeleteRangeResult, KeyValue, TxnOp, TxnOpResult, TxnRequest, TxnResult, WatchEvent,
};
use omnikv_common::{
    ClientError, LogEntryView, LogView, MembersView, ReconfigureResult, StatusView, WriteResult,
};
use serde::Serialize;
use std::io::{self, Write};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `v` as one line of JSON.
pub fn json_line<T: Serialize + ?Sized>(out: &mut dyn Write, v: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Result of `put` / `delete`: text `OK` (`OK (key did not exist)` for a delete of a missing
/// key), JSON the `WriteResult`.
pub fn write_write_result(
    out: &mut dyn Write,
    format: OutputFormat,
    w: &WriteResult,
    is_delete: bool,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, w),
        OutputFormat::Text if is_delete && !w.existed => writeln!(out, "OK (key did not exist)"),
        OutputFormat::Text => writeln!(out, "OK"),
    }
}

/// `{"key": ...}` or `{"key_hex": ...}` plus `"value"` or `"value_hex"`: the string form when
/// the bytes are UTF-8, hex otherwise.
pub fn value_json(key: &[u8], value: &[u8]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    put_bytes(&mut m, "key", key);
    put_bytes(&mut m, "value", value);
    serde_json::Value::Object(m)
}

fn put_bytes(m: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => m.insert(name.into(), s.into()),
        Err(_) => m.insert(format!("{name}_hex"), hex(b).into()),
    };
}

/// Result of `get`: text the raw value bytes then a newline; JSON see [`value_json`], plus
/// the read's `revision` and the key's `create_revision`, `mod_revision` and `version`.
pub fn write_value(
    out: &mut dyn Write,
    format: OutputFormat,
    key: &[u8],
    read: &ValueRead,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => {
            let mut v = value_json(key, &read.value);
            for (name, n) in [
                ("revision", read.revision),
                ("create_revision", read.create_revision),
                ("mod_revision", read.mod_revision),
                ("version", read.version),
            ] {
                v[name] = n.into();
            }
            json_line(out, &v)
        }
        OutputFormat::Text => {
            out.write_all(&read.value)?;
            out.write_all(b"\n")
        }
    }
}

/// A key-value in JSON: `key` and `value` as [`value_json`] renders them (no value when read
/// keys-only), and its counters.
pub fn kv_json(kv: &KeyValue) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    put_bytes(&mut m, "key", &kv.key.0);
    if let Some(v) = &kv.value {
        put_bytes(&mut m, "value", &v.0);
    }
    m.insert("create_revision".into(), kv.create_revision.into());
    m.insert("mod_revision".into(), kv.mod_revision.into());
    m.insert("version".into(), kv.version.into());
    serde_json::Value::Object(m)
}

/// A key-value as one text line: `KEY<TAB>VALUE`, or `KEY` when read keys-only; bytes as
/// text, or 0x-hex when not printable UTF-8 (as in `kvctl log`).
fn kv_line(kv: &KeyValue) -> String {
    match &kv.value {
        Some(v) => format!("{}\t{}\n", display_bytes(&kv.key.0), display_bytes(&v.0)),
        None => format!("{}\n", display_bytes(&kv.key.0)),
    }
}

/// What a range listing prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMode {
    Values,
    KeysOnly,
    CountOnly,
}

/// A range read to its end (or its limit), possibly over several pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The revision the first page was read at (each page is read at its own).
    pub revision: u64,
    /// Keys in the whole range, as the first page counted them.
    pub count: u64,
    /// Keys beyond the limit were left out.
    pub more: bool,
    pub kvs: Vec<KeyValue>,
}

/// Result of `get --prefix`: text one [`kv_line`] per key (only the count with count-only);
/// JSON `{"revision", "count", "more", "kvs": [`kv_json`...]}`.
pub fn write_listing(
    out: &mut dyn Write,
    format: OutputFormat,
    l: &Listing,
    mode: ListMode,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(
            out,
            &serde_json::json!({
                "revision": l.revision,
                "count": l.count,
                "more": l.more,
                "kvs": l.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            }),
        ),
        OutputFormat::Text if mode == ListMode::CountOnly => writeln!(out, "{}", l.count),
        OutputFormat::Text => l
            .kvs
            .iter()
            .try_for_each(|kv| out.write_all(kv_line(kv).as_bytes())),
    }
}

/// `deleted N`, or for a retry answered from its first outcome (which keeps no count)
/// `deleted ? (...)`.
fn deleted_text(deleted: u64, replayed: bool) -> String {
    if replayed {
        "deleted ? (a retry answered from its first outcome, which keeps no count)".into()
    } else {
        format!("deleted {deleted}")
    }
}

/// Result of `delete --prefix`: text `deleted N`; JSON the `DeleteRangeResult`.
pub fn write_deleted(
    out: &mut dyn Write,
    format: OutputFormat,
    d: &DeleteRangeResult,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, d),
        OutputFormat::Text => writeln!(out, "{}", deleted_text(d.deleted, d.replayed)),
    }
}

/// Result of `txn`, like etcdctl's: `SUCCESS` or `FAILURE`, then per operation of the branch
/// that ran a blank line and its result (`OK`; `deleted N`; a get's [`kv_line`]s, or its
/// count when count-only). JSON: the API's `TxnResult` (keys and values base64).
pub fn write_txn(
    out: &mut dyn Write,
    format: OutputFormat,
    request: &TxnRequest,
    r: &TxnResult,
) -> io::Result<()> {
    if format == OutputFormat::Json {
        return json_line(out, r);
    }
    let head = if r.succeeded { "SUCCESS" } else { "FAILURE" };
    if r.replayed {
        writeln!(
            out,
            "{head} (a retry answered from its first outcome, which keeps no results)"
        )?;
        return Ok(());
    }
    writeln!(out, "{head}")?;
    let branch = if r.succeeded {
        &request.success
    } else {
        &request.failure
    };
    for (op, result) in branch.iter().zip(&r.responses) {
        writeln!(out)?;
        match (op, result) {
            (_, TxnOpResult::Put { .. }) => writeln!(out, "OK")?,
            (_, TxnOpResult::Delete { deleted, .. }) => {
                writeln!(out, "{}", deleted_text(*deleted, false))?
            }
            (TxnOp::Get(g), TxnOpResult::Get(got)) if g.count_only => {
                writeln!(out, "{}", got.count)?
            }
            (_, TxnOpResult::Get(got)) => got
                .kvs
                .iter()
                .try_for_each(|kv| out.write_all(kv_line(kv).as_bytes()))?,
        }
    }
    Ok(())
}

/// One change of `watch`: text `PUT KEY VALUE rev=N` or `DELETE KEY rev=N` (plus
/// ` prev=VALUE` when it carries the previous value); JSON the event with `key`/`value`/
/// `prev_value` rendered as [`value_json`] does. Other events print nothing.
pub fn write_watch_event(
    out: &mut dyn Write,
    format: OutputFormat,
    e: &WatchEvent,
) -> io::Result<()> {
    let (kind, key, value, revision, prev) = match e {
        WatchEvent::Put {
            key,
            value,
            revision,
            prev_value,
            ..
        } => ("put", key, Some(value), *revision, prev_value),
        WatchEvent::Delete {
            key,
            revision,
            prev_value,
        } => ("delete", key, None, *revision, prev_value),
        _ => return Ok(()),
    };
    match format {
        OutputFormat::Json => {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), kind.into());
            put_bytes(&mut m, "key", &key.0);
            if let Some(v) = value {
                put_bytes(&mut m, "value", &v.0);
            }
            m.insert("revision".into(), revision.into());
            if let WatchEvent::Put {
                create_revision,
                version,
                ..
            } = e
            {
                m.insert("create_revision".into(), (*create_revision).into());
                m.insert("version".into(), (*version).into());
            }
            if let Some(p) = prev {
                put_bytes(&mut m, "prev_value", &p.0);
            }
            json_line(out, &serde_json::Value::Object(m))
        }
        OutputFormat::Text => {
            let mut line = format!("{} {}", kind.to_uppercase(), display_bytes(&key.0));
            if let Some(v) = value {
                line.push_str(&format!(" {}", display_bytes(&v.0)));
            }
            line.push_str(&format!(" rev={revision}"));
            if let Some(p) = prev {
                line.push_str(&format!(" prev={}", display_bytes(&p.0)));
            }
            writeln!(out, "{line}")
        }
    }
}

fn list(v: &[u64]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn leader(l: Option<u64>) -> String {
    l.map_or_else(|| "none".into(), |l| l.to_string())
}

/// The status fields shown, in text order; [`status_values`] renders them.
const STATUS_FIELDS: [&str; 12] = [
    "pid",
    "role",
    "leader",
    "config_id",
    "members",
    "decided_idx",
    "applied_idx",
    "compacted_idx",
    "keys",
    "revision",
    "state_hash",
    "connected_peers",
];

/// The values of [`STATUS_FIELDS`], rendered.
fn status_values(s: &StatusView) -> [String; 12] {
    [
        s.pid.to_string(),
        s.role.to_string(),
        leader(s.leader),
        s.config_id.to_string(),
        list(&s.members),
        s.decided_idx.to_string(),
        s.applied_idx.to_string(),
        s.compacted_idx.to_string(),
        s.keys.to_string(),
        s.revision.to_string(),
        s.state_hash.clone(),
        list(&s.connected_peers),
    ]
}

/// The status fields in text order, as (name, rendered value).
fn status_fields(s: &StatusView) -> Vec<(&'static str, String)> {
    STATUS_FIELDS.into_iter().zip(status_values(s)).collect()
}

/// Aligned `field: value` lines, one per status field.
pub fn status_text(s: &StatusView) -> String {
    let mut fields = status_fields(s);
    // Shown only while something is under way.
    if let Some(r) = &s.reconfiguration {
        fields.push((
            "reconfiguration",
            format!(
                "{} to config {} (members {})",
                r.phase,
                r.config_id,
                list(&r.members)
            ),
        ));
    }
    if let Some(t) = &s.transfer {
        fields.push((
            "transfer",
            format!(
                "from {}: {}/{} keys, {} ({} items, {} ms)",
                t.from,
                t.keys,
                t.keys_total,
                crate::commands::wait_serving::describe(t),
                t.items,
                t.elapsed_ms
            ),
        ));
    }
    let width = fields.iter().map(|(n, _)| n.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{:<width$} {value}\n", format!("{name}:")));
    }
    out
}

/// Result of `reconfigure`: `OK: configuration N, members 1,2,3,4`, or, when that was in
/// place before (`already`), `already in place: configuration N with members [1, 2, 3, 4]`;
/// JSON the result with `"already_in_place"`.
pub fn write_reconfigured(
    out: &mut dyn Write,
    format: OutputFormat,
    r: &ReconfigureResult,
    already: bool,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct Reconfigured<'a> {
        #[serde(flatten)]
        result: &'a ReconfigureResult,
        already_in_place: bool,
    }
    match format {
        OutputFormat::Json => json_line(
            out,
            &Reconfigured {
                result: r,
                already_in_place: already,
            },
        ),
        OutputFormat::Text if already => writeln!(
            out,
            "already in place: configuration {} with members {:?}",
            r.config_id, r.members
        ),
        OutputFormat::Text => writeln!(
            out,
            "OK: configuration {}, members {}",
            r.config_id,
            list(&r.members)
        ),
    }
}

/// Result of `members`: `config N, leader L`, then one `PID  PEER_ADDR  [leader]` row each.
pub fn write_members(out: &mut dyn Write, format: OutputFormat, m: &MembersView) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, m),
        OutputFormat::Text => {
            writeln!(out, "config {}, leader {}", m.config_id, leader(m.leader))?;
            let width = m
                .members
                .iter()
                .filter_map(|p| p.peer_addr.as_ref().map(String::len))
                .max()
                .unwrap_or(1);
            for p in &m.members {
                let addr = p.peer_addr.as_deref().unwrap_or("-");
                let tag = if m.leader == Some(p.pid) {
                    "  leader"
                } else {
                    ""
                };
                writeln!(out, "{:<4} {addr:<width$}{tag}", p.pid)?;
            }
            Ok(())
        }
    }
}

/// Result of `status`: text see [`status_text`], JSON the `StatusView`.
pub fn write_status(out: &mut dyn Write, format: OutputFormat, s: &StatusView) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, s),
        OutputFormat::Text => out.write_all(status_text(s).as_bytes()),
    }
}

/// One row of `status --all`: the endpoint as given, and its answer or error.
pub type EndpointStatus = (String, Result<StatusView, Error>);

/// `status --all` as a table: a header, then one row per endpoint; an endpoint without an
/// answer shows `unreachable: <reason>` after its name (`not permitted: <reason>` when it
/// refused the credentials).
pub fn status_table(rows: &[EndpointStatus]) -> String {
    let header: Vec<String> = std::iter::once("ENDPOINT")
        .chain(STATUS_FIELDS)
        .map(str::to_uppercase)
        .collect();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(ep, r)| match r {
            Ok(s) => std::iter::once(ep.clone())
                .chain(status_values(s))
                .collect(),
            Err(Error::Client(ClientError::Unavailable(m))) => {
                vec![ep.clone(), format!("unreachable: {m}")]
            }
            // Reached, but it refused our credentials: the message says so.
            Err(e @ Error::Client(ClientError::NotPermitted(_))) => vec![ep.clone(), e.to_string()],
            Err(e) => vec![ep.clone(), format!("unreachable: {e}")],
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &table {
        // An error row's message spans the remaining columns: it does not widen them.
        if row.len() == header.len() {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        } else {
            widths[0] = widths[0].max(row[0].len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&table) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

/// `status --all` in JSON: an array of `{"endpoint":..,"status":{..}}` or
/// `{"endpoint":..,"error":{"code":..,"message":..}}`.
pub fn status_all_json(rows: &[EndpointStatus]) -> serde_json::Value {
    rows.iter()
        .map(|(ep, r)| match r {
            Ok(s) => serde_json::json!({ "endpoint": ep, "status": s }),
            Err(e) => serde_json::json!({ "endpoint": ep, "error": error_body(e) }),
        })
        .collect()
}

/// Result of `status --all`.
pub fn write_status_all(
    out: &mut dyn Write,
    format: OutputFormat,
    rows: &[EndpointStatus],
) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, &status_all_json(rows)),
        OutputFormat::Text => out.write_all(status_table(rows).as_bytes()),
    }
}

/// The text form of a log (a contract): `snapshot\t[0, N)\t(N entries squashed)` for the
/// snapshot marker, `<index>\t<op>` per op of an entry, `<index>\t(empty)` for an entry
/// without ops.
pub fn log_text(log: &LogView) -> String {
    let mut out = String::new();
    for entry in &log.entries {
        match entry {
            LogEntryView::Snapshot { upto } => {
                out.push_str(&format!(
                    "snapshot\t[0, {upto})\t({upto} entries squashed)\n"
                ));
            }
            LogEntryView::Entry { index, ops } if ops.is_empty() => {
                out.push_str(&format!("{index}\t(empty)\n"));
            }
            LogEntryView::Entry { index, ops } => {
                for op in ops {
                    out.push_str(&format!("{index}\t{op}\n"));
                }
            }
        }
    }
    out
}

/// Result of `log`: text see [`log_text`], JSON the `LogView`.
pub fn write_log(out: &mut dyn Write, format: OutputFormat, log: &LogView) -> io::Result<()> {
    match format {
        OutputFormat::Json => json_line(out, log),
        OutputFormat::Text => out.write_all(log_text(log).as_bytes()),
    }
}

fn error_body(e: &Error) -> serde_json::Value {
    serde_json::json!({ "code": e.code(), "message": e.to_string() })
}

/// The error as printed: `error: <message>\n`, or with JSON
/// `{"error":{"code":"<code>","message":"..."}}\n`.
pub fn error_string(format: OutputFormat, e: &Error) -> String {
    match format {
        OutputFormat::Text => format!("error: {e}\n"),
        OutputFormat::Json => format!("{}\n", serde_json::json!({ "error": error_body(e) })),
    }
}

/// Prints `e` (meant for stderr). Failing to print an error is ignored: nowhere to report it.
pub fn write_error(err: &mut dyn Write, format: OutputFormat, e: &Error) {
    let _ = err.write_all(error_string(format, e).as_bytes());
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnikv_common::Role;

    fn text<F: FnOnce(&mut Vec<u8>) -> io::Result<()>>(f: F) -> String {
        let mut v = Vec::new();
        f(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    fn status() -> StatusView {
        StatusView {
            pid: 2,
            role: Role::Follower,
            leader: Some(1),
            config_id: 1,
            members: vec![1, 2, 3],
            decided_idx: 10,
            applied_idx: 9,
            compacted_idx: 5,
            keys: 4,
            state_hash: "abcd".into(),
            revision: 0,
            cluster_id: "c1".into(),
            connected_peers: vec![1, 3],
            reconfiguration: None,
            transfer: None,
        }
    }

    #[test]
    fn log_text_format() {
        let log = LogView {
            config_id: 1,
            decided_idx: 8,
            compacted_idx: 5,
            entries: vec![
                LogEntryView::Snapshot { upto: 5 },
                LogEntryView::Entry {
                    index: 5,
                    ops: vec!["put a 1".into()],
                },
                LogEntryView::Entry {
                    index: 6,
                    ops: vec!["put b 2".into(), "delete a".into()],
                },
                LogEntryView::Entry {
                    index: 7,
                    ops: vec![],
                },
                LogEntryView::Entry {
                    index: 8,
                    ops: vec!["read-barrier".into()],
                },
            ],
        };
        assert_eq!(
            log_text(&log),
            "snapshot\t[0, 5)\t(5 entries squashed)\n\
             5\tput a 1\n\
             6\tput b 2\n\
             6\tdelete a\n\
             7\t(empty)\n\
             8\tread-barrier\n"
        );
        let empty = LogView {
            entries: vec![],
            ..log.clone()
        };
        assert_eq!(log_text(&empty), "");
        let j = text(|o| write_log(o, OutputFormat::Json, &log));
        let back: LogView = serde_json::from_str(&j).unwrap();
        assert_eq!(back, log);
    }

    #[test]
    fn write_results() {
        let w = WriteResult {
            config_id: 1,
            index: 7,
            existed: false,
            revision: 3,
            prev: None,
            replayed: false,
        };
        assert_eq!(
            text(|o| write_write_result(o, OutputFormat::Text, &w, false)),
            "OK\n"
        );
        assert_eq!(
            text(|o| write_write_result(o, OutputFormat::Text, &w, true)),
            "OK (key did not exist)\n"
        );
        let w2 = WriteResult {
            existed: true,
            ..w.clone()
        };
        assert_eq!(
            text(|o| write_write_result(o, OutputFormat::Text, &w2, true)),
            "OK\n"
        );
        assert_eq!(
            text(|o| write_write_result(o, OutputFormat::Json, &w, true)),
            "{\"config_id\":1,\"index\":7,\"existed\":false,\"revision\":3}\n"
        );
    }

    fn read(value: &[u8]) -> ValueRead {
        ValueRead {
            value: value.to_vec(),
            index: 9,
            revision: 7,
            create_revision: 2,
            mod_revision: 5,
            version: 3,
        }
    }

    fn kv(k: &[u8], v: Option<&[u8]>) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.map(Into::into),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
        }
    }

    #[test]
    fn values() {
        let mut v = Vec::new();
        write_value(&mut v, OutputFormat::Text, b"k", &read(b"\xff\x00x")).unwrap();
        assert_eq!(v, b"\xff\x00x\n");
        let j = text(|o| write_value(o, OutputFormat::Json, b"k", &read(b"v 1")));
        assert_eq!(j.lines().count(), 1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).unwrap(),
            serde_json::json!({"key": "k", "value": "v 1", "revision": 7, "create_revision": 2,
                "mod_revision": 5, "version": 3})
        );
        let j: serde_json::Value = serde_json::from_str(&text(|o| {
            write_value(o, OutputFormat::Json, b"k", &read(b"\xff\x01"))
        }))
        .unwrap();
        assert_eq!(j["value_hex"], "ff01");
        assert_eq!(j["mod_revision"], 5);
        let j = value_json(b"\xfe", b"");
        assert_eq!(j, serde_json::json!({"key_hex": "fe", "value": ""}));
    }

    #[test]
    fn listings() {
        let l = Listing {
            revision: 9,
            count: 3,
            more: true,
            kvs: vec![kv(b"a", Some(b"1")), kv(b"b\xff", Some(b"x\ty"))],
        };
        let t = |mode| text(|o| write_listing(o, OutputFormat::Text, &l, mode));
        assert_eq!(t(ListMode::Values), "a\t1\n0x62ff\t0x780979\n");
        assert_eq!(t(ListMode::CountOnly), "3\n");
        let keys = Listing {
            kvs: vec![kv(b"a", None)],
            ..l.clone()
        };
        assert_eq!(
            text(|o| write_listing(o, OutputFormat::Text, &keys, ListMode::KeysOnly)),
            "a\n"
        );
        let j: serde_json::Value = serde_json::from_str(&text(|o| {
            write_listing(o, OutputFormat::Json, &l, ListMode::Values)
        }))
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"revision": 9, "count": 3, "more": true, "kvs": [
                {"key": "a", "value": "1", "create_revision": 2, "mod_revision": 5, "version": 3},
                {"key_hex": "62ff", "value": "x\ty", "create_revision": 2, "mod_revision": 5, "version": 3},
            ]})
        );
    }

    #[test]
    fn watch_events() {
        let put = WatchEvent::Put {
            key: "cfg/a".into(),
            value: "1".into(),
            revision: 12,
            create_revision: 10,
            version: 2,
            prev_value: Some("0".into()),
        };
        let del = WatchEvent::Delete {
            key: "cfg/a".into(),
            revision: 13,
            prev_value: None,
        };
        let t = |e| text(|o| write_watch_event(o, OutputFormat::Text, e));
        assert_eq!(t(&put), "PUT cfg/a 1 rev=12 prev=0\n");
        assert_eq!(t(&del), "DELETE cfg/a rev=13\n");
        assert_eq!(t(&WatchEvent::Progress { revision: 13 }), "");
        let j: serde_json::Value =
            serde_json::from_str(&text(|o| write_watch_event(o, OutputFormat::Json, &put)))
                .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"type": "put", "key": "cfg/a", "value": "1", "revision": 12,
                "create_revision": 10, "version": 2, "prev_value": "0"})
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_text(&status()),
            "pid:             2\n\
             role:            follower\n\
             leader:          1\n\
             config_id:       1\n\
             members:         1,2,3\n\
             decided_idx:     10\n\
             applied_idx:     9\n\
             compacted_idx:   5\n\
             keys:            4\n\
             revision:        0\n\
             state_hash:      abcd\n\
             connected_peers: 1,3\n"
        );
        let none = StatusView {
            leader: None,
            connected_peers: vec![],
            reconfiguration: None,
            transfer: None,
            ..status()
        };
        let t = status_text(&none);
        assert!(t.contains("leader:          none\n"), "{t}");
        assert!(t.contains("connected_peers: none\n"), "{t}");
        let j = text(|o| write_status(o, OutputFormat::Json, &status()));
        assert_eq!(serde_json::from_str::<StatusView>(&j).unwrap(), status());
        assert_eq!(j.trim_end().lines().count(), 1);
    }

    #[test]
    fn status_all() {
        let rows: Vec<EndpointStatus> = vec![
            ("127.0.0.1:8001".into(), Ok(status())),
            (
                "127.0.0.1:8002".into(),
                Err(Error::Client(ClientError::Unavailable(
                    "0 of 1 replicas reachable".into(),
                ))),
            ),
        ];
        let t = status_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ENDPOINT        PID  ROLE"), "{t}");
        assert!(lines[1].starts_with("127.0.0.1:8001  2    follower"), "{t}");
        assert_eq!(
            lines[2],
            "127.0.0.1:8002  unreachable: 0 of 1 replicas reachable"
        );
        let j = status_all_json(&rows);
        assert_eq!(j[0]["endpoint"], "127.0.0.1:8001");
        assert_eq!(j[0]["status"]["pid"], 2);
        assert_eq!(j[1]["error"]["code"], "unavailable");
    }

    #[test]
    fn errors() {
        let e = Error::KeyNotFound(b"a".to_vec());
        assert_eq!(
            error_string(OutputFormat::Text, &e),
            "error: key not found: a\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&error_string(OutputFormat::Json, &e)).unwrap();
        assert_eq!(j["error"]["code"], "not_found");
        assert_eq!(j["error"]["message"], "key not found: a");
    }
}
