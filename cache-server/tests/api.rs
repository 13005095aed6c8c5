//! The server in-process on `127.0.0.1:0` with a temp data dir, driven over HTTP with reqwest,
//! using small legacy `docker save` tarballs from `layercache_test_support::tarball`.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use layercache_server::{Settings, serve};
use layercache_shared::Digest;
use layercache_shared::archive::{BlobSink, Limits, ParsedArchive, read_archive};
use layercache_test_support::tarball::{Image, layer, noise, save};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A server on a free port with its own data dir; stopped (gracefully) on drop.
struct TestServer {
    url: String,
    data_dir: PathBuf,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    /// The serve task, to wait for a graceful stop.
    done: Option<tokio::task::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::start_with_limit(layercache_server::settings::DEFAULT_MAX_UPLOAD_BYTES).await
    }

    async fn start_with_limit(max_upload_bytes: u64) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        Self::start_in(tmp, data_dir, max_upload_bytes).await
    }

    /// Starts a server on `data_dir` (inside `tmp`, which the server keeps alive).
    async fn start_in(
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        max_upload_bytes: u64,
    ) -> TestServer {
        let settings = Settings {
            max_upload_bytes,
            open: true,
            ..Settings::new(data_dir)
        };
        Self::start_with(tmp, settings).await
    }

    /// Starts a server with `settings` (its data dir inside `tmp`).
    async fn start_with(tmp: tempfile::TempDir, mut settings: Settings) -> TestServer {
        let data_dir = settings.data_dir.clone();
        // SQLite in the data dir, or a PostgreSQL database (`LAYERCACHE_TEST_BACKEND`).
        settings.database = common::database_for(&data_dir);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            if let Err(e) = serve(listener, settings, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("server failed: {e}");
            }
        });
        let server = TestServer {
            url,
            data_dir,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            done: Some(done),
            _tmp: tmp,
        };
        for _ in 0..200 {
            if let Ok(r) = server.client.get(server.at("/healthz")).send().await
                && r.status().is_success()
            {
                common::assert_backend(&server.data_dir);
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server did not become healthy");
    }

    /// Asks the server to stop and waits until it has (in-flight requests finish first); returns
    /// the temp dir holding its data.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.expect("server task");
        }
        let tmp = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._tmp, tmp)
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn put_tar(
        &self,
        path: &str,
        body: Vec<u8>,
        prefixes: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.put(self.at(path)).body(body);
        if let Some(p) = prefixes {
            req = req.header("layercache-prefixes", p);
        }
        req.send().await.unwrap()
    }

    /// The body of a successful-or-not `GET path`, read whole.
    async fn get_body(&self, path: &str) -> bytes::Bytes {
        self.client
            .get(self.at(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.at(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn stats(&self) -> Value {
        self.get_json("/v1/stats").await
    }

    fn files_under(&self, dir: &str) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        walk(&e.path(), out);
                    } else {
                        out.push(e.path());
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir.join(dir), &mut out);
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Base image A (one layer) and child B (A's layer + a 3 MiB layer), B's parent is A.
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

/// Keeps layer contents in memory, to compare what the server served.
struct MemSink;
impl BlobSink for MemSink {
    type Handle = Vec<u8>;
    fn store(&mut self, content: &mut dyn Read) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        content.read_to_end(&mut v)?;
        Ok(v)
    }
}

fn parse(tarball: &[u8]) -> ParsedArchive<Vec<u8>> {
    read_archive(tarball, &mut MemSink, &Limits::default()).expect("served tarball parses")
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

fn prefixes(steps: &[&str]) -> Vec<Digest> {
    steps.iter().map(|s| Digest::of(s.as_bytes())).collect()
}

fn prefix_header(p: &[Digest]) -> String {
    p.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_round_trips_images_parents_and_layers() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let tarball = save(&[&a, &b]);
    let r = s
        .put_tar("/v1/images/acme%2Fweb/key1", tarball.clone(), None)
        .await;
    assert_eq!(r.status(), 201);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["layers_total"], 2, "{report}");
    assert_eq!(report["layers_new"], 2, "{report}");
    assert_eq!(report["bytes_received"], tarball.len() as u64, "{report}");

    let r = s
        .client
        .get(s.at("/v1/images/acme%2Fweb/key1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let len = r.content_length();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        len,
        Some(body.len() as u64),
        "Content-Length matches the body"
    );
    let parsed = parse(&body);
    let ids: Vec<Digest> = parsed.images.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![a.id(), b.id()], "parents first");
    assert_eq!(parsed.images[1].parent, Some(a.id()), "Parent link intact");
    assert_eq!(parsed.images[1].tags, vec!["app:1".to_string()]);
    assert_eq!(parsed.images[1].diff_ids, b.diff_ids());
    for (l, d) in b.layers.iter().zip(b.diff_ids()) {
        assert_eq!(&parsed.layers[&d].handle, l, "layer {d} content");
    }
    let stats = s.stats().await;
    assert_eq!(stats["hits"], 1, "{stats}");
    assert_eq!(stats["bytes_served"], body.len() as u64, "{stats}");
    assert!(s.files_under("tmp").is_empty(), "no temp files left");
}

#[tokio::test(flavor = "multi_thread")]
async fn same_tarball_in_two_namespaces_stores_layers_once() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let tarball = save(&[&a, &b]);
    let first: Value = s
        .put_tar("/v1/images/team-a/k", tarball.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    let stored = s.stats().await["stored_bytes"].as_u64().unwrap();
    let r = s.put_tar("/v1/images/team-b%2Fmain/k", tarball, None).await;
    assert_eq!(r.status(), 201);
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["layers_new"], 0, "{second}");
    assert_eq!(second["bytes_new"], 0, "{second}");
    assert_eq!(second["layers_total"], first["layers_total"]);
    let stats = s.stats().await;
    assert_eq!(stats["stored_bytes"].as_u64().unwrap(), stored, "{stats}");
    assert!(
        stats["bytes_deduplicated"].as_u64().unwrap() > 3 << 20,
        "{stats}"
    );
    assert_eq!(stats["entries"], 2, "{stats}");
    assert_eq!(stats["blobs"], 4, "2 layers + 2 configs: {stats}");
    let listed = s.get_json("/v1/entries?namespace=team-b%2Fmain").await;
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["entries"][0]["layers"], 2, "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_describes_images_layers_and_prefixes() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let p = prefixes(&["FROM scratch", "ADD base"]);
    let r = s
        .put_tar(
            "/v1/images/acme/k",
            save(&[&a, &b]),
            Some(&prefix_header(&p)),
        )
        .await;
    assert_eq!(r.status(), 201);
    let m = s.get_json("/v1/images/acme/k/manifest").await;
    assert_eq!(m["namespace"], "acme");
    assert_eq!(m["key"], "k");
    let images = m["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{m}");
    assert_eq!(images[0]["id"], a.id().to_string());
    assert!(images[0].get("parent").is_none(), "{m}");
    assert_eq!(images[1]["parent"], a.id().to_string());
    assert_eq!(images[1]["tags"], json!(["app:1"]));
    assert_eq!(images[1]["config_size"], b.config().len() as u64);
    let layer_sizes: Vec<u64> = images[1]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    assert_eq!(
        layer_sizes,
        b.layers.iter().map(|l| l.len() as u64).collect::<Vec<_>>()
    );
    let total: u64 = b.layers.iter().map(|l| l.len() as u64).sum::<u64>()
        + (a.config().len() + b.config().len()) as u64;
    assert_eq!(m["total_size"], total);
    assert_eq!(m["prefixes"], json!(p));
    let r = s
        .client
        .get(s.at("/v1/images/acme/other/manifest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_finds_exact_then_fallback_then_prefix_and_counts_misses() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let tarball = save(&[&a, &b]);
    let deep = prefixes(&["FROM scratch", "ADD base", "COPY big"]);
    let shallow = prefixes(&["FROM scratch", "ADD other"]);
    s.put_tar(
        "/v1/images/main/k1",
        tarball.clone(),
        Some(&prefix_header(&deep)),
    )
    .await;
    s.put_tar(
        "/v1/images/feature/k2",
        tarball.clone(),
        Some(&prefix_header(&shallow)),
    )
    .await;

    let ask = |ns: &[&str], key: &str, p: &[Digest]| json!({ "namespaces": ns, "key": key, "prefixes": p });
    let (st, r) = s.post_json("/v1/lookup", &ask(&["main"], "k1", &[])).await;
    assert_eq!(
        (st.as_u16(), r["match"].as_str()),
        (200, Some("exact")),
        "{r}"
    );
    assert_eq!(r["manifest"]["key"], "k1");
    let (st, r) = s
        .post_json("/v1/lookup", &ask(&["feature", "main"], "k1", &[]))
        .await;
    assert_eq!(
        (st.as_u16(), r["match"].as_str()),
        (200, Some("fallback")),
        "{r}"
    );
    // Asked prefix shares 2 instructions with main/k1 and 1 with feature/k2: the longer wins.
    let asked = prefixes(&["FROM scratch", "ADD base", "RUN new"]);
    let (st, r) = s
        .post_json("/v1/lookup", &ask(&["feature", "main"], "k9", &asked))
        .await;
    assert_eq!(
        (st.as_u16(), r["match"].as_str()),
        (200, Some("prefix")),
        "{r}"
    );
    assert_eq!(r["shared_instructions"], 2, "{r}");
    assert_eq!(r["manifest"]["key"], "k1", "{r}");
    let (st, r) = s
        .post_json("/v1/lookup", &ask(&["elsewhere"], "k1", &asked))
        .await;
    assert_eq!(st, 404, "{r}");
    assert_eq!(error_code(&r), "not_found");
    let (st, r) = s
        .post_json(
            "/v1/lookup",
            &json!({ "namespaces": ["bad ns"], "key": "k" }),
        )
        .await;
    assert_eq!(st, 400, "{r}");

    let stats = s.stats().await;
    assert_eq!(
        (
            &stats["hits"],
            &stats["hits_exact"],
            &stats["hits_fallback"],
            &stats["hits_prefix"],
            &stats["misses"]
        ),
        (&json!(3), &json!(1), &json!(1), &json!(1), &json!(1)),
        "{stats}"
    );
    assert_eq!(
        s.get_json("/v1/images/main/k1/manifest").await["hits"],
        3,
        "exact + fallback + prefix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_upload_with_wrong_digest_is_refused_and_leaves_no_file() {
    let s = TestServer::start().await;
    let content = noise(7, 2 << 20);
    let wrong = Digest::of(b"something else");
    let r = s
        .client
        .put(s.at(&format!("/v1/blobs/{wrong}")))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "digest_mismatch", "{body}");
    assert!(
        s.files_under("tmp").is_empty(),
        "{:?}",
        s.files_under("tmp")
    );
    assert!(
        s.files_under("blobs").is_empty(),
        "{:?}",
        s.files_under("blobs")
    );
    assert_eq!(s.stats().await["uploads_failed"], 1);

    let r = s
        .client
        .put(s.at("/v1/blobs/sha256:nothex"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_posted_without_a_digest_are_stored_under_what_they_hash_to() {
    let s = TestServer::start_with_limit(1 << 20).await;
    let content = noise(11, 600 << 10);
    let digest = Digest::of(&content);
    // Chunked, as the runner sends a layer it is still reading.
    let post = |body: Vec<u8>| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
        s.client
            .post(s.at("/v1/blobs"))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
    };
    let r = post(content.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(
        stored,
        json!({"digest": digest.to_string(), "size": content.len()})
    );
    let r = post(content.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "already stored");
    assert_eq!(
        r.json::<Value>().await.unwrap()["digest"],
        digest.to_string()
    );
    let got = s
        .client
        .get(s.at(&format!("/v1/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &content[..]);
    assert_eq!(s.stats().await["bytes_deduplicated"], content.len());

    // Over the limit, streamed: refused while reading, nothing kept.
    let r = post(noise(12, 2 << 20)).await;
    assert_refused_413(r, "posted blob over the limit");
    assert!(s.files_under("tmp").is_empty());
    assert_eq!(s.files_under("blobs").len(), 1, "only the first blob");
    let r = reqwest::Client::new()
        .get(s.at("/v1/blobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_upload_once_and_serve_ranges_and_heads() {
    let s = TestServer::start().await;
    let content = noise(9, (1 << 20) + 4321);
    let d = Digest::of(&content);
    let url = s.at(&format!("/v1/blobs/{d}"));
    let r = s
        .client
        .put(&url)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .client
        .put(&url)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "second upload of the same blob");

    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &content[..]);

    let r = s
        .client
        .get(&url)
        .header("range", "bytes=1048570-1048579")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1048570-1048579/{}", content.len())
    );
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &content[1048570..1048580]
    );
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &content[content.len() - 5..]
    );
    let r = s
        .client
        .get(&url)
        .header("range", format!("bytes={}-", content.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", content.len())
    );

    let r = s.client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        content.len().to_string().as_str()
    );
    let absent = s.at(&format!("/v1/blobs/{}", Digest::of(b"absent")));
    assert_eq!(s.client.get(&absent).send().await.unwrap().status(), 404);
    assert_eq!(s.client.head(&absent).send().await.unwrap().status(), 404);

    let (st, r) = s
        .post_json(
            "/v1/blobs/missing",
            &json!({ "digests": [d, Digest::of(b"absent")] }),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        r,
        json!({ "missing": [Digest::of(b"absent")], "streamed_uploads": true }),
        "the answer also tells runners they may POST /v1/blobs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_from_blobs_lists_missing_ones_then_succeeds() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let put_blob = |content: Vec<u8>| {
        let url = s.at(&format!("/v1/blobs/{}", Digest::of(&content)));
        let client = s.client.clone();
        async move {
            let st = client.put(url).body(content).send().await.unwrap().status();
            assert!(st.is_success(), "{st}");
        }
    };
    put_blob(a.config()).await;
    put_blob(b.config()).await;
    put_blob(b.layers[0].clone()).await;
    let commit = json!({
        "images": [
            { "id": b.id(), "parent": a.id(), "tags": ["app:1"] },
            { "id": a.id(), "tags": ["app:base"] },
        ],
        "prefixes": prefixes(&["FROM scratch"]),
    });
    let url = s.at("/v1/images/acme/committed/manifest");
    let r = s.client.put(&url).json(&commit).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "missing_blobs", "{body}");
    assert_eq!(body["error"]["missing"], json!([b.diff_ids()[1]]), "{body}");

    put_blob(b.layers[1].clone()).await;
    let r = s.client.put(&url).json(&commit).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["layers_total"], 2, "{report}");

    let body = s.get_body("/v1/images/acme/committed").await;
    let parsed = parse(&body);
    assert_eq!(
        parsed.images.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![a.id(), b.id()]
    );
    assert_eq!(parsed.images[1].parent, Some(a.id()));

    let orphan = json!({ "images": [{ "id": a.id(), "parent": Digest::of(b"nowhere") }] });
    let r = s
        .client
        .put(s.at("/v1/images/acme/orphan/manifest"))
        .json(&orphan)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "a parent the server does not know is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_reput_is_refused_and_previous_entry_still_served() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    let good = save(&[&a, &b]);
    assert_eq!(
        s.put_tar("/v1/images/ns/k", good.clone(), None)
            .await
            .status(),
        201
    );
    let other = Image::new(vec![layer(&[("x", &noise(3, 2 << 20))])], &["ADD x"]).tagged("other:1");
    let replacement = save(&[&other]);
    for cut in [replacement.len() / 2, replacement.len() - 1024] {
        let r = s
            .put_tar("/v1/images/ns/k", replacement[..cut].to_vec(), None)
            .await;
        assert_eq!(r.status(), 400, "cut at {cut}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let r = s
        .put_tar("/v1/images/ns/k", b"not a tarball".repeat(100), None)
        .await;
    assert_eq!(r.status(), 400);

    let body = s.get_body("/v1/images/ns/k").await;
    let parsed = parse(&body);
    assert_eq!(
        parsed.images.last().unwrap().id,
        b.id(),
        "the first entry is still served"
    );
    assert!(
        s.files_under("tmp").is_empty(),
        "{:?}",
        s.files_under("tmp")
    );
    assert!(
        !s.files_under("blobs")
            .iter()
            .any(|p| p.ends_with(other.diff_ids()[0].hex())),
        "no blob of the refused upload was kept"
    );
    assert_eq!(s.stats().await["uploads_failed"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_refused_with_json_errors() {
    let s = TestServer::start().await;
    for path in [
        "/v1/images/a%20b/k",
        "/v1/images/..%2Fx/k",
        "/v1/images/ns/bad%2Fkey/manifest",
        "/v1/images/ns/a%20b",
    ] {
        let r = s.client.get(s.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "invalid_name", "{path}: {body}");
    }
    let r = s.client.get(s.at("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().await.unwrap()), "not_found");
    let r = s.client.post(s.at("/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

/// The server answers 413 as soon as a body passes the limit and closes the connection without
/// reading the rest; a client still sending may see that close before it reads the answer. Either
/// way the upload was refused (the test then checks nothing was kept).
fn assert_refused_413(r: reqwest::Result<reqwest::Response>, what: &str) {
    match r {
        Ok(r) => assert_eq!(r.status(), 413, "{what}"),
        Err(e) => assert!(e.is_request() || e.is_body(), "{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_limit_get_413() {
    let s = TestServer::start_with_limit(64 << 10).await;
    let (a, b) = chain();
    let big = save(&[&a, &b]);
    let r = s.put_tar("/v1/images/ns/k", big.clone(), None).await;
    assert_eq!(r.status(), 413, "announced length over the limit");
    // Without Content-Length (chunked), the limit is enforced while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(16 << 10).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .client
        .put(s.at("/v1/images/ns/k"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    assert_refused_413(r, "streamed body over the limit");
    let content = noise(5, 100 << 10);
    let r = s
        .client
        .put(s.at(&format!("/v1/blobs/{}", Digest::of(&content))))
        .body(content)
        .send()
        .await;
    assert_refused_413(r, "blob over the limit");
    assert!(s.files_under("tmp").is_empty());
    // A fresh connection: the pooled one may be the one the server just closed.
    let r = reqwest::get(s.at("/v1/images/ns/k")).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_entry_and_get_counts_a_miss() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    s.put_tar("/v1/images/ns/k", save(&[&a, &b]), None).await;
    let url = s.at("/v1/images/ns/k");
    assert_eq!(s.client.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(s.client.delete(&url).send().await.unwrap().status(), 404);
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().await.unwrap()), "not_found");
    let stats = s.stats().await;
    assert_eq!(
        (&stats["entries"], &stats["misses"]),
        (&json!(0), &json!(1)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_leaves_out_layer_files_but_manifest_names_them() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    s.put_tar("/v1/images/ns/k", save(&[&a, &b]), None).await;
    let big = b.diff_ids()[1];
    let full = s.get_body("/v1/images/ns/k").await;
    let r = s
        .client
        .get(s.at(&format!("/v1/images/ns/k?skip={big}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert!(
        full.len() - body.len() >= b.layers[1].len(),
        "{} vs {}",
        full.len(),
        body.len()
    );
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut ar = tar::Archive::new(&body[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        names.insert(e.path().unwrap().to_string_lossy().into_owned(), e.size());
    }
    assert!(
        !names
            .keys()
            .any(|n| n.contains(&big.hex()) && n.ends_with("layer.tar")),
        "{names:?}"
    );
    assert!(names.contains_key("manifest.json"));
}

/// Graceful shutdown drains in-flight requests: a download that started before the stop
/// completes whole.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_an_inflight_download_finish() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    s.put_tar("/v1/images/ns/k", save(&[&a, &b]), None).await;
    let r = s.client.get(s.at("/v1/images/ns/k")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let expected = r.content_length().unwrap();
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let body = r.bytes().await.expect("body completes during shutdown");
    assert_eq!(body.len() as u64, expected);
    parse(&body);
    stopping.await.unwrap();
}

/// A restarted server on the same data dir serves what was committed, and wipes `tmp/`.
#[tokio::test(flavor = "multi_thread")]
async fn restart_serves_committed_entries_and_wipes_tmp() {
    let s = TestServer::start().await;
    let (a, b) = chain();
    s.put_tar("/v1/images/ns/k", save(&[&a, &b]), None).await;
    let data_dir = s.data_dir.clone();
    let tmp = s.stop().await;
    std::fs::write(data_dir.join("tmp/.tmpLEFTOVER"), b"half an upload").unwrap();

    let s = TestServer::start_in(tmp, data_dir, 1 << 30).await;
    assert!(
        s.files_under("tmp").is_empty(),
        "{:?}",
        s.files_under("tmp")
    );
    let body = s.get_body("/v1/images/ns/k").await;
    assert_eq!(parse(&body).images.len(), 2);
    let stats = s.stats().await;
    assert_eq!(
        (&stats["entries"], &stats["hits"]),
        (&json!(1), &json!(1)),
        "{stats}"
    );
}

// ---------------------------------------------------------------------------------------------
// Disk: quota, pins, concurrent uploads, corrupt blobs

/// A server with a size quota whose collector runs every 50 ms.
async fn start_with_quota(max_size: u64) -> TestServer {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        max_size: Some(max_size),
        gc_interval: std::time::Duration::from_millis(50),
        open: true,
        ..Settings::new(tmp.path().join("data"))
    };
    TestServer::start_with(tmp, settings).await
}

/// One image of `n` layers of `mib` MiB of noise each (seeded, so images differ).
fn big_image(seed: u64, n: usize, mib: usize) -> Image {
    let layers = (0..n)
        .map(|i| layer(&[("data.bin", &noise(seed * 100 + i as u64, mib << 20))]))
        .collect();
    Image::new(layers, &["RUN big"]).tagged("big:1")
}

/// Polls `/v1/stats` until `field` reaches `at_least` (the collector runs in the background).
async fn wait_for_stat(s: &TestServer, field: &str, at_least: u64) -> Value {
    for _ in 0..200 {
        let st = s.stats().await;
        if st[field].as_u64().unwrap_or(0) >= at_least {
            return st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{field} never reached {at_least}: {}", s.stats().await);
}

/// Over the quota, the least recently used entry goes with its blobs; the stats count it.
#[tokio::test(flavor = "multi_thread")]
async fn quota_evicts_the_least_recently_used_entry_and_its_blobs() {
    let s = start_with_quota(5 << 20).await;
    let (one, two) = (big_image(1, 1, 3), big_image(2, 1, 3));
    assert_eq!(
        s.put_tar("/v1/images/ns/one", save(&[&one]), None)
            .await
            .status(),
        201
    );
    assert_eq!(
        s.put_tar("/v1/images/ns/two", save(&[&two]), None)
            .await
            .status(),
        201
    );
    let stats = wait_for_stat(&s, "evicted_entries", 1).await;
    assert_eq!(stats["max_size"], json!(5 << 20), "{stats}");
    let stats = wait_for_stat(&s, "collected_blobs", 2).await;
    assert!(
        stats["stored_bytes"].as_u64().unwrap() <= 5 << 20,
        "{stats}"
    );
    assert!(
        stats["evicted_bytes"].as_u64().unwrap() >= 3 << 20,
        "{stats}"
    );
    let r = s
        .client
        .get(s.at("/v1/images/ns/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the older entry was evicted");
    let body = s
        .client
        .get(s.at("/v1/images/ns/two"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(parse(&body.bytes().await.unwrap()).layers.len(), 1);
    assert_eq!(
        s.files_under("blobs").len(),
        2,
        "two's layer and config stay"
    );
}

/// Regression guard for pins: a restore streaming while its entry is evicted still completes
/// intact, because its blobs stay pinned (and on disk) until the body is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_in_progress_survives_the_eviction_of_its_entry() {
    let s = start_with_quota(20 << 20).await;
    let old = big_image(3, 2, 8);
    s.put_tar("/v1/images/ns/old", save(&[&old]), None).await;
    let r = s
        .client
        .get(s.at("/v1/images/ns/old"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The body is not read yet: the server is blocked on the first layer, holding its pins.
    let newer = big_image(4, 2, 8);
    s.put_tar("/v1/images/ns/new", save(&[&newer]), None).await;
    wait_for_stat(&s, "evicted_entries", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        s.client
            .get(s.at("/v1/images/ns/old/manifest"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the entry is gone from the index"
    );
    assert_eq!(
        s.files_under("blobs").len(),
        6,
        "but its pinned blobs are still on disk"
    );
    let body = r.bytes().await.expect("the restore completes");
    let parsed = parse(&body);
    assert_eq!(parsed.layers.len(), 2);
    for l in &old.layers {
        assert_eq!(
            &parsed.layers[&Digest::of(l)].handle,
            l,
            "layer content intact"
        );
    }
    // Pins released: the next collection deletes the evicted blobs.
    wait_for_stat(&s, "collected_blobs", 3).await;
    // The counter moves with the rows; the files are unlinked just after that commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.files_under("blobs").len() > 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.files_under("blobs").len(), 3);
}

/// Two uploads of the same blob at once both succeed and leave one file.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_uploads_of_one_blob_both_succeed_with_one_copy() {
    let s = TestServer::start().await;
    let data = noise(9, 4 << 20);
    let d = Digest::of(&data);
    let put = |body: Vec<u8>| {
        s.client
            .put(s.at(&format!("/v1/blobs/{d}")))
            .body(body)
            .send()
    };
    let (a, b) = tokio::join!(put(data.clone()), put(data.clone()));
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert!(
        statuses == [200, 201] || statuses == [201, 201],
        "{statuses:?}"
    );
    assert_eq!(s.files_under("blobs").len(), 1);
    assert!(s.files_under("tmp").is_empty());
    assert_eq!(s.stats().await["blobs"], json!(1));
}

/// Two PUTs of one entry at once both succeed; the entry is then one of them, whole.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_puts_of_one_entry_both_succeed_and_one_wins_whole() {
    let s = TestServer::start().await;
    let (x, y) = (big_image(5, 2, 2), big_image(6, 2, 2));
    let (tx, ty) = (save(&[&x]), save(&[&y]));
    let (a, b) = tokio::join!(
        s.put_tar("/v1/images/ns/same", tx, None),
        s.put_tar("/v1/images/ns/same", ty, None)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    let body = s
        .client
        .get(s.at("/v1/images/ns/same"))
        .send()
        .await
        .unwrap();
    let parsed = parse(&body.bytes().await.unwrap());
    let winner = if parsed.images[0].id == x.id() {
        &x
    } else {
        &y
    };
    assert_eq!(parsed.images[0].id, winner.id());
    for l in &winner.layers {
        assert_eq!(&parsed.layers[&Digest::of(l)].handle, l);
    }
    assert_eq!(s.stats().await["entries"], json!(1));
}

/// Lookups and GETs racing re-PUTs of the same entry never fail. The race this guards (a reader
/// finding an entry's id just before a re-PUT replaced it got a 500 "Query returned no rows") was
/// found by `bench/load.py` against the release server; it needs more load than this test makes
/// to show, so the load benchmark, which checks every answer, is its real check.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_gets_racing_re_puts_never_fail() {
    let s = TestServer::start().await;
    let img = big_image(8, 1, 1);
    let tar = save(&[&img]);
    s.put_tar("/v1/images/ns/hot", tar.clone(), None).await;
    let writer = || async {
        for _ in 0..30 {
            let r = s.put_tar("/v1/images/ns/hot", tar.clone(), None).await;
            assert_eq!(r.status(), 201);
        }
    };
    let reader = || async {
        for _ in 0..100 {
            let (st, body) = s
                .post_json("/v1/lookup", &json!({"namespaces": ["ns"], "key": "hot"}))
                .await;
            assert_eq!(st, StatusCode::OK, "lookup: {body}");
            let r = s
                .client
                .get(s.at("/v1/images/ns/hot"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let writers = futures::future::join_all((0..3).map(|_| writer()));
    let readers = futures::future::join_all((0..8).map(|_| reader()));
    tokio::join!(writers, readers);
}

/// A blob file whose size no longer matches its row is never served: the blob GET is a 500
/// `corrupt_blob`, and a tarball using it breaks off instead of completing.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_of_the_wrong_size_is_never_served() {
    let s = TestServer::start().await;
    let img = big_image(7, 1, 2);
    s.put_tar("/v1/images/ns/k", save(&[&img]), None).await;
    let d = Digest::of(&img.layers[0]);
    let path = s
        .data_dir
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1000).unwrap();
    let r = s
        .client
        .get(s.at(&format!("/v1/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(&r.json().await.unwrap()), "corrupt_blob");
    // The server may break off before or after the response head reaches the client: either way
    // the client never gets a whole tarball.
    let broke = match s.client.get(s.at("/v1/images/ns/k")).send().await {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(broke, "the tarball transfer must break off");
}
