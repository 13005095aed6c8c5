//! `--redirect-blobs`: with blobs in a real S3-compatible store (Garage, `garage/mod.rs`), blob
//! GETs of the v1 API and the registry answer `307` to a presigned object URL after the usual
//! auth and existence checks; real clients (reqwest, skopeo) follow it and get the same bytes.

mod common;
mod garage;

use std::process::Command;

use garage::Garage;
use layercache_server::auth::Role;
use layercache_shared::Digest;
use layercache_test_support::tarball::{Image, layer, noise, save};
use reqwest::StatusCode;
use reqwest::redirect::Policy;

/// The flag needs an object store: a server with local blobs refuses to start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn redirect_blobs_is_refused_without_an_object_store() {
    let (_tmp, dir) = common::data_dir();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_layercache-server"))
            .args(["--open", "--listen", "127.0.0.1:0", "--redirect-blobs"])
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--redirect-blobs needs blobs in an object store"),
        "{err}"
    );
}

/// v1 and registry blob GETs redirect to the bucket; the redirect is only given to callers that
/// may read the blob, only for blobs that exist, and following it yields the exact bytes (whole
/// and by range). HEAD and restores still answer directly.
#[tokio::test(flavor = "multi_thread")]
async fn blob_gets_redirect_to_presigned_urls_that_serve_the_bytes() {
    let g = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let store = g.blob_store("redir");
    let s = common::start(move |st| {
        st.blob_store = store;
        st.redirect_blobs = true;
    })
    .await;
    let token = common::token(&s.data_dir, Role::Write, &["acme/*"], "ci");
    let big = noise(4, 3 << 20);
    let image = Image::new(vec![layer(&[("big.bin", &big)])], &["ADD big"]).tagged("app:1");
    let r = s
        .client
        .put(format!("{}/v1/images/acme%2Fweb/k", s.url))
        .bearer_auth(&token)
        .body(save(&[&image]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let layer_bytes = &image.layers[0];
    let d = image.diff_ids()[0];

    let manual = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/v1/blobs/{d}", s.url);
    assert_eq!(
        manual.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "no redirect before auth"
    );
    let r = manual.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&g.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let missing = format!("{}/v1/blobs/{}", s.url, Digest::of(b"absent"));
    let r = manual
        .get(&missing)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    // (403 for this token: a blob it cannot show exists is not its to see.)
    assert!(
        r.status().is_client_error() && !r.headers().contains_key("location"),
        "no redirect to nothing: {}",
        r.status()
    );
    let r = manual.head(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "HEAD answers itself");

    // A real client follows (and drops the bearer header on the way to another host).
    let r = s.client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().as_ref() == layer_bytes.as_slice());
    let r = s
        .client
        .get(&url)
        .bearer_auth(&token)
        .header("range", "bytes=1048570-2097160")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.unwrap().as_ref() == &layer_bytes[1048570..2097161]);

    // The registry: a pushed image pulled by reqwest and by skopeo.
    let blob = noise(8, 1 << 20);
    common::push_registry_image(
        &s.client,
        &s.url,
        "acme/app",
        "v1",
        &blob,
        Some(("ci", &token)),
    )
    .await;
    let reg_url = format!("{}/v2/acme/app/blobs/{}", s.url, Digest::of(&blob));
    let r = manual
        .get(&reg_url)
        .basic_auth("ci", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers()["docker-content-digest"],
        Digest::of(&blob).to_string().as_str()
    );
    let r = s
        .client
        .get(&reg_url)
        .basic_auth("ci", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().as_ref() == blob.as_slice());
    let r = manual
        .get(format!(
            "{}/v2/acme/app/blobs/{}",
            s.url,
            Digest::of(b"absent")
        ))
        .basic_auth("ci", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "no redirect to nothing");

    let out = tempfile::tempdir().unwrap();
    let src = format!(
        "docker://{}/acme/app:v1",
        s.url.trim_start_matches("http://")
    );
    let dst = format!("dir:{}", out.path().display());
    let creds = format!("ci:{token}");
    let o = tokio::task::spawn_blocking(move || {
        Command::new("skopeo")
            .args([
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                &creds,
                &src,
                &dst,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        o.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pulled = std::fs::read(out.path().join(Digest::of(&blob).hex())).unwrap();
    assert!(pulled == blob, "skopeo got the layer's bytes");

    // Restores are assembled by the server, not redirected.
    let r = s
        .client
        .get(format!("{}/v1/images/acme%2Fweb/k", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
