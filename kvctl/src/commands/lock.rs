//! `lock NAME [--ttl S] [-- COMMAND...]`: etcd's mutex recipe (client/v3/concurrency) over
//! omnikv's transactions and watches, and the queue it shares with `elect`.
//!
//! A contender grants itself a lease and creates the key `NAME/<lease hex>` attached to it in
//! a transaction that requires the key not to exist (create_revision == 0). Its place in line
//! is that key's create revision: the holder is the key with the lowest one. A waiter watches
//! only the key created just before its own (the largest create revision below it) until it
//! is deleted, then looks again, so the lock passes in order of arrival and a release wakes
//! one waiter. The lease is kept alive the whole time (every TTL/3); releasing is revoking it,
//! which deletes the key; a contender that dies stops renewing, and its key goes when the
//! lease expires.
//!
//! While the lock is held, COMMAND runs as a child that dies with kvctl (Linux
//! `PR_SET_PDEATHSIG`); when the lease is lost (kvd says it is gone, or no keepalive was
//! confirmed for a whole TTL) the child gets SIGTERM, then SIGKILL after a grace period.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output::{self, ListMode, Listing};
use omnikv_common::client::{KeySet, LeaseLost};
use omnikv_common::keys::display_bytes;
use omnikv_common::kv::{
    Bytes64, Compare, CompareOp, CompareTarget, GetOp, KeyValue, PutOp, RangeSpec, TxnOp,
    TxnOpResult, TxnRequest,
};
use omnikv_common::{Client, ClientError, Consistency};
use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The environment variables the locked command gets: the lock key and its create revision
/// (a fencing token: it grows with every holder).
pub const ENV_LOCK_KEY: &str = "KVCTL_LOCK_KEY";
pub const ENV_LOCK_REV: &str = "KVCTL_LOCK_REV";

/// A lease this process holds, with the TTL it was granted and when the grant was sent.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub id: u64,
    pub ttl: u64,
    pub sent: Instant,
}

impl Session {
    /// Grants a lease of `ttl` seconds.
    pub async fn grant(client: &Client, ttl: u64) -> Result<Session, Error> {
        let sent = Instant::now();
        let g = client.lease_grant(ttl, None).await?;
        Ok(Session {
            id: g.id,
            ttl: g.ttl,
            sent,
        })
    }

    /// Keeps the lease alive; returns when it is lost.
    pub async fn keep(&self, client: &Client) -> LeaseLost {
        client
            .keep_lease(self.id, self.ttl, self.sent, |_| {})
            .await
    }

    /// Revokes the lease (deleting the queue key). A failure is reported on `err` only: the
    /// lease then ends by itself within its TTL.
    pub async fn release(&self, client: &Client, err: &mut dyn Write) {
        match client.lease_revoke(self.id).await {
            Ok(_) | Err(ClientError::NotFound) => {}
            Err(e) => {
                let _ = writeln!(
                    err,
                    "warning: could not revoke lease {:x} ({e}); it expires within {}s",
                    self.id, self.ttl
                );
            }
        }
    }
}

/// The queue key under `NAME/` of lease `lease`.
pub fn queue_key(prefix: &[u8], lease: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `NAME/`: the prefix the contenders of NAME queue under.
pub fn queue_prefix(name: &[u8]) -> Result<Vec<u8>, Error> {
    super::check_key(name)?;
    let mut p = name.to_vec();
    p.push(b'/');
    Ok(p)
}

/// This process's key in the queue and its place in line (its create revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub create_revision: u64,
}

/// The key among `kvs` created last before `entry` (the one to wait for), if any.
pub fn predecessor<'a>(kvs: &'a [KeyValue], entry: &Entry) -> Option<&'a KeyValue> {
    kvs.iter()
        .filter(|kv| kv.create_revision < entry.create_revision)
        .max_by_key(|kv| kv.create_revision)
}

/// The holder (or leader) among `kvs`: the key with the lowest create revision.
pub fn holder(kvs: &[KeyValue]) -> Option<&KeyValue> {
    kvs.iter().min_by_key(|kv| kv.create_revision)
}

fn get_op(key: &[u8], prefix: bool) -> TxnOp {
    TxnOp::Get(GetOp {
        range: RangeSpec {
            key: key.into(),
            end: None,
            prefix,
        },
        limit: None,
        keys_only: true,
        count_only: false,
    })
}

