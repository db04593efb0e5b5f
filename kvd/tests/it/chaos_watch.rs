//! Watch completeness under chaos: one watcher per initial replica (`GET /v1/watch` on the
//! test's key prefix, NDJSON, from revision 1), kept going through the faults:
//! - a stream that ends, breaks, or stays silent past the progress interval (a killed or
//!   paused replica) is reopened from one past the last revision seen (or promised by a
//!   `progress` event), on the same replica while it is a member, else on another member;
//! - `lagged` resumes at the revision it names;
//! - `compacted` (the replica's history starts later, e.g. it installed a checkpoint) tries
//!   the other members from the same revision, and when every member says so, reads the
//!   state and watches on from its revision (counted and reported: the events before it are
//!   then not all seen).
//!
//! Every key the test writes is under the watched prefix and every write changes one key, so
//! each revision is exactly one event. At the end ([`check`]), each watcher's events run
//! through consecutive revisions from its start (1, or one past a state it read) to the
//! final revision, without gap or duplicate; all watchers agree on every revision; each
//! acknowledged write is the event at the revision it was answered with; an event's create
//! revision and version follow from the key's previous state; and replaying what a watcher
//! saw (from an empty store, or from the state it read) gives the final state.

use crate::nemesis::Pid;
use omnikv_common::keys::encode_key;
use omnikv_common::kv::{RangeResult, WatchEvent};
use omnikv_common::Credentials;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The members' client endpoints by pid, with a version that changes with them.
pub type Endpoints = RwLock<(u64, Vec<(Pid, String)>)>;

/// Progress events of an idle stream come this often...
const PROGRESS_MS: u64 = 200;
/// ...so a stream silent for this long is stuck (a paused replica): reopen it.
const SILENCE: Duration = Duration::from_secs(3);

/// A key's state: value and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// One change: the key's state after it (`None`: deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub key: Vec<u8>,
    pub after: Option<Kv>,
}

/// An acknowledged write that changed a key, at the revision it was answered with.
#[derive(Clone, Debug)]
pub struct Change {
    pub revision: u64,
    pub key: Vec<u8>,
    /// The value put; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

impl Change {
    pub fn put(revision: u64, key: &[u8], value: &[u8]) -> Change {
        Change {
            revision,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        }
    }

    pub fn delete(revision: u64, key: &[u8]) -> Change {
        Change {
            revision,
            key: key.to_vec(),
            value: None,
        }
    }
}

/// Events over consecutive revisions, from an empty store (`base: None`, revision 1 on) or
/// from a state read at a revision.
#[derive(Default)]
pub struct Segment {
    pub base: Option<(u64, BTreeMap<Vec<u8>, Kv>)>,
    pub events: Vec<Event>,
}

/// What one watcher saw.
#[derive(Default)]
pub struct Seen {
    pub home: Pid,
    pub segments: Vec<Segment>,
    /// Every revision up to this one was sent to it (events and progress).
    pub through: u64,
    pub streams: u64,
    /// Streams opened on a replica other than its own.
    pub moved: u64,
    pub compacted: u64,
    pub lagged: u64,
    /// States read because every member answered `compacted`.
    pub state_reads: u64,
    /// Lines that were not watch events.
    pub garbage: Vec<String>,
}

/// The watchers of a run.
pub struct Watchers {
    seen: Vec<Arc<Mutex<Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    prefix: Vec<u8>,
}

impl Watchers {
    /// A watcher per pid in `homes`, on keys starting with `prefix`, from revision 1.
    pub fn start(
        homes: &[Pid],
        prefix: &[u8],
        endpoints: Arc<Endpoints>,
        credentials: &Credentials,
    ) -> Watchers {
        let seen: Vec<Arc<Mutex<Seen>>> = homes
            .iter()
            .map(|&home| {
                Arc::new(Mutex::new(Seen {
                    home,
                    segments: vec![Segment::default()],
                    ..Seen::default()
                }))
            })
            .collect();
        let tasks = seen
            .iter()
            .map(|s| {
                let http = http_client(credentials);
                tokio::spawn(watch(s.clone(), prefix.to_vec(), endpoints.clone(), http))
            })
            .collect();
        Watchers {
            seen,
            tasks,
            prefix: prefix.to_vec(),
        }
    }

