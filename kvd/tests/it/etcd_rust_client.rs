//! etcd's Rust client library (the `etcd-client` crate, written against etcd, not us) driven
//! against kvd's etcd API: KV (put with prev_kv, prefix get, limit, delete with prev_kv, get
//! at a past revision), Txn (compares on value, version, create and mod revision and lease;
//! both branches; a nested transaction), Watch (a prefix watcher with prev_kv seeing each
//! change once, in order; a watcher from a past revision), Lease (grant, attached keys,
//! keep-alive stream, time-to-live, revoke) and Lock (the Lock service: a second holder waits
//! for Unlock, a third for the holder's lease to end). Each
//! scenario runs against a real etcd 3.4 first, so what it asserts is etcd's behaviour, then
//! against three kvd replicas through all their endpoints.

use crate::etcd_api::{wait_healthy, Etcd};
use crate::harness::{Cluster, Opts};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseTimeToLiveOptions, LockOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use std::time::Duration;
use tokio::time::timeout;

/// Longest any one step may take (elections included) before the scenario fails.
const STEP: Duration = Duration::from_secs(10);

async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(STEP)
        .with_connect_timeout(STEP);
    Client::connect(endpoints, Some(options)).await.unwrap()
}

/// A 3-replica cluster serving etcd's API, and a real etcd beside it; their endpoints.
async fn both() -> (Cluster, Etcd, Vec<String>) {
    let opts = Opts {
        etcd_api: true,
        ..Opts::default()
    };
    let c = Cluster::start(3, opts).await;
    let etcd = Etcd::start(c.dir.path());
    let ours: Vec<String> = (1..=3).map(|p| c.etcd_endpoint(p)).collect();
    for e in &ours {
        wait_healthy(e, Duration::from_secs(20));
    }
    (c, etcd, ours)
}

/// The next answer of a watch stream that carries events (creation and progress answers are
/// skipped): `(type, key, value, mod revision, previous value)` of each.
async fn next_events(
    stream: &mut WatchStream,
) -> Vec<(EventType, String, String, i64, Option<String>)> {
    loop {
        let answer = timeout(STEP, stream.message())
            .await
            .expect("a watch answer in time")
            .unwrap()
            .expect("the watch stream open");
        assert!(!answer.canceled(), "canceled: {}", answer.cancel_reason());
        if answer.events().is_empty() {
            continue;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        return answer
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().unwrap();
                (
                    e.event_type(),
                    text(kv.key()),
                    text(kv.value()),
                    kv.mod_revision(),
                    e.prev_kv().map(|p| text(p.value())),
                )
            })
            .collect();
    }
}

