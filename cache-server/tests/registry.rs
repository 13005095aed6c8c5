//! The registry protocol (`/v2/`) in-process, driven over HTTP with reqwest: what the OCI
//! conformance suite does not cover (tokens and `docker login`, tenant isolation, resumable
//! uploads, bad input storing nothing, garbage collection of replaced manifests).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Server, start, start_in, token};
use layercache_server::auth::Role;
use layercache_server::gc::{self, Sweep};
use layercache_server::lru::Policy;
use layercache_server::store::Store;
use layercache_shared::Digest;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

impl Server {
    fn req(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.url));
        match token {
            // What `docker login HOST -u ci -p TOKEN` makes the engine send.
            Some(t) => r.basic_auth("ci", Some(t)),
            None => r,
        }
    }

    /// Pushes `content` into `repo` with a monolithic POST; returns the status.
    async fn push_blob(&self, repo: &str, content: &[u8], token: Option<&str>) -> StatusCode {
        let d = Digest::of(content);
        self.req(
            reqwest::Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            token,
        )
        .body(content.to_vec())
        .send()
        .await
        .unwrap()
        .status()
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &[u8],
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                token,
            )
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_vec())
            .send()
            .await
            .unwrap();
        code_of(r).await
    }
}

/// Status and the first error code of a registry answer.
async fn code_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

