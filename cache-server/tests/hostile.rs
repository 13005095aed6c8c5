//! Issue 12: the server in front of a whole fleet, tried as an attacker (or an unlucky operator)
//! would. Each test is a finding of the issue that failed before its fix.

mod common;

use common::{start, start_in, token};
use layercache_server::auth::Role;
use layercache_shared::Digest;
use reqwest::StatusCode;

fn blob_path(data_dir: &std::path::Path, d: &Digest) -> std::path::PathBuf {
    let hex = d.hex();
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// A blob file truncated while the server sends it used to be a SIGBUS in the mmap send path,
/// killing the server (and this test binary with it). Now the transfer aborts and the server
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_truncated_under_a_download_aborts_it_and_the_server_lives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(|_| {}).await;
    let size = 24usize << 20;
    let content: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&content);
    let r = s
        .client
        .put(format!("{}/v1/blobs/{d}", s.url))
        .body(content)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A client with a small receive buffer, so most of the blob is still to be read from the
    // file when it is cut (loopback buffers would otherwise take it all at once).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    let addr = s.url.trim_start_matches("http://").parse().unwrap();
    let mut conn = sock.connect(addr).await.unwrap();
    conn.write_all(format!("GET /v1/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut received = conn.read(&mut buf).await.unwrap();
    assert!(received > 0);
    // Cut the file to 1 MiB behind the server's back, mid-transfer.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_path(&s.data_dir, &d))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < size, "a truncated blob was sent whole");
    let r = s
        .client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the server died");
}

/// A token that may write `acme/*` used to commit a v1 manifest naming another namespace's image
/// (or a config naming another namespace's layers) because the commit only checked that the blobs
/// existed, and could then read them back. Content addressing is no read path: `blobs/missing`
/// says "missing" for what the caller cannot read, and a commit may only name blobs the caller
/// can read or uploaded itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_cannot_name_another_namespaces_blobs() {
    use layercache_test_support::tarball::{Image, layer, save};
    let (tmp, data) = common::data_dir();
    let victim = token(&data, Role::Write, &["victim/*"], "victim");
    let attacker = token(&data, Role::Write, &["acme/*"], "acme");
    let s = start_in(tmp, data, |_| {}).await;
    let img = Image::new(
        vec![layer(&[("secret.txt", b"victim's secret")])],
        &["ADD secret"],
    )
    .tagged("victim/app:1");
    let r = s
        .client
        .put(format!("{}/v1/images/victim%2Fapp/k1", s.url))
        .bearer_auth(&victim)
        .body(save(&[&img]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (image_id, layer_id) = (img.id(), img.diff_ids()[0]);

    // The attacker learns nothing from asking which blobs are missing...
    let r: serde_json::Value = s
        .client
        .post(format!("{}/v1/blobs/missing", s.url))
        .bearer_auth(&attacker)
        .json(&serde_json::json!({"digests": [image_id, layer_id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["missing"].as_array().unwrap().len(), 2, "{r}");
    // ...and cannot commit an entry naming the victim's image...
    let r = s
        .client
        .put(format!("{}/v1/images/acme%2Fsteal/k/manifest", s.url))
        .bearer_auth(&attacker)
        .json(&serde_json::json!({"images": [{"id": image_id, "parent": null, "tags": []}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_blobs", "{body}");
    // ...nor one whose own config names the victim's layer.
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [layer_id]},
        "history": [{"created_by": "ADD secret"}]
    }))
    .unwrap();
    let cfg = Digest::of(&config);
    let r = s
        .client
        .put(format!("{}/v1/blobs/{cfg}", s.url))
        .bearer_auth(&attacker)
        .body(config)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .client
        .put(format!("{}/v1/images/acme%2Fsteal/k/manifest", s.url))
        .bearer_auth(&attacker)
        .json(&serde_json::json!({"images": [{"id": cfg, "parent": null, "tags": []}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["missing"][0], layer_id.to_string(), "{body}");
    // The layer stays unreadable to the attacker.
    let r = s
        .client
        .get(format!("{}/v1/blobs/{layer_id}", s.url))
        .bearer_auth(&attacker)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Someone who really has the layer uploads it (stored once: dedup) and then commits.
    let layer_bytes = layer(&[("secret.txt", b"victim's secret")]);
    assert_eq!(Digest::of(&layer_bytes), layer_id);
    let r = s
        .client
        .put(format!("{}/v1/blobs/{layer_id}", s.url))
        .bearer_auth(&attacker)
        .body(layer_bytes)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .client
        .put(format!("{}/v1/images/acme%2Fmine/k/manifest", s.url))
        .bearer_auth(&attacker)
        .json(&serde_json::json!({"images": [{"id": cfg, "parent": null, "tags": []}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// An admin token limited to `acme/*` used to see every namespace on the dashboard, the entry
/// pages, `/v1/largest`, `/metrics`, history and builds, and the entries of other namespaces
/// sharing a layer; any write token could post build reports for any namespace.
#[tokio::test(flavor = "multi_thread")]
async fn operator_views_stay_inside_the_callers_namespaces() {
    use layercache_test_support::tarball::{Image, layer, save};
    let (tmp, data) = common::data_dir();
    let ops = token(&data, Role::Admin, &["*"], "ops");
    let acme_admin = token(&data, Role::Admin, &["acme/*"], "acme-admin");
    let acme_ci = token(&data, Role::Write, &["acme/*"], "acme-ci");
    let s = start_in(tmp, data, |_| {}).await;
    // The same layer in both tenants' entries.
    let base = layer(&[("base.txt", b"shared base")]);
    for (ns, tag) in [
        ("acme%2Fweb", "acme/web:1"),
        ("victim%2Fapp", "victim/app:1"),
    ] {
        let img = Image::new(vec![base.clone()], &["ADD base"]).tagged(tag);
        let r = s
            .client
            .put(format!("{}/v1/images/{ns}/k", s.url))
            .bearer_auth(&ops)
            .body(save(&[&img]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let get = |path: &str, tok: &str| {
        s.client
            .get(format!("{}{path}", s.url))
            .bearer_auth(tok)
            .send()
    };
    for path in [
        "/",
        "/metrics",
        "/v1/largest",
        "/v1/stats/history?window=1h",
        "/v1/builds",
        "/v1/builds?namespace=victim/app",
        "/entries/victim%2Fapp/k",
    ] {
        assert_eq!(
            get(path, &acme_admin).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            get(path, &ops).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Narrowed to its own namespace, the limited admin sees its views...
    for path in [
        "/?namespace=acme/web",
        "/v1/builds?namespace=acme/web",
        "/entries/acme%2Fweb/k",
    ] {
        let r = get(path, &acme_admin).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            !r.text().await.unwrap().contains("victim"),
            "{path} names the other tenant"
        );
    }
    // ...and an entry's detail lists sharers only from its namespaces.
    let detail: serde_json::Value = get("/v1/entries/acme%2Fweb/k", &acme_ci)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!detail.to_string().contains("victim"), "{detail}");
    let detail: serde_json::Value = get("/v1/entries/acme%2Fweb/k", &ops)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(detail.to_string().contains("victim"), "{detail}");
    // Build reports only for namespaces the runner writes.
    let report = |ns: &str| {
        serde_json::json!({"namespace": ns, "key": "k", "cache": "miss", "image_id": null,
            "seconds": {"lookup": 0.1, "restore": 0.0, "build": 1.0, "push": 0.1, "total": 1.2}})
    };
    for (ns, want) in [
        ("victim/app", StatusCode::FORBIDDEN),
        ("acme/web", StatusCode::CREATED),
    ] {
        let r = s
            .client
            .post(format!("{}/v1/builds", s.url))
            .bearer_auth(&acme_ci)
            .json(&report(ns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{ns}");
    }
}

/// Made-up HTTP methods each used to add a `/metrics` series.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_do_not_grow_the_metrics() {
    let s = start(|_| {}).await;
    for i in 0..20 {
        let m = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        s.client
            .request(m, format!("{}/v1/stats", s.url))
            .send()
            .await
            .unwrap();
    }
    let text = s
        .client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("BREW"), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
}