    /// Waits until every watcher has been sent every revision up to `revision` (or `within`
    /// passes), then stops them. Returns how long it waited.
    pub async fn finish(&mut self, revision: u64, within: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < within
            && !self
                .seen
                .iter()
                .all(|s| s.lock().unwrap().through >= revision)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        started.elapsed()
    }
}

/// `endpoint` as a URL (the harness names replicas `host:port`).
fn base_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Reads the state of every key under `prefix` (linearizable, all pages): its revision and
/// the keys.
pub async fn read_state(
    http: &reqwest::Client,
    endpoint: &str,
    prefix: &[u8],
) -> Result<(u64, BTreeMap<Vec<u8>, Kv>), String> {
    let mut kvs = BTreeMap::new();
    let mut next: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/kv?prefix={}", base_url(endpoint), encode_key(prefix));
        if let Some(c) = &next {
            let _ = write!(url, "&continue={c}");
        }
        let resp = http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let page: RangeResult = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
        for kv in page.kvs {
            let kv_state = Kv {
                value: kv.value.map(|v| v.0).unwrap_or_default(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            };
            kvs.insert(kv.key.0, kv_state);
        }
        if !page.more {
            // Pages are read at their own revisions: one page is one snapshot.
            if next.is_some() {
                return Err("the state spans several pages: not one snapshot".into());
            }
            return Ok((page.revision, kvs));
        }
        next = page.r#continue;
    }
}

/// How one stream ended.
enum End {
    /// Broken, silent, or closed without a reason: reopen from `next`.
    Closed,
    /// `compacted`: the replica cannot serve from `next`.
    Compacted,
}

/// One watcher, until aborted.
/// An HTTP client for the watchers and state reads, with the cluster's credentials.
pub fn http_client(credentials: &Credentials) -> reqwest::Client {
    credentials
        .apply(reqwest::Client::builder().connect_timeout(Duration::from_secs(1)))
        .unwrap()
        .build()
        .unwrap()
}

async fn watch(
    seen: Arc<Mutex<Seen>>,
    prefix: Vec<u8>,
    endpoints: Arc<Endpoints>,
    http: reqwest::Client,
) {
    let home = seen.lock().unwrap().home;
    let mut next = 1u64;
    // Members that answered `compacted` for `next`.
    let mut refused: BTreeSet<Pid> = BTreeSet::new();
    let mut turn = 0usize;
    loop {
        let members = endpoints.read().unwrap().1.clone();
        // Its own replica while that is a member, else the others in turn.
        let mut order: Vec<&(Pid, String)> = members.iter().filter(|(p, _)| *p == home).collect();
        let mut others: Vec<&(Pid, String)> = members.iter().filter(|(p, _)| *p != home).collect();
        if !others.is_empty() {
            let shift = turn % others.len();
            others.rotate_left(shift);
        }
        order.extend(others);
        let Some((pid, ep)) = order.into_iter().find(|(p, _)| !refused.contains(p)) else {
            // Every member's history starts after `next`: go on from the state now.
            let Some((_, ep)) = members.first() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            match read_state(&http, ep, &prefix).await {
                Ok((revision, kvs)) => {
                    let mut s = seen.lock().unwrap();
                    s.state_reads += 1;
                    s.segments.push(Segment {
                        base: Some((revision, kvs)),
                        events: Vec::new(),
                    });
                    s.through = s.through.max(revision);
                    next = revision + 1;
                    refused.clear();
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            continue;
        };
        let (pid, ep) = (*pid, ep.clone());
        {
            let mut s = seen.lock().unwrap();
            s.streams += 1;
            s.moved += u64::from(pid != home);
        }
        let before = next;
        match stream(&http, &ep, &prefix, &mut next, &seen).await {
            End::Compacted => {
                seen.lock().unwrap().compacted += 1;
                refused.insert(pid);
            }
            End::Closed => {
                if pid != home {
                    turn += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if next != before {
            refused.clear();
        }
    }
}

/// Reads one stream from `next` on, recording its events and moving `next` past them.
async fn stream(
    http: &reqwest::Client,
    endpoint: &str,
    prefix: &[u8],
    next: &mut u64,
    seen: &Mutex<Seen>,
) -> End {
    let url = format!(
        "{}/v1/watch?prefix={}&start_revision={next}&progress_ms={PROGRESS_MS}",
        base_url(endpoint),
        encode_key(prefix)
    );
    let mut resp = match tokio::time::timeout(SILENCE, http.get(&url).send()).await {
        Ok(Ok(r)) if r.status().is_success() => r,
        _ => return End::Closed,
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let event = match serde_json::from_slice::<WatchEvent>(&line) {
                Ok(e) => e,
                Err(e) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    seen.lock().unwrap().garbage.push(format!("{e}: {text}"));
                    return End::Closed;
                }
            };
            let mut s = seen.lock().unwrap();
            let change = match event {
                WatchEvent::Put {
                    key,
                    value,
                    revision,
                    create_revision,
                    version,
                    ..
                } => Event {
                    revision,
                    key: key.0,
                    after: Some(Kv {
                        value: value.0,
                        create_revision,
                        mod_revision: revision,
                        version,
                    }),
                },
                WatchEvent::Delete { key, revision, .. } => Event {
                    revision,
                    key: key.0,
                    after: None,
                },
                WatchEvent::Progress { revision } => {
                    s.through = s.through.max(revision);
                    *next = (*next).max(revision + 1);
                    continue;
                }
                WatchEvent::Compacted { .. } => return End::Compacted,
                WatchEvent::Lagged {
                    resume_revision, ..
                } => {
                    s.lagged += 1;
                    *next = resume_revision;
                    return End::Closed;
                }
            };
            s.through = s.through.max(change.revision);
            *next = (*next).max(change.revision + 1);
            s.segments
                .last_mut()
                .expect("a segment")
                .events
                .push(change);
        }
        match tokio::time::timeout(SILENCE, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            _ => return End::Closed,
        }
    }
}

/// Counters over all watchers, for the report.
#[derive(Debug, Default)]
pub struct Summary {
    pub watchers: usize,
    pub events: u64,
    pub revisions: u64,
    pub streams: u64,
    pub moved: u64,
    pub compacted: u64,
    pub lagged: u64,
    pub state_reads: u64,
    pub changes_checked: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} watchers: {} events over {} revisions in order without gap, {} acknowledged \
             writes matched; {} streams ({} on another replica), {} compacted, {} lagged, {} \
             state reads",
            self.watchers,
            self.events,
            self.revisions,
            self.changes_checked,
            self.streams,
            self.moved,
            self.compacted,
            self.lagged,
            self.state_reads
        )
    }
}

/// The end-of-run checks (module docs) against the final `state` at `revision` and the
/// acknowledged `changes`.
pub fn check(
    w: &Watchers,
    revision: u64,
    state: &BTreeMap<Vec<u8>, Kv>,
    changes: &[Change],
) -> Result<Summary, String> {
    let mut sum = Summary {
        watchers: w.seen.len(),
        ..Summary::default()
    };
    // Revision -> its event, as the first watcher to see it did.
    let mut agreed: BTreeMap<u64, (Pid, Event)> = BTreeMap::new();
    for s in &w.seen {
        let s = s.lock().unwrap();
        let who = format!("watcher of replica {}", s.home);
        if let Some(g) = s.garbage.first() {
            return Err(format!("{who}: a line that is no watch event: {g}"));
        }
        sum.streams += s.streams;
        sum.moved += s.moved;
        sum.compacted += s.compacted;
        sum.lagged += s.lagged;
        sum.state_reads += s.state_reads;
        let mut replayed = BTreeMap::new();
        for seg in &s.segments {
            let (start, mut keys) = match &seg.base {
                Some((r, kvs)) => (r + 1, kvs.clone()),
                None => (1, BTreeMap::new()),
            };
            let mut expect = start;
            for e in &seg.events {
                sum.events += 1;
                if e.revision != expect {
                    let what = if e.revision < expect {
                        "a duplicate or out of order"
                    } else {
                        "a gap"
                    };
                    return Err(format!(
                        "{who}: revision {} where {expect} was due ({what}); the prefix covers \
                         every write and each write is one revision",
                        e.revision
                    ));
                }
                expect += 1;
                if !e.key.starts_with(&w.prefix) {
                    return Err(format!("{who}: an event outside the prefix: {e:?}"));
                }
                match agreed.get(&e.revision) {
                    Some((p, other)) if other != e => {
                        return Err(format!(
                            "{who}: revision {} is {e:?}, the watcher of replica {p} saw {other:?}",
                            e.revision
                        ))
                    }
                    Some(_) => {}
                    None => {
                        agreed.insert(e.revision, (s.home, e.clone()));
                    }
                }
                let before = keys.get(&e.key);
                if let Some(after) = &e.after {
                    let want = match before {
                        Some(b) => (b.create_revision, b.version + 1),
                        None => (e.revision, 1),
                    };
                    if (after.create_revision, after.version) != want {
                        return Err(format!(
                            "{who}: {e:?} after {before:?}: (create revision, version) should \
                             be {want:?}"
                        ));
                    }
                }
                match &e.after {
                    Some(kv) => keys.insert(e.key.clone(), kv.clone()),
                    None => keys.remove(&e.key),
                };
            }
            replayed = keys;
            if expect - 1 > s.through {
                return Err(format!(
                    "{who}: events up to {} but through {}",
                    expect - 1,
                    s.through
                ));
            }
            if seg.base.is_none() || !seg.events.is_empty() {
                sum.revisions += expect - start;
            }
        }
        let last = s.segments.last().expect("a segment");
        let end = last
            .events
            .last()
            .map_or_else(|| last.base.as_ref().map_or(0, |(r, _)| *r), |e| e.revision);
        if end != revision {
            return Err(format!(
                "{who}: saw revisions up to {end}, the final revision is {revision}"
            ));
        }
        if &replayed != state {
            let differ: Vec<String> = state
                .keys()
                .chain(replayed.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| state.get(*k) != replayed.get(*k))
                .take(5)
                .map(|k| {
                    format!(
                        "{}: final {:?}, replayed {:?}",
                        String::from_utf8_lossy(k),
                        state.get(k),
                        replayed.get(k)
                    )
                })
                .collect();
            return Err(format!(
                "{who}: replaying its events does not give the final state:\n  {}",
                differ.join("\n  ")
            ));
        }
    }
    for c in changes {
        let Some((p, e)) = agreed.get(&c.revision) else {
            // No watcher saw it (each read a state past it): nothing to compare with.
            continue;
        };
        sum.changes_checked += 1;
        let ok = e.key == c.key && e.after.as_ref().map(|kv| &kv.value) == c.value.as_ref();
        if !ok {
            return Err(format!(
                "an acknowledged write ({}={:?} at revision {}) is not the event the watcher of \
                 replica {p} saw there: {e:?}",
                String::from_utf8_lossy(&c.key),
                c.value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                c.revision
            ));
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Cluster, Opts};

    fn put(revision: u64, key: &str, value: &str, create_revision: u64, version: u64) -> Event {
        Event {
            revision,
            key: key.as_bytes().to_vec(),
            after: Some(Kv {
                value: value.as_bytes().to_vec(),
                create_revision,
                mod_revision: revision,
                version,
            }),
        }
    }

    fn del(revision: u64, key: &str) -> Event {
        Event {
            revision,
            key: key.as_bytes().to_vec(),
            after: None,
        }
    }

    /// Watchers that saw `segments` each (no tasks).
    fn watchers(seen: Vec<Vec<Segment>>) -> Watchers {
        Watchers {
            seen: seen
                .into_iter()
                .enumerate()
                .map(|(i, segments)| {
                    Arc::new(Mutex::new(Seen {
                        home: i as u64 + 1,
                        through: 3,
                        segments,
                        ..Seen::default()
                    }))
                })
                .collect(),
            tasks: Vec::new(),
            prefix: b"p/".to_vec(),
        }
    }

    fn from_start(events: Vec<Event>) -> Segment {
        Segment { base: None, events }
    }

    /// p/a=2 (created at 1, version 2), p/b deleted: the state after `good()`.
    fn final_state() -> BTreeMap<Vec<u8>, Kv> {
        let mut m = BTreeMap::new();
        m.insert(
            b"p/a".to_vec(),
            Kv {
                value: b"2".to_vec(),
                create_revision: 1,
                mod_revision: 3,
                version: 2,
            },
        );
        m
    }

    fn good() -> Vec<Event> {
        vec![
            put(1, "p/a", "1", 1, 1),
            put(2, "p/b", "x", 2, 1),
            put(3, "p/a", "2", 1, 2),
        ]
    }

    fn changes() -> Vec<Change> {
        vec![Change::put(1, b"p/a", b"1"), Change::put(3, b"p/a", b"2")]
    }

    #[test]
    fn watch_check_accepts_complete_agreeing_streams_and_catches_each_defect() {
        let ok = watchers(vec![vec![from_start(good())], vec![from_start(good())]]);
        let mut state = final_state();
        state.insert(
            b"p/b".to_vec(),
            Kv {
                value: b"x".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
            },
        );
        let sum = check(&ok, 3, &state, &changes()).expect("complete");
        assert_eq!((sum.events, sum.changes_checked), (6, 2));
        // A watcher that read the state at revision 2 and saw revision 3.
        let mut base = BTreeMap::new();
        base.insert(
            b"p/a".to_vec(),
            Kv {
                value: b"1".to_vec(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            },
        );
        base.insert(b"p/b".to_vec(), state[b"p/b".as_slice()].clone());
        let resumed = watchers(vec![
            vec![from_start(good())],
            vec![
                from_start(good()[..1].to_vec()),
                Segment {
                    base: Some((2, base)),
                    events: good()[2..].to_vec(),
                },
            ],
        ]);
        assert!(check(&resumed, 3, &state, &changes()).is_ok());

        let fails = |seen: Vec<Vec<Segment>>, state: &BTreeMap<Vec<u8>, Kv>, want: &str| {
            let e = check(&watchers(seen), 3, state, &changes()).expect_err(want);
            assert!(e.contains(want), "{e}");
        };
        let mut gap = good();
        gap.remove(1);
        fails(vec![vec![from_start(gap)]], &state, "a gap");
        let mut dup = good();
        dup.insert(1, dup[0].clone());
        fails(vec![vec![from_start(dup)]], &state, "a duplicate");
        let mut other = good();
        other[1] = put(2, "p/b", "y", 2, 1);
        fails(
            vec![vec![from_start(good())], vec![from_start(other)]],
            &state,
            "saw",
        );
        let mut short = good();
        short.pop();
        fails(vec![vec![from_start(short)]], &state, "the final revision");
        fails(
            vec![vec![from_start(good())]],
            &final_state(),
            "final state",
        );
        let mut counters = good();
        counters[2] = put(3, "p/a", "2", 3, 1);
        fails(vec![vec![from_start(counters)]], &state, "version");
        let mut deleted = good();
        deleted[1] = del(2, "p/b");
        let e = check(
            &watchers(vec![vec![from_start(deleted)]]),
            3,
            &final_state(),
            &[Change::put(2, b"p/b", b"x")],
        )
        .expect_err("the acknowledged put at 2 is a delete there");
        assert!(e.contains("acknowledged write"), "{e}");
    }

    /// Every replica's history starts after the revision a watcher needs: it reads the state
    /// and goes on from there, and the end-of-run check holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_go_on_from_the_state_when_every_history_is_compacted() {
        let opts = Opts {
            extra_env: vec![("KVD_HISTORY_EVENTS".into(), "10".into())],
            ..Opts::default()
        };
        let c = Cluster::start(3, opts).await;
        c.wait_leader(Duration::from_secs(10)).await;
        let client = c.client(Duration::from_secs(5));
        let mut changes = Vec::new();
        for i in 0..40 {
            let key = format!("w/k{}", i % 7);
            let r = client.put(key.as_bytes(), b"v".to_vec()).await.unwrap();
            changes.push(Change::put(r.revision, key.as_bytes(), b"v"));
        }
        let endpoints: Vec<(Pid, String)> = (1..=3).map(|p| (p, c.endpoint(p))).collect();
        let mut w = Watchers::start(
            &[1, 2, 3],
            b"w/",
            Arc::new(RwLock::new((0, endpoints))),
            &c.credentials(),
        );
        for i in 0..5 {
            let key = format!("w/k{i}");
            let r = client.delete(key.as_bytes()).await.unwrap();
            changes.push(Change::delete(r.revision, key.as_bytes()));
        }
        let http = reqwest::Client::new();
        let (revision, state) = read_state(&http, &c.endpoint(1), b"w/").await.unwrap();
        w.finish(revision, Duration::from_secs(20)).await;
        let sum = check(&w, revision, &state, &changes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sum.state_reads, 3, "{sum}");
        assert!(
            sum.compacted >= 9,
            "each watcher tried every replica: {sum}"
        );
        assert_eq!(revision, 45);
    }
}