/// The enqueueing transaction: if `key` does not exist, create it with `value` attached to
/// `lease` and list the queue; else read the key and list the queue.
pub fn enqueue_txn(prefix: &[u8], key: &[u8], value: &[u8], lease: u64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }],
        success: vec![
            TxnOp::Put(PutOp {
                key: key.into(),
                value: Bytes64(value.to_vec()),
                prev: false,
                lease,
            }),
            get_op(prefix, true),
        ],
        failure: vec![get_op(key, false), get_op(prefix, true)],
    }
}

/// Joins the queue under `prefix` with lease `lease`; returns this process's entry and, when
/// the transaction's answer carried it whole, the queue as of the transaction.
async fn enqueue(
    client: &Client,
    prefix: &[u8],
    lease: u64,
    value: &[u8],
) -> Result<(Entry, Option<Listing>), Error> {
    let key = queue_key(prefix, lease);
    let r = client
        .txn(&enqueue_txn(prefix, &key, value, lease))
        .await
        .map_err(|e| match e {
            ClientError::NotFound => Error::LeaseNotFound(lease),
            e => Error::Client(e),
        })?;
    let queue = match r.responses.get(1) {
        Some(TxnOpResult::Get(g)) if !g.more => Some(Listing {
            revision: r.revision,
            count: g.count,
            more: false,
            kvs: g.kvs.clone(),
        }),
        _ => None,
    };
    let create_revision = if r.succeeded {
        r.revision
    } else {
        // The key existed already (a retried transaction answered afresh): its own counters.
        match r.responses.first() {
            Some(TxnOpResult::Get(g)) => g.kvs.first().map(|kv| kv.create_revision),
            _ => None,
        }
        .or(queue
            .as_ref()
            .and_then(|q| q.kvs.iter().find(|kv| kv.key.0 == key))
            .map(|kv| kv.create_revision))
        .ok_or(Error::LeaseLost(LeaseLost::NotFound(lease)))?
    };
    Ok((
        Entry {
            key,
            create_revision,
        },
        queue,
    ))
}

/// Every key under `prefix` (keys and counters; values too with `values`).
pub async fn read_queue(client: &Client, prefix: &[u8], values: bool) -> Result<Listing, Error> {
    let list = super::range::List {
        limit: None,
        mode: if values {
            ListMode::Values
        } else {
            ListMode::KeysOnly
        },
        page_size: None,
    };
    super::range::read(
        client,
        &KeySet::Prefix(prefix.to_vec()),
        &list,
        Consistency::Linearizable,
    )
    .await
}

/// Waits until `key`, which existed at `revision`, is deleted.
async fn wait_delete(client: &Client, key: &[u8], revision: u64) -> Result<(), Error> {
    let mut watch = client.watch(omnikv_common::client::WatchRequest {
        keys: KeySet::Key(key.to_vec()),
        start_revision: Some(revision + 1),
        prev_value: false,
        progress_ms: crate::cli::DEFAULT_WATCH_PROGRESS_MS,
        consistency: Consistency::Linearizable,
    });
    loop {
        match watch.next().await {
            Ok(omnikv_common::client::WatchItem::Event(
                omnikv_common::kv::WatchEvent::Delete { .. },
            )) => return Ok(()),
            Ok(_) => {}
            // History gone: look at the queue again instead.
            Err(omnikv_common::client::WatchError::Compacted { .. }) => return Ok(()),
            Err(omnikv_common::client::WatchError::Client(e)) => return Err(e.into()),
        }
    }
}

