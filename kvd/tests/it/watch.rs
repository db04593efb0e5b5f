//! Watch over HTTP on real replicas: events in revision order from history and live,
//! resumption after a restart, progress, `compacted`, `lagged` for a watcher that never
//! reads, the watcher cap, and bad parameters.

use crate::data_model::{self, base};
use crate::harness::*;
use omnikv_common::kv::WatchEvent;
use reqwest::StatusCode;
use std::time::Duration;

/// A watch stream read line by line.
struct Stream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(url: &str) -> Stream {
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        Stream {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event, or None when the stream ended; panics after `within`.
    async fn next(&mut self, within: Duration) -> Option<WatchEvent> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(within, self.resp.chunk())
                .await
                .expect("a watch event in time")
                .unwrap();
            self.buf.extend_from_slice(&chunk?);
        }
    }

    /// The next change (skipping progress events).
    async fn change(&mut self) -> WatchEvent {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(WatchEvent::Progress { .. }) => continue,
                Some(e) => return e,
                None => panic!("the stream ended"),
            }
        }
    }
}

fn describe(e: &WatchEvent) -> String {
    match e {
        WatchEvent::Put {
            key,
            value,
            revision,
            ..
        } => format!(
            "put {} {} @{revision}",
            String::from_utf8_lossy(&key.0),
            String::from_utf8_lossy(&value.0)
        ),
        WatchEvent::Delete { key, revision, .. } => {
            format!("delete {} @{revision}", String::from_utf8_lossy(&key.0))
        }
        other => format!("{other:?}"),
    }
}

/// Puts `v` under the percent-encoded key `k`; the write's revision.
async fn put(http: &reqwest::Client, ep: &str, k: &str, v: &str) -> u64 {
    data_model::put(http, ep, k, v, "").await.revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_change_in_order_and_resume_after_a_restart() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let ep = base(&c, leader);
    let before = put(&http, &ep, "cfg%2Fa", "0").await;
    // From now, on a follower: the stream starts after the acknowledged put.
    let follower = (1..=3).find(|&p| p != leader).unwrap();
    let mut live = Stream::open(&format!(
        "{}/v1/watch?prefix=cfg%2F&prev_value=true&progress_ms=200",
        base(&c, follower)
    ))
    .await;
    let r1 = put(&http, &ep, "cfg%2Fa", "1").await;
    put(&http, &ep, "other", "x").await;
    let r2 = put(&http, &ep, "cfg%2Fb", "2").await;
    let r = http
        .delete(format!("{ep}/v1/kv?prefix=cfg%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(describe(&live.change().await));
    }
    let r3 = r2 + 1;
    assert_eq!(
        got,
        [
            format!("put cfg/a 1 @{r1}"),
            format!("put cfg/b 2 @{r2}"),
            format!("delete cfg/a @{r3}"),
            format!("delete cfg/b @{r3}"),
        ],
        "the put before the watch began is not sent; the prefix delete is one revision"
    );
    assert!(before < r1);
    // Idle: progress events say the watcher is current.
    match live.next(Duration::from_secs(5)).await {
        Some(WatchEvent::Progress { revision }) => assert!(revision >= r3),
        other => panic!("expected progress, got {other:?}"),
    }

    // The follower restarts; a watch from the first revision resumes from its stored history.
    c.kill(follower);
    c.spawn(follower);
    c.wait_ready(follower, Duration::from_secs(20)).await;
    let mut again = Stream::open(&format!(
        "{}/v1/watch?prefix=cfg%2F&start_revision={r1}",
        base(&c, follower)
    ))
    .await;
    let mut resumed = Vec::new();
    for _ in 0..4 {
        resumed.push(describe(&again.change().await));
    }
    assert_eq!(resumed, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_revisions_are_compacted_and_a_watcher_that_never_reads_is_told_it_lagged() {
    let opts = Opts {
        extra_env: vec![
            ("KVD_HISTORY_EVENTS".into(), "20".into()),
            ("KVD_WATCH_BUFFER".into(), "4".into()),
            ("KVD_MAX_WATCHERS".into(), "2".into()),
        ],
        ..Opts::default()
    };
    let c = Cluster::start(1, opts).await;
    let http = reqwest::Client::new();
    let ep = base(&c, 1);
    for i in 0..50 {
        put(&http, &ep, &format!("k{i}"), "v").await;
    }
    let mut s = Stream::open(&format!("{ep}/v1/watch?prefix=k&start_revision=1")).await;
    assert_eq!(
        s.next(Duration::from_secs(5)).await,
        Some(WatchEvent::Progress { revision: 0 }),
        "a stream opens with the revision it starts after"
    );
    match s.next(Duration::from_secs(5)).await {
        Some(WatchEvent::Compacted {
            oldest_revision, ..
        }) => assert!((25..=50).contains(&oldest_revision), "{oldest_revision}"),
        other => panic!("expected compacted, got {other:?}"),
    }
    assert!(
        s.next(Duration::from_secs(5)).await.is_none(),
        "then it ends"
    );

    // A watcher that never reads: it holds a slot, its buffer fills, and when it reads at
    // last it gets what was buffered, then `lagged` with where to resume.
    let stalled = reqwest::get(format!("{ep}/v1/watch?prefix=big"))
        .await
        .unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    let first_rev = put(&http, &ep, "big0", "x").await;
    let value = "v".repeat(60_000);
    for i in 0..400 {
        put(&http, &ep, &format!("big{i}"), &value).await;
    }
    // The cap: the stalled stream and one more, no third.
    let second = reqwest::get(format!("{ep}/v1/watch?key=k1")).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let third = reqwest::get(format!("{ep}/v1/watch?key=k1")).await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(second);
    let mut stalled = Stream {
        resp: stalled,
        buf: Vec::new(),
    };
    let mut last = None;
    let mut n = 0;
    loop {
        match stalled.next(Duration::from_secs(10)).await {
            Some(WatchEvent::Put { revision, .. }) => {
                assert!(last.is_none_or(|l| revision == l + 1), "in order, no gap");
                last = Some(revision);
                n += 1;
            }
            Some(WatchEvent::Lagged {
                resume_revision, ..
            }) => {
                let expected = last.map_or(first_rev, |l| l + 1);
                assert_eq!(resume_revision, expected);
                break;
            }
            // The opening line names where the stream starts; its 10 s timer may fire while it
            // sits blocked on the full socket (a slow run): a progress note promises only what
            // was already sent. Not after every put was delivered: it never lagged then.
            Some(WatchEvent::Progress { revision }) if n < 401 => {
                assert_eq!(
                    revision,
                    last.unwrap_or(first_rev - 1),
                    "progress at what was sent"
                );
            }
            other => panic!("expected puts then lagged, got {other:?} after {n} puts"),
        }
    }
    assert!(n < 401, "it lagged before the end: {n} events");
    assert!(stalled.next(Duration::from_secs(5)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_parameters_are_refused() {
    let c = Cluster::start(1, Opts::default()).await;
    let ep = base(&c, 1);
    for q in [
        "",
        "key=",
        "key=a&prefix=b",
        "prefix=a&start_revision=0",
        "prefix=a&start_revision=x",
        "prefix=a&progress_ms=5",
        "prefix=a&prev_value=perhaps",
        "prefix=a&nope=1",
    ] {
        let r = reqwest::get(format!("{ep}/v1/watch?{q}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "?{q}");
    }
}