/// A key-value as `(key, value, create revision, mod revision, version)`.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// KV, Txn and Watch; asserts etcd's behaviour (revisions relative to what was answered).
async fn kv_txn_watch(endpoints: &[String]) {
    let client = connect(endpoints).await;
    let (mut kv, mut watch) = (client.kv_client(), client.watch_client());
    let first = kv.put("app/a", "1", None).await.unwrap();
    let r1 = first.header().unwrap().revision();
    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let mut watcher = watch.watch("app/", Some(opts)).await.unwrap();
    let created = timeout(STEP, watcher.message()).await.unwrap().unwrap();
    assert!(created.unwrap().created());

    kv.put("app/b", "2", None).await.unwrap();
    let again = kv
        .put("app/a", "10", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let r3 = again.header().unwrap().revision();
    assert_eq!(r3, r1 + 2);
    assert_eq!(again.prev_key().unwrap().value(), b"1");

    let got = kv
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.count(), 2);
    let a = &got.kvs()[0];
    assert_eq!(
        (
            a.key(),
            a.value(),
            a.version(),
            a.create_revision(),
            a.mod_revision()
        ),
        (&b"app/a"[..], &b"10"[..], 2, r1, r3)
    );
    let page = kv
        .get("app/", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .unwrap();
    assert!(page.more() && page.kvs().len() == 1 && page.count() == 2);

    // Every compare holds: the success branch runs.
    let txn = Txn::new()
        .when([
            Compare::value("app/a", CompareOp::Equal, "10"),
            Compare::version("app/b", CompareOp::Equal, 1),
            Compare::mod_revision("app/a", CompareOp::Equal, r3),
            Compare::create_revision("app/b", CompareOp::Greater, 0),
        ])
        .and_then([TxnOp::put("app/c", "3", None), TxnOp::get("app/a", None)])
        .or_else([TxnOp::put("app/f", "no", None)]);
    let done = kv.txn(txn).await.unwrap();
    assert!(done.succeeded());
    match &done.op_responses()[..] {
        [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => {
            assert_eq!(g.kvs()[0].value(), b"10");
        }
        other => panic!("success branch answers: {other:?}"),
    }
    // One fails: the failure branch runs; a value compare on a missing key fails.
    for compare in [
        Compare::value("app/a", CompareOp::Equal, "nope"),
        Compare::value("missing", CompareOp::NotEqual, "x"),
    ] {
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put("app/never", "1", None)])
            .or_else([TxnOp::get("app/b", None)]);
        let done = kv.txn(txn).await.unwrap();
        assert!(!done.succeeded());
        match &done.op_responses()[..] {
            [TxnOpResponse::Get(g)] => assert_eq!(g.kvs()[0].value(), b"2"),
            other => panic!("failure branch answers: {other:?}"),
        }
    }

    let deleted = kv
        .delete(
            "app/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 3);
    let r5 = deleted.header().unwrap().revision();
    assert_eq!(r5, r3 + 2);

    // The prefix as it stood before the delete, and before the second put of app/a.
    let kvs = |r: &etcd_client::GetResponse| -> Vec<Row> {
        r.kvs()
            .iter()
            .map(|kv| {
                let (k, v) = (kv.key().to_vec(), kv.value().to_vec());
                (k, v, kv.create_revision(), kv.mod_revision(), kv.version())
            })
            .collect()
    };
    let at = |rev| Some(GetOptions::new().with_prefix().with_revision(rev));
    let then = kv.get("app/", at(r3)).await.unwrap();
    assert_eq!(then.header().unwrap().revision(), r5);
    let (a, b) = (b"app/a".to_vec(), b"app/b".to_vec());
    assert_eq!(
        kvs(&then),
        vec![
            (a.clone(), b"10".to_vec(), r1, r3, 2),
            (b.clone(), b"2".to_vec(), r1 + 1, r1 + 1, 1)
        ]
    );
    let then = kv.get("app/", at(r1 + 1)).await.unwrap();
    assert_eq!(
        kvs(&then),
        vec![
            (a, b"1".to_vec(), r1, r1, 1),
            (b, b"2".to_vec(), r1 + 1, r1 + 1, 1)
        ]
    );
    let limited = at(r3).map(|o| o.with_limit(1).with_keys_only());
    let then = kv.get("app/", limited).await.unwrap();
    assert!(then.more() && then.count() == 2 && then.kvs()[0].value().is_empty());

    // The watcher saw each change once, in order, with the previous values.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.extend(next_events(&mut watcher).await);
    }
    let s = |v: &str| v.to_string();
    use EventType::{Delete, Put};
    assert_eq!(
        seen,
        vec![
            (Put, s("app/b"), s("2"), r1 + 1, None),
            (Put, s("app/a"), s("10"), r3, Some(s("1"))),
            (Put, s("app/c"), s("3"), r3 + 1, None),
            (Delete, s("app/a"), s(""), r5, Some(s("10"))),
            (Delete, s("app/b"), s(""), r5, Some(s("2"))),
            (Delete, s("app/c"), s(""), r5, Some(s("3"))),
        ]
    );
    // A second watcher from the first put's revision replays the history, then goes live.
    let opts = WatchOptions::new().with_prefix().with_start_revision(r1);
    let mut replay = watch.watch("app/", Some(opts)).await.unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 7 {
        replayed.extend(next_events(&mut replay).await);
    }
    let keys: Vec<_> = replayed.iter().map(|e| (e.0, e.1.clone(), e.3)).collect();
    assert_eq!(keys[0], (Put, s("app/a"), r1));
    assert_eq!(keys[6], (Delete, s("app/c"), r5));
    let live = kv.put("app/z", "live", None).await.unwrap();
    let next = next_events(&mut replay).await;
    assert_eq!(next[0].1, "app/z");
    assert_eq!(next[0].3, live.header().unwrap().revision());

    // Errors clients branch on: a lease that does not exist, a future revision.
    let e = kv
        .put("app/l", "v", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::NotFound
                && s.message() == "etcdserver: requested lease not found"),
        "{e:?}"
    );
    let e = kv
        .get("app/", Some(GetOptions::new().with_revision(r5 + 100)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::OutOfRange
                && s.message() == "etcdserver: mvcc: required revision is a future revision"),
        "{e:?}"
    );
}

/// `lock("jobs")` with `lease` on a task of its own.
fn lock_in_background(
    client: &Client,
    lease: i64,
) -> tokio::task::JoinHandle<Result<etcd_client::LockResponse, etcd_client::Error>> {
    let mut client = client.clone();
    tokio::spawn(async move {
        client
            .lock("jobs", Some(LockOptions::new().with_lease(lease)))
            .await
    })
}