/// Joins the queue under `prefix` with `session`'s lease and `value`, and returns once every
/// key created before this one is gone: the lock (or the leadership) is this process's.
pub async fn campaign(
    client: &Client,
    prefix: &[u8],
    session: &Session,
    value: &[u8],
) -> Result<Entry, Error> {
    let (entry, mut queue) = enqueue(client, prefix, session.id, value).await?;
    loop {
        let q = match queue.take() {
            Some(q) => q,
            None => read_queue(client, prefix, false).await?,
        };
        if !q.kvs.iter().any(|kv| kv.key.0 == entry.key) {
            return Err(LeaseLost::NotFound(session.id).into());
        }
        match predecessor(&q.kvs, &entry) {
            None => return Ok(entry),
            Some(before) => wait_delete(client, &before.key.0, q.revision).await?,
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught (from before the campaign, so that an interrupted
/// contender still releases its lease).
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn catch() -> Result<Signals, Error> {
        let on = |kind| {
            signal(kind).map_err(|source| Error::Io {
                context: "cannot catch signals",
                source,
            })
        };
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// How [`acquire`] ended without an error.
pub enum Acquired {
    /// First in line: the lock (or leadership) is this process's.
    Entry(Entry),
    /// A signal came first; the lease was released. The exit code: 128 + the signal.
    Interrupted(i32),
}

/// [`campaign`] while `keeper` keeps the session's lease alive and `signals` are caught. A
/// failed campaign or a signal releases the lease; a lost lease is an error.
pub async fn acquire(
    client: &Client,
    prefix: &[u8],
    session: &Session,
    value: &[u8],
    keeper: &mut Pin<&mut impl Future<Output = LeaseLost>>,
    signals: &mut Signals,
    err: &mut dyn Write,
) -> Result<Acquired, Error> {
    tokio::select! {
        r = campaign(client, prefix, session, value) => match r {
            Ok(entry) => Ok(Acquired::Entry(entry)),
            Err(e) => {
                session.release(client, err).await;
                Err(e)
            }
        },
        lost = keeper => Err(lost.into()),
        sig = signals.recv() => {
            session.release(client, err).await;
            Ok(Acquired::Interrupted(128 + sig))
        }
    }
}

/// Holds what was acquired until a signal (then releases the lease and returns exit code 0)
/// or the loss of the lease (an error).
pub async fn hold(
    client: &Client,
    session: &Session,
    keeper: &mut Pin<&mut impl Future<Output = LeaseLost>>,
    signals: &mut Signals,
    err: &mut dyn Write,
) -> Result<i32, Error> {
    tokio::select! {
        lost = keeper => Err(lost.into()),
        _ = signals.recv() => {
            session.release(client, err).await;
            Ok(0)
        }
    }
}

/// What `lock` was asked to do.
#[derive(Debug, Clone)]
pub struct LockArgs {
    pub name: Vec<u8>,
    pub ttl: u64,
    /// How long the command has between SIGTERM and SIGKILL when the lease is lost.
    pub kill_grace: Duration,
    /// The command and its arguments (empty: hold until interrupted).
    pub command: Vec<OsString>,
}

/// A shell's exit code for a child's status: its code, or 128 + the signal that killed it.
pub fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// In the child between fork and exec: die with SIGKILL when kvctl (`parent`) dies, and do
/// not start at all if it is already gone.
fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl and getppid are async-signal-safe system calls without pointers.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: as above.
    if unsafe { libc::getppid() } != parent {
        return Err(std::io::Error::other(
            "kvctl exited before the command started",
        ));
    }
    Ok(())
}

/// Starts the command with the lock's key and revision in its environment.
fn spawn(command: &[OsString], entry: &Entry) -> std::io::Result<tokio::process::Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no command"))?;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env(ENV_LOCK_KEY, OsString::from_vec(entry.key.clone()))
        .env(ENV_LOCK_REV, entry.create_revision.to_string());
    // SAFETY: the closure only makes system calls that are safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    cmd.spawn()
}

/// Sends `sig` to the child (if it still runs).
fn send_signal(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill takes no pointers; the pid is our own unreaped child's.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`; waits for it.
async fn stop(child: &mut tokio::process::Child, grace: Duration) {
    send_signal(child, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Prints the held key: text the key, JSON the key with its revision and lease.
pub fn write_held(
    out: &mut dyn Write,
    format: OutputFormat,
    entry: &Entry,
    lease: u64,
    value: Option<&[u8]>,
) -> Result<(), Error> {
    match format {
        OutputFormat::Json => {
            let mut v = output::value_json(&entry.key, value.unwrap_or_default());
            if value.is_none() {
                if let Some(m) = v.as_object_mut() {
                    m.remove("value");
                }
            }
            v["create_revision"] = entry.create_revision.into();
            v["lease"] = format!("{lease:x}").into();
            output::json_line(out, &v)
        }
        OutputFormat::Text => writeln!(out, "{}", display_bytes(&entry.key)),
    }
    .and_then(|()| out.flush())
    .map_err(Error::stdout)
}

/// Waits for the lock, runs the command while holding it (or, without one, prints the key
/// and holds it until SIGINT/SIGTERM), releases it, and returns the exit code: the command's
/// status (128 + signal when killed); 128 + signal when kvctl was interrupted while waiting;
/// 0 for a hold without command that was interrupted.
pub async fn run(
    client: &Client,
    args: &LockArgs,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, Error> {
    let prefix = queue_prefix(&args.name)?;
    let mut signals = Signals::catch()?;
    let session = Session::grant(client, args.ttl).await?;
    let keeper = session.keep(client);
    tokio::pin!(keeper);
    let entry = match acquire(
        client,
        &prefix,
        &session,
        b"",
        &mut keeper,
        &mut signals,
        err,
    )
    .await?
    {
        Acquired::Entry(entry) => entry,
        Acquired::Interrupted(code) => return Ok(code),
    };
    if args.command.is_empty() {
        write_held(out, format, &entry, session.id, None)?;
        return hold(client, &session, &mut keeper, &mut signals, err).await;
    }
    let mut child = match spawn(&args.command, &entry) {
        Ok(child) => child,
        Err(e) => {
            session.release(client, err).await;
            let _ = writeln!(
                err,
                "error: cannot run {}: {e}",
                args.command[0].to_string_lossy()
            );
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                session.release(client, err).await;
                return match status {
                    Ok(status) => Ok(status_code(status)),
                    Err(source) => Err(Error::Io { context: "cannot wait for the command", source }),
                };
            }
            lost = &mut keeper => {
                let _ = writeln!(err, "error: lock lost ({lost}): stopping the command");
                stop(&mut child, args.kill_grace).await;
                // Best effort: kvd may still hold the lease if only its answers were lost.
                session.release(client, err).await;
                return Err(lost.into());
            }
            sig = signals.recv() => send_signal(&child, sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create_revision: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: None,
            create_revision,
            mod_revision: create_revision,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn the_oldest_key_holds_and_each_waits_for_the_one_before() {
        let kvs = [kv("l/a", 9), kv("l/b", 4), kv("l/c", 12), kv("l/d", 7)];
        assert_eq!(holder(&kvs).unwrap().key.0, b"l/b");
        let entry = |r| Entry {
            key: b"l/x".to_vec(),
            create_revision: r,
        };
        assert_eq!(predecessor(&kvs, &entry(12)).unwrap().key.0, b"l/a");
        assert_eq!(predecessor(&kvs, &entry(9)).unwrap().key.0, b"l/d");
        assert_eq!(predecessor(&kvs, &entry(7)).unwrap().key.0, b"l/b");
        assert!(predecessor(&kvs, &entry(4)).is_none());
        assert!(holder(&[]).is_none());
    }

    #[test]
    fn queue_keys_are_name_slash_lease_hex() {
        let prefix = queue_prefix(b"jobs").unwrap();
        assert_eq!(prefix, b"jobs/");
        assert_eq!(
            queue_key(&prefix, 0x694d7a6f2bd1a504),
            b"jobs/694d7a6f2bd1a504"
        );
        assert!(queue_prefix(b"").is_err());
    }

    #[test]
    fn enqueue_creates_only_a_new_key_with_the_lease() {
        let t = enqueue_txn(b"l/", b"l/1f", b"v", 0x1f);
        assert_eq!(t.compare[0].target, CompareTarget::CreateRevision(0));
        assert!(matches!(&t.success[0], TxnOp::Put(p) if p.lease == 0x1f && p.value.0 == b"v"));
        assert!(matches!(&t.success[1], TxnOp::Get(g) if g.range.prefix && g.range.key.0 == b"l/"));
        assert!(
            matches!(&t.failure[0], TxnOp::Get(g) if !g.range.prefix && g.range.key.0 == b"l/1f")
        );
    }

    #[test]
    fn exit_codes_of_the_command() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(status_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }

    #[tokio::test]
    async fn the_command_sees_the_lock_key_and_revision() {
        let entry = Entry {
            key: b"l/1".to_vec(),
            create_revision: 5,
        };
        let mut child = spawn(
            &[
                "sh".into(),
                "-c".into(),
                "test \"$KVCTL_LOCK_KEY $KVCTL_LOCK_REV\" = 'l/1 5'".into(),
            ],
            &entry,
        )
        .unwrap();
        assert!(child.wait().await.unwrap().success());
    }
}
