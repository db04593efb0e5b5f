//! The data model over HTTP on a real three-replica cluster: revisions, range reads with
//! paging, compare-and-swap transactions, prefix deletes, and bad input to all of them.

use crate::harness::*;
use omnikv_common::kv::{
    Bytes64, Compare, CompareOp, CompareTarget, DeleteRangeResult, GetOp, PutOp, RangeResult,
    RangeSpec, TxnOp, TxnOpResult, TxnRequest, TxnResult,
};
use omnikv_common::WriteResult;
use reqwest::StatusCode;
use std::time::Duration;

fn put_op(k: &str, v: &str) -> TxnOp {
    TxnOp::Put(PutOp {
        key: k.into(),
        value: v.into(),
        prev: false,
        lease: 0,
    })
}

fn get_op(k: &str) -> TxnOp {
    TxnOp::Get(GetOp {
        range: RangeSpec {
            key: k.into(),
            end: None,
            prefix: false,
        },
        limit: None,
        keys_only: false,
        count_only: false,
    })
}

/// The HTTP base URL of replica `pid`.
pub fn base(c: &Cluster, pid: u64) -> String {
    format!("http://{}", c.endpoint(pid))
}

/// The `connection` header of an answer to an oversized body.
async fn r_close(http: &reqwest::Client, ep: &str) -> String {
    let r = http
        .put(format!("{ep}/v1/kv/big"))
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    r.headers()["connection"].to_str().unwrap().to_string()
}