/// Lease and Lock; asserts etcd's behaviour.
async fn lease_and_lock(endpoints: &[String]) {
    let mut client = connect(endpoints).await;
    let lease = client.lease_grant(30, None).await.unwrap();
    let id = lease.id();
    assert_eq!(lease.ttl(), 30);
    let attached = PutOptions::new().with_lease(id);
    client.put("lk", "lv", Some(attached)).await.unwrap();
    // Compares on a key's lease, and a nested transaction, whose compares are decided before
    // the outer writes while its reads see them.
    let inner = Txn::new()
        .when([Compare::value("lk", CompareOp::Equal, "lv")])
        .and_then([TxnOp::get("lk", None), TxnOp::put("nested", "in", None)])
        .or_else([TxnOp::put("nested", "out", None)]);
    let outer = Txn::new()
        .when([
            Compare::lease("lk", CompareOp::Equal, id),
            Compare::lease("nolease", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("lk", "lv2", Some(PutOptions::new().with_lease(id))),
            TxnOp::txn(inner),
        ]);
    let done = client.txn(outer).await.unwrap();
    assert!(done.succeeded());
    match &done.op_responses()[..] {
        [TxnOpResponse::Put(_), TxnOpResponse::Txn(t)] => {
            assert!(
                t.succeeded(),
                "decided against lk = lv, before the outer put"
            );
            match &t.op_responses()[..] {
                [TxnOpResponse::Get(g), TxnOpResponse::Put(_)] => {
                    assert_eq!(
                        g.kvs()[0].value(),
                        b"lv2",
                        "the read runs after the outer put"
                    )
                }
                other => panic!("nested branch answers: {other:?}"),
            }
        }
        other => panic!("outer branch answers: {other:?}"),
    }
    assert_eq!(
        client.get("nested", None).await.unwrap().kvs()[0].value(),
        b"in"
    );
    let wrong = Txn::new()
        .when([Compare::lease("lk", CompareOp::NotEqual, id)])
        .and_then([TxnOp::put("never", "1", None)]);
    assert!(!client.txn(wrong).await.unwrap().succeeded());
    let ttl = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert!((1..=30).contains(&ttl.ttl()), "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"lk".to_vec()]);
    let (mut keeper, mut answers) = client.lease_keep_alive(id).await.unwrap();
    for _ in 0..2 {
        keeper.keep_alive().await.unwrap();
        let answer = timeout(STEP, answers.message()).await.unwrap().unwrap();
        let answer = answer.expect("a keep-alive answer");
        assert_eq!((answer.id(), answer.ttl()), (id, 30));
    }
    client.lease_revoke(id).await.unwrap();
    assert!(client.get("lk", None).await.unwrap().kvs().is_empty());
    let gone = client.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    // A keep-alive of a lease that no longer exists answers TTL 0.
    keeper.keep_alive().await.unwrap();
    let answer = timeout(STEP, answers.message()).await.unwrap().unwrap();
    assert_eq!(answer.expect("a keep-alive answer").ttl(), 0);

    // Lock: the first holder's key is `<name>/<lease hex>`; a second waits for Unlock.
    let l1 = client.lease_grant(30, None).await.unwrap().id();
    let l2 = client.lease_grant(30, None).await.unwrap().id();
    let l3 = client.lease_grant(30, None).await.unwrap().id();
    let held = client
        .lock("jobs", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    assert_eq!(held.key(), format!("jobs/{l1:x}").as_bytes());
    let second = lock_in_background(&client, l2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.is_finished(), "the lock was handed out twice");
    client.unlock(held.key()).await.unwrap();
    let second = timeout(STEP, second).await.unwrap().unwrap().unwrap();
    assert_eq!(second.key(), format!("jobs/{l2:x}").as_bytes());
    // A third waits for the second, whose lease then ends: that frees the lock too.
    let third = lock_in_background(&client, l3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "the lock was handed out twice");
    client.lease_revoke(l2).await.unwrap();
    let third = timeout(STEP, third).await.unwrap().unwrap().unwrap();
    assert_eq!(third.key(), format!("jobs/{l3:x}").as_bytes());
    client.unlock(third.key()).await.unwrap();
    // Locking with a lease that does not exist is refused as etcd refuses it (its v3lock
    // passes the inner error on: UNKNOWN, with the message clients compare).
    let e = client
        .lock("jobs", Some(LockOptions::new().with_lease(l2)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::Unknown
                && s.message() == "etcdserver: requested lease not found"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_kv_txn_and_watch_behave_as_against_etcd() {
    let (_c, etcd, ours) = both().await;
    kv_txn_watch(std::slice::from_ref(&etcd.endpoint)).await;
    kv_txn_watch(&ours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_lease_and_lock_behave_as_against_etcd() {
    let (_c, etcd, ours) = both().await;
    lease_and_lock(std::slice::from_ref(&etcd.endpoint)).await;
    lease_and_lock(&ours).await;
}
