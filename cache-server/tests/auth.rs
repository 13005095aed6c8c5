//! Access control end to end: the server in-process with tokens in its data dir, driven over HTTP
//! (and HTTPS) with reqwest; the token CLI through the real `layercache-server` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::store::tokens::TokenSelector;
use layercache_server::{Settings, serve, serve_tls, tls};
use layercache_shared::Digest;
use layercache_test_support::tarball::{Image, layer, save};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A server on a free port over a given data dir; stopped on drop.
struct TestServer {
    url: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Plain HTTP, with `--open` (which only matters while the data dir has no live token).
    async fn start(data_dir: &Path) -> TestServer {
        Self::start_open(data_dir, true).await
    }

    /// Plain HTTP; `open` is `--open`.
    async fn start_open(data_dir: &Path, open: bool) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let settings = Settings {
            open,
            database: common::database_for(data_dir),
            ..Settings::new(data_dir)
        };
        tokio::spawn(async move {
            serve(listener, settings, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        Self::wait_healthy(url, reqwest::Client::new(), tx).await
    }

    async fn wait_healthy(
        url: String,
        client: reqwest::Client,
        tx: oneshot::Sender<()>,
    ) -> TestServer {
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{url}/healthz")).send().await
                && r.status().is_success()
            {
                return TestServer {
                    url,
                    client,
                    shutdown: Some(tx),
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server at {url} did not become healthy");
    }

    /// A request to `path`, with `token` as bearer when given.
    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A one-image, one-layer legacy `docker save` tarball; returns it with the layer digest and
/// the image id (config digest).
fn image(content: &[u8]) -> (Vec<u8>, Digest, Digest) {
    let img = Image::new(vec![layer(&[("data.bin", content)])], &["ADD data"]).tagged("app:1");
    (save(&[&img]), img.diff_ids()[0], img.id())
}

fn token(data_dir: &Path, role: Role, patterns: &[&str], name: &str) -> String {
    let patterns: Vec<NamespacePattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
    common::with_index(data_dir, |db| {
        create_token(db, role, &patterns, Some(name)).unwrap().0
    })
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    (tmp, dir)
}

async fn code_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The outcome a request should have, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 401 `unauthorized`.
    U,
    /// 403 `forbidden`.
    F,
    /// Passed the access check (any status but 401/403).
    A,
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn with_open_and_without_tokens_the_server_is_open() {
    let (_tmp, dir) = data_dir();
    let s = TestServer::start(&dir).await;
    let (tar, _, _) = image(b"open");
    let r = s
        .req(Method::PUT, "/v1/images/acme%2Fweb/k", None)
        .body(tar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .req(Method::DELETE, "/v1/images/acme%2Fweb/k", None)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // A stray token does not matter on an open server.
    let r = s
        .req(Method::GET, "/v1/stats", Some("lc_whatever"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Every route against every kind of caller: anonymous, an unknown token, read/write in `acme/*`,
/// admin in `*`, and read in `other/*`.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_and_role_gets_401_403_or_through() {
    let (_tmp, dir) = data_dir();
    let admin = token(&dir, Role::Admin, &["*"], "admin");
    let write = token(&dir, Role::Write, &["acme/*"], "ci-main");
    let read = token(&dir, Role::Read, &["acme/*"], "ci-fork");
    let other = token(&dir, Role::Read, &["other/*"], "other");
    let s = TestServer::start(&dir).await;

    let (tar_a, layer_a, id_a) = image(b"acme layer");
    let (tar_b, layer_b, _) = image(b"other layer");
    for (path, tar) in [
        ("/v1/images/acme%2Fweb/k1", tar_a.clone()),
        ("/v1/images/acme%2Fweb/kdel", tar_a.clone()),
        ("/v1/images/other%2Fweb/k2", tar_b),
    ] {
        let r = s
            .req(Method::PUT, path, Some(&admin))
            .body(tar)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "seeding {path}");
    }
    let layer_a_bytes = layer(&[("data.bin", b"acme layer")]);

    use Expect::{A, F, U};
    // Callers, in this order: none, unknown, read acme, write acme, admin, read other.
    let callers: [(&str, Option<&str>); 6] = [
        ("anonymous", None),
        ("unknown token", Some("lc_0000")),
        ("read acme/*", Some(&read)),
        ("write acme/*", Some(&write)),
        ("admin *", Some(&admin)),
        ("read other/*", Some(&other)),
    ];
    let commit = json!({ "images": [{ "id": id_a, "parent": null, "tags": ["app:1"] }] });
    type Case = (Method, String, Option<Vec<u8>>, [Expect; 6]);
    let cases: Vec<Case> = vec![
        (Method::GET, "/healthz".into(), None, [A, A, A, A, A, A]),
        (
            Method::GET,
            "/v1/images/acme%2Fweb/k1".into(),
            None,
            [U, U, A, A, A, F],
        ),
        (
            Method::GET,
            "/v1/images/acme%2Fweb/k1/manifest".into(),
            None,
            [U, U, A, A, A, F],
        ),
        (
            Method::GET,
            "/v1/images/other%2Fweb/k2".into(),
            None,
            [U, U, F, F, A, A],
        ),
        (
            Method::PUT,
            "/v1/images/acme%2Fweb/kput".into(),
            Some(tar_a.clone()),
            [U, U, F, A, A, F],
        ),
        (
            Method::PUT,
            "/v1/images/acme%2Fweb/kcommit/manifest".into(),
            Some(serde_json::to_vec(&commit).unwrap()),
            [U, U, F, A, A, F],
        ),
        (
            Method::DELETE,
            "/v1/images/acme%2Fweb/kdel".into(),
            None,
            [U, U, F, F, A, F],
        ),
        (
            Method::POST,
            "/v1/blobs/missing".into(),
            Some(serde_json::to_vec(&json!({ "digests": [layer_a] })).unwrap()),
            [U, U, F, A, A, F],
        ),
        (
            Method::PUT,
            format!("/v1/blobs/{layer_a}"),
            Some(layer_a_bytes),
            [U, U, F, A, A, F],
        ),
        (
            Method::GET,
            format!("/v1/blobs/{layer_a}"),
            None,
            [U, U, A, A, A, F],
        ),
        (
            Method::HEAD,
            format!("/v1/blobs/{layer_a}"),
            None,
            [U, U, A, A, A, F],
        ),
        (
            Method::GET,
            format!("/v1/blobs/{layer_b}"),
            None,
            [U, U, F, F, A, A],
        ),
        (
            Method::POST,
            "/v1/lookup".into(),
            Some(serde_json::to_vec(&json!({ "namespaces": ["acme/web"], "key": "k1" })).unwrap()),
            [U, U, A, A, A, F],
        ),
        (Method::GET, "/v1/stats".into(), None, [U, U, A, A, A, A]),
        (Method::GET, "/v1/entries".into(), None, [U, U, A, A, A, A]),
        (
            Method::GET,
            "/v1/no-such-route".into(),
            None,
            [U, U, A, A, A, A],
        ),
        // A method the route lacks: a 405 for any valid caller.
        (Method::DELETE, "/v1/stats".into(), None, [U, U, A, A, A, A]),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expect) in cases {
        for ((who, caller), want) in callers.iter().zip(expect) {
            let mut r = s.req(method.clone(), &path, *caller);
            if let Some(b) = &body {
                r = r.body(b.clone());
            }
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let auth_header = resp.headers().get("www-authenticate").cloned();
            let got = match status {
                StatusCode::UNAUTHORIZED => U,
                StatusCode::FORBIDDEN => F,
                _ => A,
            };
            if got != want {
                failures.push(format!(
                    "{method} {path} as {who}: got {status}, want {want:?}"
                ));
                continue;
            }
            if got == U {
                assert!(
                    auth_header.is_some_and(|h| h.to_str().unwrap().starts_with("Bearer")),
                    "{method} {path}: 401 without WWW-Authenticate: Bearer"
                );
            }
            if got != A && method != Method::HEAD {
                let (_, code) = code_of(resp).await;
                let want_code = if got == U {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(code, want_code, "{method} {path} as {who}: JSON error code");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "access matrix mismatches:\n{}",
        failures.join("\n")
    );
}

/// A fork's pull request runs with a read token: it restores main's cache but cannot replace,
/// commit over or add to it.
#[tokio::test(flavor = "multi_thread")]
async fn read_token_cannot_poison_the_main_branch_cache() {
    let (_tmp, dir) = data_dir();
    let write = token(&dir, Role::Write, &["acme/*"], "main");
    let read = token(&dir, Role::Read, &["acme/*"], "fork");
    let s = TestServer::start(&dir).await;
    let (good, _, _) = image(b"main's build");
    let (evil, evil_layer, evil_id) = image(b"poisoned");
    let path = "/v1/images/acme%2Fweb%2Fmain/k";
    let r = s
        .req(Method::PUT, path, Some(&write))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let before: Value = s
        .req(Method::GET, &format!("{path}/manifest"), Some(&read))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let r = s
        .req(Method::PUT, path, Some(&read))
        .body(evil)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let commit = json!({ "images": [{ "id": evil_id, "parent": null, "tags": [] }] });
    let r = s
        .req(Method::PUT, &format!("{path}/manifest"), Some(&read))
        .json(&commit)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .req(Method::PUT, &format!("/v1/blobs/{evil_layer}"), Some(&read))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .req(Method::POST, "/v1/blobs", Some(&read))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a read token cannot post blobs either");

    let after: Value = s
        .req(Method::GET, &format!("{path}/manifest"), Some(&read))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["images"], after["images"], "the entry changed");
    let missing: Value = s
        .req(Method::POST, "/v1/blobs/missing", Some(&write))
        .json(&json!({ "digests": [evil_layer] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        missing["missing"],
        json!([evil_layer]),
        "a poisoned blob was stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_and_entries_stay_within_readable_namespaces() {
    let (_tmp, dir) = data_dir();
    let admin = token(&dir, Role::Admin, &["*"], "admin");
    let read = token(&dir, Role::Read, &["acme/web/*", "acme/lib"], "reader");
    let s = TestServer::start(&dir).await;
    for ns in ["acme%2Fweb%2Fmain", "acme%2Flib", "secret%2Fapp"] {
        let (tar, _, _) = image(ns.as_bytes());
        let r = s
            .req(Method::PUT, &format!("/v1/images/{ns}/k"), Some(&admin))
            .body(tar)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let list: Value = s
        .req(Method::GET, "/v1/entries", Some(&read))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme/lib", "acme/web/main"]);
    let r = s
        .req(
            Method::GET,
            "/v1/entries?namespace=secret%2Fapp",
            Some(&read),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A lookup naming an unreadable namespace is refused, not silently narrowed.
    let lookup = |namespaces: Value| {
        s.req(Method::POST, "/v1/lookup", Some(&read))
            .json(&json!({ "namespaces": namespaces, "key": "k" }))
            .send()
    };
    let r = lookup(json!(["acme/web/pr-7", "secret/app"]))
        .await
        .unwrap();
    let (status, code) = code_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = lookup(json!(["acme/web/pr-7", "acme/web/main"]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["match"], "fallback");
    // `acme/web/*` does not cover `acme/web` itself.
    let r = lookup(json!(["acme/web"])).await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_at_once_and_revoking_the_last_keeps_the_server_closed() {
    let (_tmp, dir) = data_dir();
    let t = token(&dir, Role::Read, &["*"], "ci");
    let s = TestServer::start(&dir).await;
    let get = || s.req(Method::GET, "/v1/stats", Some(&t)).send();
    assert_eq!(get().await.unwrap().status(), 200);

    // A second live token keeps auth on while the first is revoked.
    let other = token(&dir, Role::Read, &["*"], "other");
    common::with_index(&dir, |db| {
        db.revoke_token(&TokenSelector::Name("ci".into()))
            .unwrap()
            .unwrap()
    });
    let (status, code) = code_of(get().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = s
        .req(Method::GET, "/v1/stats", Some(&other))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed = common::with_index(&dir, |db| db.list_tokens().unwrap());
    assert!(listed[0].revoked.is_some() && listed[1].last_used.is_some());

    // With no live token left the server stays closed (it was started with `--open`, too):
    // every caller, anonymous or not, is refused and told why.
    common::with_index(&dir, |db| {
        db.revoke_token(&TokenSelector::Name("other".into()))
            .unwrap()
            .unwrap()
    });
    for (method, path) in [
        (Method::GET, "/v1/stats"),
        (Method::PUT, "/v1/images/acme%2Fweb/k"),
        (Method::DELETE, "/v1/images/acme%2Fweb/k"),
        (Method::GET, "/metrics"),
    ] {
        for t in [None, Some(other.as_str())] {
            let r = s.req(method.clone(), path, t).send().await.unwrap();
            let (status, body) = (r.status(), r.text().await.unwrap());
            assert_eq!(status, 401, "{method} {path} with {t:?}: {body}");
            assert!(body.contains("no live token"), "{body}");
        }
    }
}

/// Without `--open` a server with no token at all refuses everything but /healthz, and the first
/// token created lets its holder in at once; with `--open` that same first token turns auth on.
#[tokio::test(flavor = "multi_thread")]
async fn without_open_a_tokenless_server_is_closed_and_the_first_token_opens_it_to_its_holder() {
    let (_tmp, dir) = data_dir();
    let s = TestServer::start_open(&dir, false).await;
    let r = s.req(Method::GET, "/v1/stats", None).send().await.unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token create"), "{body}");
    let r = s.req(Method::GET, "/healthz", None).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let t = token(&dir, Role::Read, &["*"], "first");
    let r = s
        .req(Method::GET, "/v1/stats", Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (_tmp, dir) = data_dir();
    let s = TestServer::start(&dir).await;
    let r = s.req(Method::GET, "/v1/stats", None).send().await.unwrap();
    assert_eq!(r.status(), 200, "open while no token exists");
    let t = token(&dir, Role::Read, &["*"], "first");
    let r = s.req(Method::GET, "/v1/stats", None).send().await.unwrap();
    assert_eq!(r.status(), 401, "the first token turns auth on");
    let r = s
        .req(Method::GET, "/v1/stats", Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The CLI through the real binary: the token is printed once, listed never, and revocable.
#[test]
fn token_cli_creates_lists_and_revokes() {
    let (_tmp, dir) = data_dir();
    let bin = env!("CARGO_BIN_EXE_layercache-server");
    let database = common::database_for(&dir);
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin);
        if let Some(url) = &database {
            cmd.env("LAYERCACHE_DATABASE", url);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let (ok, out, err) = run(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--role",
        "write",
        "--namespace",
        "acme/*",
        "--namespace",
        "tools",
        "--name",
        "ci-main",
    ]);
    assert!(ok, "{err}");
    let tok = out.trim().to_string();
    assert!(tok.starts_with("lc_") && tok.len() == 67, "printed {out:?}");

    let (ok, list, err) = run(&["token", "list", "--data-dir", d]);
    assert!(ok, "{err}");
    assert!(list.contains("ci-main\twrite\tacme/*,tools\t"), "{list}");
    assert!(!list.contains(&tok), "token list shows the token");
    let stored = match &database {
        // Every column of every token row, as text.
        Some(url) => std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let rows = c.query("SELECT t::TEXT FROM tokens t", &[]).unwrap();
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<String>()
            })
            .join()
            .unwrap()
            .into_bytes()
        }),
        None => std::fs::read(dir.join("layercache.db")).unwrap(),
    };
    assert!(
        !stored.windows(tok.len()).any(|w| w == tok.as_bytes()),
        "the token is stored in clear"
    );

    let (ok, _, err) = run(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--role",
        "owner",
        "--namespace",
        "*",
    ]);
    assert!(!ok && err.contains("`read`, `write` or `admin`"), "{err}");
    let (ok, _, err) = run(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--role",
        "read",
        "--namespace",
        "acme/",
    ]);
    assert!(
        !ok && err.contains("namespace pattern `acme/` is invalid"),
        "{err}"
    );

    let (ok, out, err) = run(&["token", "revoke", "--data-dir", d, "ci-main"]);
    assert!(ok && out.contains("revoked token #1"), "{out}{err}");
    let (ok, _, err) = run(&["token", "revoke", "--data-dir", d, "1"]);
    assert!(!ok && err.contains("no live token `1`"), "{err}");
    let (_, list, _) = run(&["token", "list", "--data-dir", d]);
    let row = list.lines().nth(1).unwrap();
    assert!(!row.ends_with("\t-"), "revocation time missing: {row}");
}

/// HTTPS with a certificate made here, and a client trusting only it: a full push and restore
/// with a token.
#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trip_with_a_self_signed_certificate() {
    let (tmp, dir) = data_dir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = tls::load_config(&cert_path, &key_path).unwrap();
    let t = token(&dir, Role::Write, &["acme/*"], "ci");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let settings = Settings {
        database: common::database_for(&dir),
        ..Settings::new(&dir)
    };
    tokio::spawn(async move {
        serve_tls(listener, settings, config, async {
            let _ = rx.await;
        })
        .await
        .expect("TLS server failed");
    });
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let s =
        TestServer::wait_healthy(format!("https://localhost:{}", addr.port()), client, tx).await;

    let (tar, layer, _) = image(b"over tls");
    let r = s
        .req(Method::PUT, "/v1/images/acme%2Fweb/k", Some(&t))
        .body(tar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .req(Method::GET, &format!("/v1/blobs/{layer}"), Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(Digest::of(&body), layer);
    let r = s.req(Method::GET, "/v1/stats", None).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Plain HTTP to the TLS port gets no answer, and a client not trusting the cert fails.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", addr)
        .build()
        .unwrap()
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(untrusting.is_err(), "a client without the cert connected");
}

#[test]
fn unusable_tls_files_are_reported_with_their_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = tmp.path().join("cert.pem");
    std::fs::write(&cert, "not a pem").unwrap();
    let e = tls::load_config(&cert, &tmp.path().join("absent.pem")).unwrap_err();
    assert!(e.to_string().contains("cert.pem"), "{e}");
    let real = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, real.cert.pem()).unwrap();
    let e = tls::load_config(&cert, &tmp.path().join("absent.pem")).unwrap_err();
    assert!(e.to_string().contains("absent.pem"), "{e}");
}

/// The real binary: with no token and no `--open` it refuses requests and says how to get in;
/// with `--open` it serves and warns that it is open; with `--tls-cert/--tls-key` and a token it
/// serves HTTPS and refuses anonymous requests.
#[tokio::test(flavor = "multi_thread")]
async fn binary_warns_when_open_and_serves_https_with_tls_flags() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, Stdio};

    /// Starts the binary; returns it with the address it printed.
    fn start(args: &[&str]) -> (Child, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_layercache-server"));
        let dir = args.iter().skip_while(|a| **a != "--data-dir").nth(1);
        if let Some(url) = dir.and_then(|d| common::database_for(Path::new(d))) {
            cmd.env("LAYERCACHE_DATABASE", url);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        (child, url)
    }
    fn stop(mut child: Child) -> String {
        child.kill().unwrap();
        child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        err
    }

    let (tmp, dir) = data_dir();
    let d = dir.to_str().unwrap();
    let (child, url) = start(&["--listen", "127.0.0.1:0", "--data-dir", d]);
    let r = reqwest::get(format!("{url}/v1/stats")).await.unwrap();
    assert_eq!(r.status(), 401);
    let log = stop(child);
    assert!(
        log.contains("no live token"),
        "no closed-mode warning in:\n{log}"
    );

    let (child, url) = start(&["--listen", "127.0.0.1:0", "--data-dir", d, "--open"]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let r = reqwest::get(format!("{url}/v1/stats")).await.unwrap();
    assert_eq!(r.status(), 200);
    let log = stop(child);
    assert!(
        log.contains("the server is OPEN"),
        "no open-mode warning in:\n{log}"
    );

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let t = token(&dir, Role::Read, &["*"], "ci");
    let (child, url) = start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        d,
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let addr: std::net::SocketAddr = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("printed {url:?}"))
        .parse()
        .unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let at = format!("https://localhost:{}", addr.port());
    assert_eq!(
        client
            .get(format!("{at}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client.get(format!("{at}/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{at}/v1/stats"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = stop(child);
    assert!(!log.contains("OPEN") && log.contains("auth is on"), "{log}");
}
