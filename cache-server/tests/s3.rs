//! `--blob-store s3://…` against a real S3-compatible server: one Garage node per test
//! (`garage/mod.rs`; installed by scripts/install-s3.sh, and these tests fail naming it when it is
//! missing). The server runs in-process where the test only talks HTTP, and as the real binary
//! where the test needs its process (memory, restart, exit status).

mod common;
mod garage;

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use garage::Garage;
use layercache_shared::Digest;
use layercache_shared::archive::{BlobSink, Limits, read_archive};
use layercache_test_support::tarball::{Image, layer, noise};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use reqwest::{Method, StatusCode};

/// Starts Garage off the async threads (it blocks while the node boots).
async fn garage() -> Garage {
    tokio::task::spawn_blocking(Garage::start).await.unwrap()
}

/// Every object key under `prefix`, sorted.
async fn keys(g: &Garage, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut keys: Vec<String> = g
        .client()
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The key a blob gets under `prefix`.
fn key_of(prefix: &str, d: &Digest) -> String {
    let hex = d.hex();
    format!("{prefix}/sha256/{}/{hex}", &hex[..2])
}

/// Files under `dir`, recursively.
fn files_in(dir: &std::path::Path) -> usize {
    let Ok(list) = std::fs::read_dir(dir) else {
        return 0;
    };
    list.flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                files_in(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Keeps layer contents in memory, to compare what the server served.
struct MemSink;
impl BlobSink for MemSink {
    type Handle = Vec<u8>;
    fn store(&mut self, content: &mut dyn std::io::Read) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        content.read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Two images sharing a base layer; the second has a 3 MiB layer.
fn chain() -> (Image, Image) {
    let base = layer(&[("etc/base", b"base layer")]);
    let a = Image::new(vec![base.clone()], &["ADD base"]).tagged("app:base");
    let b = Image::new(
        vec![base, layer(&[("app/big.bin", &noise(1, 3 << 20))])],
        &["ADD base", "COPY big"],
    )
    .tagged("app:1")
    .child_of(&a);
    (a, b)
}

/// Restores `ns/key` and checks every layer of `image` came back intact.
async fn restore_and_check(client: &reqwest::Client, url: &str, ns_key: &str, image: &Image) {
    let r = client
        .get(format!("{url}/v1/images/{ns_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap();
    let parsed = read_archive(&body[..], &mut MemSink, &Limits::default()).expect("parses");
    assert_eq!(parsed.images.last().unwrap().id, image.id());
    for (l, d) in image.layers.iter().zip(image.diff_ids()) {
        assert_eq!(&parsed.layers[&d].handle, l, "layer {d}");
    }
}

/// The v1 path on S3: a tarball push lands every blob in the bucket (and none on local disk),
/// lookup and restore serve it back, and blob GETs honour `Range` (one ranged GET of the object,
/// kept streaming across chunks).
#[tokio::test(flavor = "multi_thread")]
async fn v1_push_lookup_restore_and_ranged_gets_on_s3() {
    let g = garage().await;
    let store = g.blob_store("v1");
    let s = common::start(move |st| st.blob_store = store).await;
    let (a, b) = chain();
    common::push_tarball(&s.client, &s.url, "acme%2Fweb/k1", &[&a, &b]).await;

    let stored = keys(&g, "v1").await;
    for d in b.diff_ids().iter().chain([&a.id(), &b.id()]) {
        assert!(stored.contains(&key_of("v1", d)), "{d} not in {stored:?}");
    }
    assert_eq!(
        files_in(&s.data_dir.join("blobs")),
        0,
        "no blob on local disk"
    );
    assert_eq!(files_in(&s.data_dir.join("tmp")), 0, "no temp file left");

    let r = s
        .client
        .post(format!("{}/v1/lookup", s.url))
        .json(&serde_json::json!({"namespaces": ["acme/web"], "key": "k1"}))
        .send()
        .await
        .unwrap();
    let found: serde_json::Value = r.json().await.unwrap();
    assert_eq!(found["match"], "exact", "{found}");
    restore_and_check(&s.client, &s.url, "acme%2Fweb/k1", &b).await;

    // Ranged GETs of the 3 MiB layer: across a 1 MiB chunk boundary, a suffix, the whole.
    let big = &b.layers[1];
    let d = b.diff_ids()[1];
    let url = format!("{}/v1/blobs/{d}", s.url);
    for (range, want) in [
        ("bytes=1048570-2097160", &big[1048570..2097161]),
        ("bytes=-5", &big[big.len() - 5..]),
        ("bytes=0-", &big[..]),
    ] {
        let r = s
            .client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), want, "{range}");
    }
    let r = s.client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );
}

/// The registry path on S3: a chunked session (three PATCHes) and a monolithic upload; the blobs
/// are in the bucket and pulled back whole and by range.
#[tokio::test(flavor = "multi_thread")]
async fn registry_chunked_and_monolithic_uploads_on_s3() {
    let g = garage().await;
    let store = g.blob_store("reg");
    let s = common::start(move |st| st.blob_store = store).await;
    let content = noise(5, (9 << 20) + 17); // past the single-PUT size: a multipart upload
    let d = Digest::of(&content);
    let r = s
        .client
        .post(format!("{}/v2/acme/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let cuts = [0, 4 << 20, 8 << 20, content.len()];
    for w in cuts.windows(2) {
        let r = s
            .client
            .request(Method::PATCH, format!("{}{loc}", s.url))
            .header("content-range", format!("{}-{}", w[0], w[1] - 1))
            .header("content-type", "application/octet-stream")
            .body(content[w[0]..w[1]].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    assert!(
        !keys(&g, "reg").await.contains(&key_of("reg", &d)),
        "nothing in the bucket before the digest is checked"
    );
    let r = s
        .client
        .put(format!("{}{loc}?digest={d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let meta = g
        .client()
        .head(&ObjectPath::from(key_of("reg", &d)))
        .await
        .unwrap();
    assert_eq!(meta.size, content.len() as u64);

    let small = b"a small config".to_vec();
    let ds = Digest::of(&small);
    let r = s
        .client
        .post(format!("{}/v2/acme/app/blobs/uploads/?digest={ds}", s.url))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let url = format!("{}/v2/acme/app/blobs/{d}", s.url);
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d.to_string());
    assert_eq!(r.bytes().await.unwrap().as_ref(), &content[..]);
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=8388600-8388700")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &content[8388600..8388701]
    );
    let r = s
        .client
        .get(format!("{}/v2/acme/app/blobs/{ds}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &small[..]);
}

/// Content whose digest does not match never reaches the bucket: not at the digest asked for,
/// not anywhere under the prefix (v1 PUT, a registry session, a monolithic registry upload).
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_that_does_not_match_its_digest_is_never_in_the_bucket() {
    let g = garage().await;
    let store = g.blob_store("bad");
    let s = common::start(move |st| st.blob_store = store).await;
    let content = noise(7, 10 << 20);
    let claimed = Digest::of(b"not this");
    let r = s
        .client
        .put(format!("{}/v1/blobs/{claimed}", s.url))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .client
        .post(format!(
            "{}/v2/acme/app/blobs/uploads/?digest={claimed}",
            s.url
        ))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .client
        .post(format!("{}/v2/acme/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = s
        .client
        .put(format!("{}{loc}?digest={claimed}", s.url))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(keys(&g, "bad").await, Vec::<String>::new());
    assert_eq!(
        keys(&g, "").await,
        Vec::<String>::new(),
        "no object anywhere"
    );
    assert_eq!(files_in(&s.data_dir.join("tmp")), 0, "temp files gone");
}

/// The collector deletes from the bucket: an entry deleted (and its blobs unreferenced past a
/// zero grace period) leaves no object behind; a blob another entry shares stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_collector_deletes_blobs_from_the_bucket() {
    let g = garage().await;
    let store = g.blob_store("gc");
    let s = common::start(move |st| {
        st.blob_store = store;
        st.upload_grace = Duration::ZERO;
        st.gc_interval = Duration::from_millis(200);
    })
    .await;
    let (a, b) = chain();
    common::push_tarball(&s.client, &s.url, "ns/keep", &[&a]).await;
    common::push_tarball(&s.client, &s.url, "ns/drop", &[&a, &b]).await;
    let big = key_of("gc", &b.diff_ids()[1]);
    let shared = key_of("gc", &a.diff_ids()[0]);
    assert!(keys(&g, "gc").await.contains(&big));
    let r = s
        .client
        .delete(format!("{}/v1/images/ns/drop", s.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys(&g, "gc").await.contains(&big) {
        assert!(
            Instant::now() < deadline,
            "the collector never deleted {big}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = keys(&g, "gc").await;
    assert!(left.contains(&shared), "{left:?}");
    assert!(!left.contains(&key_of("gc", &b.id())), "{left:?}");
    restore_and_check(&s.client, &s.url, "ns/keep", &a).await;
}

/// Starts the real binary on `data_dir` with blobs at `s3://layercache/<prefix>`.
fn server(g: &Garage, data_dir: &std::path::Path, prefix: &str) -> std::process::Child {
    let store = format!("s3://{}/{prefix}", g.bucket);
    common::binary_command(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--blob-store",
        &store,
    ])
    .envs(g.env())
    .spawn()
    .unwrap()
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A 256 MiB blob goes through a multipart upload and back without the server holding it: its
/// peak memory stays far below the blob's size. The body is generated while sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_blob_streams_through_multipart_in_bounded_memory() {
    const MIB: usize = 1 << 20;
    const SIZE: usize = 256 * MIB;
    let g = garage().await;
    let (_tmp, data_dir) = common::data_dir();
    let mut child = server(&g, &data_dir, "big");
    let url = common::binary_url(&mut child).await;
    let chunk = |i: usize| noise(i as u64, MIB);
    let mut expected = layercache_shared::digest::Hasher::new();
    for i in 0..SIZE / MIB {
        expected.update(&chunk(i));
    }
    let (d, _) = expected.finish();
    let body =
        futures::stream::iter((0..SIZE / MIB).map(move |i| Ok::<_, std::io::Error>(chunk(i))));
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{url}/v1/blobs/{d}"))
        .header("content-length", SIZE)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let meta = g
        .client()
        .head(&ObjectPath::from(key_of("big", &d)))
        .await
        .unwrap();
    assert_eq!(meta.size, SIZE as u64);
    let etag = meta.e_tag.unwrap_or_default();
    assert!(etag.contains('-'), "a multipart upload's ETag: {etag}");

    let r = client
        .get(format!("{url}/v1/blobs/{d}"))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut got = layercache_shared::digest::Hasher::new();
    while let Some(b) = stream.try_next().await.unwrap() {
        got.update(&b);
    }
    assert_eq!(got.finish(), (d, SIZE as u64), "served back intact");
    let peak = peak_rss(child.id());
    eprintln!("server peak RSS {} MiB", peak / MIB as u64);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        peak < 128 * MIB as u64,
        "server peaked at {} MiB for a {} MiB blob",
        peak / MIB as u64,
        SIZE / MIB
    );
}

/// A restart keeps every entry (the index is local, the blobs in the bucket) and the start-up
/// sweep removes an object no row names; `verify` re-hashes the bucket's blobs and quarantines
/// one that was damaged behind the server's back.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_everything_and_verify_checks_the_bucket() {
    let g = garage().await;
    let (_tmp, data_dir) = common::data_dir();
    let mut child = server(&g, &data_dir, "life");
    let url = common::binary_url(&mut child).await;
    let client = reqwest::Client::new();
    let (a, b) = chain();
    common::push_tarball(&client, &url, "ns/k", &[&a, &b]).await;
    // SIGTERM, as a service manager stops it.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let orphan = Digest::of(b"no row names me");
    let bucket = g.client();
    bucket
        .put(
            &ObjectPath::from(key_of("life", &orphan)),
            PutPayload::from_static(b"no row names me"),
        )
        .await
        .unwrap();
    let mut child = server(&g, &data_dir, "life");
    let url = common::binary_url(&mut child).await;
    restore_and_check(&client, &url, "ns/k", &b).await;
    assert!(
        !keys(&g, "life").await.contains(&key_of("life", &orphan)),
        "the start-up sweep removed the orphan"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    // Damage the big layer in place (same key, other bytes), then verify.
    let damaged = key_of("life", &b.diff_ids()[1]);
    bucket
        .put(
            &ObjectPath::from(damaged.as_str()),
            PutPayload::from_static(b"rot"),
        )
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layercache-server"))
        .args(["verify", "--data-dir", data_dir.to_str().unwrap()])
        .args(["--blob-store", &format!("s3://{}/life", g.bucket)])
        .envs(g.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify must fail on a corrupt blob: {stdout}"
    );
    assert!(
        stdout.contains(&format!("corrupt: {}", b.diff_ids()[1])),
        "{stdout}"
    );
    let left = keys(&g, "life").await;
    assert!(!left.contains(&damaged), "{left:?}");
    assert!(
        left.contains(&format!("life/quarantine/{}", b.diff_ids()[1].hex())),
        "{left:?}"
    );
}

/// A missing bucket or refused credentials stop the server at start, naming the store and the
/// store's own answer, before it listens for clients' pushes.
#[tokio::test(flavor = "multi_thread")]
async fn start_fails_clearly_without_the_bucket_or_with_wrong_keys() {
    let g = garage().await;
    let (_tmp, data_dir) = common::data_dir();
    let run = |store: &str, env: Vec<(&'static str, String)>| {
        let out = common::binary_command(&[
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--blob-store",
            store,
        ])
        .envs(env)
        .output()
        .unwrap();
        assert!(!out.status.success(), "started with {store}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("s3://no-such-bucket/x", g.env());
    assert!(err.contains("s3://no-such-bucket/x"), "{err}");
    assert!(err.contains("the bucket must exist"), "{err}");
    assert!(err.to_lowercase().contains("bucket"), "{err}");

    let mut wrong = g.env();
    for (k, v) in wrong.iter_mut() {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "0".repeat(64);
        }
    }
    let err = run("s3://layercache/x", wrong);
    assert!(err.contains("s3://layercache/x"), "{err}");
    assert!(
        err.contains("403") || err.to_lowercase().contains("forbidden"),
        "{err}"
    );
}

/// On a 3-node Garage cluster with replication factor 3, one node going down loses nothing: what
/// was pushed is restored, and a new push still lands (reads and writes need 2 of 3 copies).
#[tokio::test(flavor = "multi_thread")]
async fn one_node_of_three_down_keeps_push_and_restore_working() {
    let mut g = tokio::task::spawn_blocking(|| Garage::cluster(3))
        .await
        .unwrap();
    let store = g.blob_store("rf3");
    let s = common::start(move |st| st.blob_store = store).await;
    let (a, b) = chain();
    common::push_tarball(&s.client, &s.url, "ns/before", &[&a, &b]).await;
    g.kill_node(2);
    restore_and_check(&s.client, &s.url, "ns/before", &b).await;
    let c = Image::new(vec![layer(&[("c", &noise(3, 2 << 20))])], &["ADD c"]);
    common::push_tarball(&s.client, &s.url, "ns/after", &[&c]).await;
    restore_and_check(&s.client, &s.url, "ns/after", &c).await;
}