async fn txn(http: &reqwest::Client, ep: &str, t: &TxnRequest) -> TxnResult {
    let r = http
        .post(format!("{ep}/v1/txn"))
        .json(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Puts `v` under the percent-encoded key `k` with query `q` (`""` or `?prev=true`).
pub async fn put(http: &reqwest::Client, ep: &str, k: &str, v: &str, q: &str) -> WriteResult {
    let r = http
        .put(format!("{ep}/v1/kv/{k}{q}"))
        .body(v.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn range(http: &reqwest::Client, ep: &str, q: &str) -> RangeResult {
    let r = http.get(format!("{ep}/v1/kv?{q}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{q}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_ranges_transactions_and_prefix_deletes() {
    let c = Cluster::start(3, Opts::default()).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    let ep = base(&c, 1);

    // Revisions: a put of a new key did not find it; the next one did, one revision later.
    let a1 = put(&http, &ep, "a", "1", "").await;
    assert!(!a1.existed);
    let a2 = put(&http, &ep, "a", "2", "?prev=true").await;
    assert!(a2.existed);
    assert_eq!(a2.revision, a1.revision + 1);
    let prev = a2.prev.expect("asked for the previous key");
    assert_eq!(prev.value, Some(Bytes64::from("1")));
    assert_eq!((prev.mod_revision, prev.version), (a1.revision, 1));
    let r = http.get(format!("{ep}/v1/kv/a")).send().await.unwrap();
    let header = |n: &str| r.headers()[n].to_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(header("omnikv-create-revision"), a1.revision);
    assert_eq!(header("omnikv-mod-revision"), a2.revision);
    assert_eq!(header("omnikv-version"), 2);
    assert!(header("omnikv-revision") >= a2.revision);

    // Ranges: 25 keys under app/, read in pages of 10 through the continuation token.
    for i in 0..25 {
        put(&http, &ep, &format!("app%2F{i:02}"), "v", "").await;
    }
    put(&http, &ep, "apq", "outside", "").await;
    let mut keys = Vec::new();
    let mut q = "prefix=app%2F&limit=10".to_string();
    loop {
        let page = range(&http, &base(&c, 2), &q).await;
        assert_eq!(page.count, 25 - keys.len() as u64);
        keys.extend(page.kvs.iter().map(|kv| kv.key.0.clone()));
        match page.r#continue {
            Some(token) => q = format!("prefix=app%2F&limit=10&continue={token}"),
            None => break,
        }
    }
    let want: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("app/{i:02}").into_bytes())
        .collect();
    assert_eq!(keys, want);
    let page = range(&http, &ep, "start=app%2F20&end=app%2F22&keys_only=true").await;
    assert_eq!(page.kvs.len(), 2);
    assert!(page.kvs.iter().all(|kv| kv.value.is_none()));
    let page = range(
        &http,
        &base(&c, 3),
        "prefix=&count_only=true&consistency=local",
    )
    .await;
    assert!(page.kvs.is_empty());
    assert!(page.count >= 26);

    // Compare-and-swap: create-if-absent wins once; the loser gets the failure branch.
    let absent = Compare {
        key: "lock".into(),
        op: CompareOp::Equal,
        target: CompareTarget::Exists(false),
    };
    let take = |who: &str| TxnRequest {
        compare: vec![absent.clone()],
        success: vec![put_op("lock", who)],
        failure: vec![get_op("lock")],
    };
    let won = txn(&http, &ep, &take("me")).await;
    assert!(won.succeeded);
    let lost = txn(&http, &base(&c, 2), &take("you")).await;
    assert!(!lost.succeeded);
    assert_eq!(
        lost.revision, won.revision,
        "a failed compare writes nothing"
    );
    let [TxnOpResult::Get(g)] = lost.responses.as_slice() else {
        panic!("{lost:?}")
    };
    assert_eq!(g.kvs[0].value, Some(Bytes64::from("me")));
    assert_eq!(g.kvs[0].mod_revision, won.revision);
    // Swap on the mod revision just read.
    let swap = TxnRequest {
        compare: vec![Compare {
            key: "lock".into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(won.revision),
        }],
        success: vec![put_op("lock", "next")],
        failure: vec![],
    };
    let swapped = txn(&http, &ep, &swap).await;
    assert!(swapped.succeeded);
    assert_eq!(swapped.revision, won.revision + 1);
    assert!(
        !txn(&http, &ep, &swap).await.succeeded,
        "the old revision is gone"
    );

    // A prefix delete is one revision, whatever it removes.
    let r = http
        .delete(format!("{ep}/v1/kv?prefix=app%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d: DeleteRangeResult = r.json().await.unwrap();
    assert_eq!((d.deleted, d.revision), (25, swapped.revision + 1));
    assert_eq!(range(&http, &ep, "prefix=app%2F").await.count, 0);

    // Every replica ends at the same revision.
    c.wait_converged(Duration::from_secs(10)).await;
    for pid in 1..=3 {
        assert_eq!(c.status(pid).await.unwrap().revision, d.revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ranges_and_oversized_transactions_are_refused() {
    let c = Cluster::start(1, Opts::default()).await;
    let http = reqwest::Client::new();
    let ep = base(&c, 1);
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_string())
    };
    for q in [
        "",
        "prefix=a&start=b",
        "end=b",
        "prefix=a&limit=0",
        "prefix=a&limit=10001",
        "prefix=a&limit=x",
        "prefix=a&continue=zz",
        "prefix=a&keys_only=maybe",
        "prefix=%zz",
        "prefix=a&prefix=b",
        "prefix=a&bogus=1",
        "prefix=a&consistency=eventual",
    ] {
        let r = http.get(format!("{ep}/v1/kv?{q}")).send().await.unwrap();
        assert_eq!(
            code(r).await,
            (400, "invalid_request".to_string()),
            "GET ?{q}"
        );
    }
    let long = "k".repeat(1025);
    let r = http
        .get(format!("{ep}/v1/kv?prefix={long}"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await.0, 413);

    let post = |body: Vec<u8>| {
        http.post(format!("{ep}/v1/txn"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let too_many = TxnRequest {
        compare: (0..129)
            .map(|i| Compare {
                key: format!("k{i}").as_str().into(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            })
            .collect(),
        success: vec![],
        failure: vec![],
    };
    let r = post(serde_json::to_vec(&too_many).unwrap()).await.unwrap();
    assert_eq!(code(r).await, (413, "too_large".to_string()));
    // kvd answers an oversized body before reading it all and closes the connection; it says
    // `Connection: close`, so this pooled client's next request goes on a fresh one.
    let r = post(vec![b' '; 3 * 1024 * 1024]).await.unwrap();
    assert_eq!(code(r).await, (413, "too_large".to_string()));
    assert_eq!(r_close(&http, &ep).await, "close");
    for bad in [
        r#"{"compare": [{"key": "!!", "version": 0}]}"#,
        r#"{"success": [{"put": {"key": "YQ=="}}]}"#,
        r#"{"success": [{"jump": {}}]}"#,
        r#"{"compare": [{"key": "YQ==", "op": "less", "exists": true}]}"#,
        r#"{"success": [{"put": {"key": "YQ==", "value": ""}}, {"put": {"key": "YQ==", "value": ""}}]}"#,
        r#"{"success": [{"put": {"key": "YQ==", "value": ""}}, {"delete": {"key": "", "prefix": true}}]}"#,
        r#"{"success": [{"get": {"key": "YQ==", "prefix": true, "end": "Yg=="}}]}"#,
        r#"{"success": [{"put": {"key": "", "value": ""}}]}"#,
        "not json",
    ] {
        let r = post(bad.as_bytes().to_vec()).await.unwrap();
        assert_eq!(code(r).await, (400, "invalid_request".to_string()), "{bad}");
    }
    // Nothing of it was applied.
    assert_eq!(c.status(1).await.unwrap().revision, 0);
}