/// An OCI image manifest naming `config` and `layers`.
fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |b: &[u8], mt: &str| json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(config, "application/vnd.oci.image.config.v1+json"),
        "layers": layers.iter().map(|l| desc(l, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn files_in(dir: &Path) -> usize {
    common::files_under(dir).len()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_login_with_a_token_and_roles_per_repository() {
    let (tmp, data) = common::data_dir();
    let write = token(&data, Role::Write, &["acme/*"], "ci-main");
    let read = token(&data, Role::Read, &["acme/*"], "ci-pr");
    let s = start_in(tmp, data, |_| {}).await;
    use reqwest::Method as M;

    // The version check `docker login` starts with: a Basic challenge, then the token works.
    let r = s.req(M::GET, "/v2/", None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"layercache\""
    );
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(code_of(r).await.1, "UNAUTHORIZED");
    let r = s.req(M::GET, "/v2/", Some(&write)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .req(M::GET, "/v2/", Some("lc_not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A bearer token is taken as well (skopeo --registry-token).
    let r = s
        .client
        .get(format!("{}/v2/", s.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A read token cannot push: 403 DENIED, nothing stored.
    let config = b"{\"rootfs\":{}}".as_slice();
    let layer = b"layer bytes".as_slice();
    assert_eq!(
        s.push_blob("acme/web", layer, Some(&read)).await,
        StatusCode::FORBIDDEN
    );
    let r = s
        .req(M::POST, "/v2/acme/web/blobs/uploads/", Some(&read))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (StatusCode::FORBIDDEN, "DENIED".into()));
    // The write token pushes into its namespaces, not elsewhere.
    assert_eq!(
        s.push_blob("other/web", layer, Some(&write)).await,
        StatusCode::FORBIDDEN
    );
    for b in [config, layer] {
        assert_eq!(
            s.push_blob("acme/web", b, Some(&write)).await,
            StatusCode::CREATED
        );
    }
    let m = manifest(config, &[layer]);
    assert_eq!(
        s.put_manifest("acme/web", "main", &m, Some(&read)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put_manifest("acme/web", "main", &m, Some(&write)).await.0,
        StatusCode::CREATED
    );
    // The read token pulls it.
    let r = s
        .req(M::GET, "/v2/acme/web/manifests/main", Some(&read))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"],
        Digest::of(&m).to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), m);
    // Deleting content is an admin's.
    let r = s
        .req(M::DELETE, "/v2/acme/web/manifests/main", Some(&write))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_addressing_is_no_way_into_another_repository() {
    let (tmp, data) = common::data_dir();
    let victim = token(&data, Role::Write, &["victim/*"], "victim");
    let acme = token(&data, Role::Write, &["acme/*"], "acme");
    let s = start_in(tmp, data, |_| {}).await;
    use reqwest::Method as M;
    let secret = b"victim's private layer".as_slice();
    let d = Digest::of(secret);
    assert_eq!(
        s.push_blob("victim/app", secret, Some(&victim)).await,
        StatusCode::CREATED
    );

    // Knowing the digest does not make it readable from acme's repositories...
    let r = s
        .req(M::GET, &format!("/v2/acme/web/blobs/{d}"), Some(&acme))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    // ...nor can a manifest in acme's repository reference it...
    let config = b"{}".as_slice();
    assert_eq!(
        s.push_blob("acme/web", config, Some(&acme)).await,
        StatusCode::CREATED
    );
    let (status, code) = s
        .put_manifest(
            "acme/web",
            "steal",
            &manifest(config, &[secret]),
            Some(&acme),
        )
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
    // ...nor can it be mounted from a repository acme cannot read (explicitly or not): the
    // server opens an ordinary upload session instead.
    for query in [format!("mount={d}&from=victim/app"), format!("mount={d}")] {
        let r = s
            .req(
                M::POST,
                &format!("/v2/acme/web/blobs/uploads/?{query}"),
                Some(&acme),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{query}");
        assert!(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .contains("/blobs/uploads/")
        );
    }
    let r = s
        .req(M::HEAD, &format!("/v2/acme/web/blobs/{d}"), Some(&acme))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Uploading the same content themselves is how acme gets it: then it is theirs to read.
    assert_eq!(
        s.push_blob("acme/web", secret, Some(&acme)).await,
        StatusCode::CREATED
    );
    let r = s
        .req(M::GET, &format!("/v2/acme/web/blobs/{d}"), Some(&acme))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_resumes_after_a_pause_and_refuses_chunks_out_of_order() {
    let s = start(|_| {}).await;
    use reqwest::Method as M;
    let content = b"0123456789abcdefghij";
    let r = s
        .req(M::POST, "/v2/acme/up/blobs/uploads/", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let patch = |range: &str, body: &[u8]| {
        s.req(M::PATCH, &loc, None)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
    };
    let r = patch("0-9", &content[..10]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-9");
    // The client pauses; the session is still there and says where it stands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.req(M::GET, &loc, None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-9");
    // A chunk that skips ahead, or repeats, is refused with 416 and changes nothing.
    for (range, body) in [("15-19", &content[15..]), ("0-9", &content[..10])] {
        let r = patch(range, body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
    }
    let r = patch("10-19", &content[10..]).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-19");
    // The wrong digest at the end: refused, and the session is gone with its bytes.
    let wrong = Digest::of(b"something else");
    let r = s
        .req(M::PUT, &format!("{loc}?digest={wrong}"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let r = s.req(M::GET, &loc, None).send().await.unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    assert_eq!(files_in(&s.data_dir.join("tmp")), 0);
    assert_eq!(files_in(&s.data_dir.join("uploads")), 0);
    assert_eq!(files_in(&s.data_dir.join("blobs")), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_upload_sessions_expire() {
    let s = start(|st| st.upload_timeout = Duration::from_secs(1)).await;
    use reqwest::Method as M;
    let r = s
        .req(M::POST, "/v2/acme/up/blobs/uploads/", None)
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = s
        .req(M::PATCH, &loc, None)
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The chunk is a staging file (where every replica of a fleet finds it), not a temp file.
    assert_eq!(files_in(&s.data_dir.join("tmp")), 0);
    assert_eq!(files_in(&s.data_dir.join("uploads")), 1);
    // Expiry runs every second; wait for its effect (the staging file going), bounded. Asking
    // the session for its state would count as activity, so only the disk is watched.
    let mut gone = false;
    for _ in 0..100 {
        if files_in(&s.data_dir.join("uploads")) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the idle session was never dropped");
    let r = s.req(M::GET, &loc, None).send().await.unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_spec_error_and_stores_nothing() {
    let s = start(|st| st.max_upload_bytes = 1000).await;
    use reqwest::Method as M;
    let cases: Vec<(RequestBuilder, StatusCode, &str)> = vec![
        (
            s.req(M::PUT, "/v2/acme/web/manifests/v1", None)
                .body("{not json"),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            s.req(M::PUT, "/v2/acme/web/manifests/v1", None)
                .body(r#"{"schemaVersion":1,"name":"x"}"#),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            s.req(M::PUT, "/v2/acme/web/manifests/v1", None)
                .body(manifest(b"absent config", &[])),
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            s.req(
                M::PUT,
                &format!("/v2/acme/web/manifests/{}", Digest::of(b"other")),
                None,
            )
            .body(manifest(b"x", &[])),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            s.req(
                M::POST,
                &format!("/v2/acme/web/blobs/uploads/?digest={}", Digest::of(b"x")),
                None,
            )
            .body("not x"),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            s.req(
                M::POST,
                &format!(
                    "/v2/acme/web/blobs/uploads/?digest={}",
                    Digest::of(&[1u8; 2000])
                ),
                None,
            )
            .body(vec![1u8; 2000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
        ),
        (
            s.req(M::GET, "/v2/Acme/Web/manifests/v1", None),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            s.req(M::PUT, "/v2/acme/web/manifests/.bad", None)
                .body(manifest(b"x", &[])),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            s.req(
                M::POST,
                "/v2/acme/web/blobs/uploads/?digest=sha256:nothex",
                None,
            )
            .body("x"),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            s.req(M::PATCH, "/v2/acme/web/blobs/uploads/no-such-session", None)
                .body("x"),
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        assert_eq!(code_of(r).await, (status, code.to_string()), "case {i}");
    }
    // A chunked upload going past the limit is refused too.
    let r = s
        .req(M::POST, "/v2/acme/web/blobs/uploads/", None)
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = s
        .req(M::PATCH, &loc, None)
        .body(vec![0u8; 600])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .req(M::PATCH, &loc, None)
        .body(vec![0u8; 600])
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID".into())
    );
    s.req(M::DELETE, &loc, None).send().await.unwrap();
    // Nothing was stored by any of them (the one manifest blob of the refused commit aside,
    // which is unreferenced and goes with the grace period).
    let stored: Vec<PathBuf> = common::files_under(&s.data_dir.join("blobs"));
    assert!(stored.len() <= 1, "{stored:?}");
    let counts = common::with_index(&s.data_dir, |db| db.registry_counts().unwrap());
    assert_eq!(counts, (0, 0));
    assert_eq!(files_in(&s.data_dir.join("tmp")), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_cache_manifest_and_the_blobs_only_it_used_are_collected() {
    let s = start(|_| {}).await;
    let (config, base, stale, fresh, other) = (
        b"{}".as_slice(),
        b"base layer every build uses".as_slice(),
        b"layer of the previous build".as_slice(),
        b"layer of this build".as_slice(),
        b"layer of another project".as_slice(),
    );
    // Another project's tag, pushed first (so it is the older one below).
    for b in [config, other] {
        assert_eq!(
            s.push_blob("acme/other", b, None).await,
            StatusCode::CREATED
        );
    }
    let other_m = manifest(config, &[other]);
    assert_eq!(
        s.put_manifest("acme/other", "v1", &other_m, None).await.0,
        StatusCode::CREATED
    );
    for b in [config, base, stale, fresh] {
        assert_eq!(
            s.push_blob("acme/cache", b, None).await,
            StatusCode::CREATED
        );
    }
    let old = manifest(config, &[base, stale]);
    let new = manifest(config, &[base, fresh]);
    // What BuildKit's mode=max export does on every build: the same tag, a new manifest.
    assert_eq!(
        s.put_manifest("acme/cache", "buildcache", &old, None)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put_manifest("acme/cache", "buildcache", &new, None)
            .await
            .0,
        StatusCode::CREATED
    );
    // A pull counts as a hit of the repository.
    let r = s
        .req(
            reqwest::Method::GET,
            "/v2/acme/cache/manifests/buildcache",
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), new);
    let stats: Value = s
        .client
        .get(format!("{}/v1/stats", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["hits"], 1);
    assert_eq!(
        (stats["tags"].as_u64(), stats["manifests"].as_u64()),
        (Some(2), Some(3))
    );
    // Operators see the tags: JSON, the dashboard, /metrics.
    let tags: Value = s
        .client
        .get(format!("{}/v1/tags?namespace=acme/cache", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"].as_array().unwrap().len(), 1, "{tags}");
    let t = &tags["tags"][0];
    assert_eq!(
        (t["tag"].as_str(), t["hits"].as_u64()),
        (Some("buildcache"), Some(1))
    );
    let want_size = [config, base, fresh, &new]
        .iter()
        .map(|b| b.len())
        .sum::<usize>();
    assert_eq!(t["total_size"].as_u64(), Some(want_size as u64));
    // `/v1/tags` pages like `/v1/entries`: one tag per page, the cursor leads to the other.
    let get = |q: String| {
        let c = s.client.clone();
        let url = format!("{}/v1/tags?{q}", s.url);
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = get("limit=1".into()).await;
    assert_eq!(first["tags"].as_array().unwrap().len(), 1, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = get(format!("limit=1&cursor={cursor}")).await;
    assert_eq!(second["tags"].as_array().unwrap().len(), 1, "{second}");
    assert!(
        second.get("next_cursor").is_none(),
        "the last page: {second}"
    );
    assert_ne!(first["tags"][0], second["tags"][0]);
    let bad = s
        .client
        .get(format!("{}/v1/tags?cursor=zz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let page = s
        .client
        .get(&s.url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="registry-tags""#) && page.contains("buildcache"));
    let metrics = s
        .client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("layercache_registry_tags 2"), "{metrics}");

    // A collection past the grace period, on this thread taken off the runtime (the store's
    // calls block, and PostgreSQL's client refuses to run inside a runtime).
    tokio::task::block_in_place(|| {
        let database = common::database_for(&s.data_dir);
        let store = Store::open_for_maintenance_with_index(
            &s.data_dir,
            &layercache_server::store::blobs::BlobLocation::DataDir,
            database.as_deref(),
        )
        .unwrap();
        let sweep = Sweep {
            grace_secs: 0,
            orphans: None,
        };
        let now = layercache_server::store::sqlite::now() + 1;
        let report = gc::collect(&store, &Policy::default(), sweep, now).unwrap();
        assert_eq!(report.manifests_deleted, 1, "{report:?}");
        // The old manifest's bytes and its own layer went; what the new one uses stays.
        assert_eq!(report.blobs_deleted, 2, "{report:?}");
        let gone = store
            .db
            .blob_sizes(&[Digest::of(stale), Digest::of(&old)])
            .unwrap();
        assert!(gone.is_empty(), "{gone:?}");
        let kept = [config, base, fresh, &new, other, &other_m].map(Digest::of);
        assert_eq!(store.db.blob_sizes(&kept).unwrap().len(), kept.len());

        // With a quota, the least recently used tag goes, and with it what only it held.
        store
            .db
            .resolve_tag("acme/cache", "buildcache")
            .unwrap()
            .unwrap();
        let policy = Policy {
            max_size: Some(store.db.stored_bytes().unwrap() - 1),
            ttl_secs: None,
        };
        let report = gc::collect(&store, &policy, sweep, now + 10).unwrap();
        assert_eq!(report.entries_evicted, 1, "{report:?}");
        assert!(
            store
                .db
                .resolve_tag("acme/cache", "buildcache")
                .unwrap()
                .is_some()
        );
        assert!(store.db.resolve_tag("acme/other", "v1").unwrap().is_none());
        assert!(
            store
                .db
                .blob_sizes(&[Digest::of(other)])
                .unwrap()
                .is_empty()
        );
    });
}
