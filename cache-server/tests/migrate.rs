//! `layercache-server migrate`: an embedded cache (SQLite + blobs in its data dir), filled by a
//! real server, moved into a real PostgreSQL (test-support) and a real Garage bucket (or, with
//! `--blob-store dir`, left in place); then a server on the target serves it: lookups hit,
//! restores are byte-identical, the registry tag resolves, the token works, `verify` is clean.
//! And an interrupted migration (the process aborted mid-way, as by `kill -9`) resumes without
//! copying anything twice.

mod common;
mod garage;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use garage::Garage;
use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::store::meta::Metadata;
use layercache_server::store::open_index;
use layercache_shared::Digest;
use layercache_test_support::tarball::{Image, layer, noise};
use reqwest::StatusCode;
use serde_json::json;

/// What the tests compare before and after: restores and registry reads of the source server.
struct Filled {
    /// The source's data dir (kept alive by `_tmp`).
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    /// A read token for `acme/*`.
    token: String,
    /// `ns%2Fkey` → the tarball a restore returned.
    restores: Vec<(String, Vec<u8>)>,
    /// The registry manifest pushed as `acme/app:v1`, and its layer.
    manifest: Vec<u8>,
    layer: Vec<u8>,
    /// Blob rows in the source.
    blobs: u64,
    /// Entries in the source.
    entries: u64,
}

/// The real server on an embedded cache (SQLite in its data dir, whatever backend the run asks
/// the other tests for); [`Embedded::stop`] ends it as an operator would (SIGTERM) and waits for
/// the process to exit, so its database is closed for sure.
struct Embedded {
    url: String,
    client: reqwest::Client,
    child: std::process::Child,
}

async fn start_embedded(dir: &Path) -> Embedded {
    let mut child = common::binary_command(&["--data-dir", dir.to_str().unwrap()])
        .env_remove("LAYERCACHE_DATABASE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = common::binary_url(&mut child).await;
    Embedded {
        url,
        client: reqwest::Client::new(),
        child,
    }
}

impl Embedded {
    async fn stop(mut self) {
        // SAFETY: signals a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap();
    }
}

/// Runs `f` on the index at `database` (or SQLite in `dir`) on a thread of its own (the
/// PostgreSQL client may not run on the test's runtime).
fn with_db<T: Send>(
    dir: &Path,
    database: Option<&str>,
    f: impl FnOnce(&dyn Metadata) -> T + Send,
) -> T {
    std::thread::scope(|s| {
        s.spawn(|| f(&*open_index(dir, database).unwrap()))
            .join()
            .unwrap()
    })
}

/// Fills a fresh embedded cache through a real server: two entries sharing layers (v1 tarball
/// pushes), a registry manifest with a tag, a lookup (counters and history), then a token; stops
/// the server and waits until its database is closed.
async fn fill() -> Filled {
    let (tmp, dir) = common::data_dir();
    let s = start_embedded(&dir).await;
    let base = layer(&[("etc/base", b"shared base layer")]);
    let a = Image::new(vec![base.clone()], &["ADD base"]).tagged("app:base");
    let b = Image::new(
        vec![base, layer(&[("app/big.bin", &noise(3, 2 << 20))])],
        &["ADD base", "COPY big"],
    )
    .tagged("app:1")
    .child_of(&a);
    for (key, images) in [("k1", vec![&a, &b]), ("k2", vec![&a])] {
        common::push_tarball(&s.client, &s.url, &format!("acme%2Fweb/{key}"), &images).await;
    }
    let reg_layer = noise(9, 300_000);
    let manifest =
        common::push_registry_image(&s.client, &s.url, "acme/app", "v1", &reg_layer, None).await;
    lookup(&s.client, &s.url, None, "k1").await;
    let mut restores = Vec::new();
    for key in ["acme%2Fweb/k1", "acme%2Fweb/k2"] {
        let r = s
            .client
            .get(format!("{}/v1/images/{key}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        restores.push((key.to_string(), r.bytes().await.unwrap().to_vec()));
    }
    let ns: Vec<NamespacePattern> = vec!["acme/*".parse().unwrap()];
    let (token, blobs, entries) = with_db(&dir, None, |db| {
        let token = create_token(db, Role::Read, &ns, Some("ci")).unwrap().0;
        let st = db.stats().unwrap();
        (token, db.blob_rows().unwrap().len() as u64, st.entries)
    });
    s.stop().await;
    Filled {
        dir,
        _tmp: tmp,
        token,
        restores,
        manifest,
        layer: reg_layer,
        blobs,
        entries,
    }
}

/// Looks `key` up in `acme/web` and asserts an exact hit.
async fn lookup(client: &reqwest::Client, url: &str, token: Option<&str>, key: &str) {
    let mut r = client
        .post(format!("{url}/v1/lookup"))
        .json(&json!({"namespaces": ["acme/web"], "key": key}));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let found: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(found["match"], "exact", "{found}");
}

/// The binary with `args` and `env`, run to the end off the async threads.
async fn run(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_layercache-server"))
            .args(&args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `migrate --data-dir … --blob-store … --database …` plus `extra`.
fn migrate_args(dir: &Path, blob_store: &str, database: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "migrate",
        "--data-dir",
        dir.to_str().unwrap(),
        "--blob-store",
        blob_store,
        "--database",
        database,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts the real server on the target and checks it serves everything `f` held.
async fn check_target(
    f: &Filled,
    data_dir: &Path,
    blob_store: &str,
    database: &str,
    env: &[(&'static str, String)],
) {
    let mut child = common::binary_command(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--blob-store",
        blob_store,
        "--database",
        database,
    ])
    .envs(env.iter().cloned())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let url = common::binary_url(&mut child).await;
    let client = reqwest::Client::new();
    // The token carried over: auth is on, and it opens acme/*.
    let r = client
        .post(format!("{url}/v1/lookup"))
        .json(&json!({"namespaces": ["acme/web"], "key": "k1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "auth is on on the target"
    );
    lookup(&client, &url, Some(&f.token), "k1").await;
    lookup(&client, &url, Some(&f.token), "k2").await;
    for (key, want) in &f.restores {
        let r = client
            .get(format!("{url}/v1/images/{key}"))
            .bearer_auth(&f.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{key}");
        let got = r.bytes().await.unwrap();
        assert!(got.as_ref() == want.as_slice(), "restore of {key} differs");
    }
    let r = client
        .get(format!("{url}/v2/acme/app/manifests/v1"))
        .basic_auth("ci", Some(&f.token))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), f.manifest.as_slice());
    let r = client
        .get(format!("{url}/v2/acme/app/blobs/{}", Digest::of(&f.layer)))
        .basic_auth("ci", Some(&f.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().as_ref() == f.layer.as_slice());
    child.kill().unwrap();
    child.wait().unwrap();
    let o = run(
        vec![
            "verify".into(),
            "--data-dir".into(),
            data_dir.to_str().unwrap().into(),
            "--blob-store".into(),
            blob_store.into(),
            "--database".into(),
            database.into(),
        ],
        env.to_vec(),
    )
    .await;
    assert!(o.status.success(), "verify on the target: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("checked {} blobs: 0 corrupt, 0 missing", f.blobs)),
        "{out}"
    );
}

/// Counters of the index at `database` (or SQLite in `dir`), by name.
fn counters(dir: &Path, database: Option<&str>) -> Vec<(String, u64)> {
    with_db(dir, database, |db| db.counters().unwrap())
}

/// The whole move into PostgreSQL and Garage, checked through a server on the target.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_moves_a_cache_into_postgres_and_garage() {
    let f = fill().await;
    let g = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let db = layercache_test_support::postgres::fresh_database("migrate_full");
    let store = format!("s3://{}/moved", g.bucket);
    let o = run(migrate_args(&f.dir, &store, &db, &[]), g.env()).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("blobs: {} copied", f.blobs)),
        "{}",
        text(&o)
    );
    assert!(
        out.contains(&format!("entries: {} copied, 0 already", f.entries)),
        "{out}"
    );
    assert!(out.contains("tags: 1 copied"), "{out}");
    assert!(out.contains("tokens: 1 copied"), "{out}");
    let target_dir = tempfile::tempdir().unwrap();
    assert_eq!(
        counters(&f.dir, None),
        counters(target_dir.path(), Some(&db)),
        "counters carried over"
    );
    check_target(&f, target_dir.path(), &store, &db, &g.env()).await;
}

/// `--blob-store dir`: the index moves to PostgreSQL, the blobs stay (re-hashed) in the data dir,
/// which the new server keeps using.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_with_blob_store_dir_moves_only_the_index() {
    let f = fill().await;
    let db = layercache_test_support::postgres::fresh_database("migrate_dir");
    let o = run(migrate_args(&f.dir, "dir", &db, &[]), vec![]).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("blobs: {} re-hashed in place", f.blobs)),
        "{out}"
    );
    check_target(&f, &f.dir, "dir", &db, &[]).await;
}

/// Interrupted twice (during the blob copy, then between two entries), the migration resumes
/// each time where it stopped: every blob is copied exactly once, rows are not duplicated, and
/// counters are added once even when it is run again after it finished.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_migration_resumes_without_copying_twice() {
    let f = fill().await;
    let g = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let db = layercache_test_support::postgres::fresh_database("migrate_resume");
    let store = format!("s3://{}/resumed", g.bucket);
    let args = migrate_args(&f.dir, &store, &db, &[]);
    let with_abort = |at: &str| {
        let mut env = g.env();
        env.push(("LAYERCACHE_MIGRATE_ABORT_AFTER", at.to_string()));
        env
    };

    let o = run(args.clone(), with_abort("blobs:2")).await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("aborting"),
        "{}",
        text(&o)
    );

    let o = run(args.clone(), with_abort("entries:1")).await;
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("copied={} present=2", f.blobs - 2)),
        "the second run copies only the blobs the first did not: {}",
        text(&o)
    );

    let o = run(args.clone(), g.env()).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("blobs: 0 copied (0 bytes), {} already", f.blobs)),
        "{}",
        text(&o)
    );
    assert!(
        out.contains(&format!("entries: {} copied, 1 already", f.entries - 1)),
        "{out}"
    );
    assert!(
        out.contains("counters, history and builds: added\n"),
        "{out}"
    );

    // Once more after it finished: nothing to do, counters not added twice.
    let o = run(args, g.env()).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("entries: 0 copied, {} already", f.entries)),
        "{out}"
    );
    assert!(out.contains("added by an earlier run"), "{out}");
    let target_dir = tempfile::tempdir().unwrap();
    assert_eq!(
        counters(&f.dir, None),
        counters(target_dir.path(), Some(&db)),
        "counters added once"
    );
    check_target(&f, target_dir.path(), &store, &db, &g.env()).await;
}

/// The refusals, each saying what to do: a dir that is no data dir, a source whose server is
/// still running, and a target database holding another cache (accepted with `--merge`).
#[tokio::test(flavor = "multi_thread")]
async fn migrate_refuses_a_wrong_source_a_running_one_and_another_cache() {
    let empty = tempfile::tempdir().unwrap();
    let db = layercache_test_support::postgres::fresh_database("migrate_refusals");
    let o = run(migrate_args(empty.path(), "dir", &db, &[]), vec![]).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("holds no layercache.db"),
        "{}",
        text(&o)
    );

    // A running server on the source.
    let (_tmp, dir) = common::data_dir();
    let s = start_embedded(&dir).await;
    let o = run(migrate_args(&dir, "dir", &db, &[]), vec![]).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("open in another process"),
        "{}",
        text(&o)
    );
    s.stop().await;
    let o = run(migrate_args(&dir, "dir", &db, &[]), vec![]).await;
    assert!(
        o.status.success(),
        "once stopped, it migrates: {}",
        text(&o)
    );

    // A database another cache uses (its token, here).
    let db = layercache_test_support::postgres::fresh_database("migrate_other");
    let f = fill().await;
    let ns: Vec<NamespacePattern> = vec!["other/*".parse().unwrap()];
    with_db(&f.dir, Some(&db), |db| {
        create_token(db, Role::Admin, &ns, Some("other")).unwrap();
    });
    let o = run(migrate_args(&f.dir, "dir", &db, &[]), vec![]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already holds another cache") && err.contains("--merge"),
        "{}",
        text(&o)
    );
    let o = run(migrate_args(&f.dir, "dir", &db, &["--merge"]), vec![]).await;
    assert!(o.status.success(), "{}", text(&o));
    check_target(&f, &f.dir, "dir", &db, &[]).await;
}

/// The data dir's largest blob file (the 2 MiB layer of `fill`).
fn largest_blob_file(dir: &Path) -> PathBuf {
    let mut files = Vec::new();
    for fan in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            files.push((std::fs::metadata(&path).unwrap().len(), path));
        }
    }
    files.into_iter().max().expect("the data dir holds blobs").1
}

/// A source blob whose bytes no longer hash to its digest (same size, one byte flipped) is
/// refused, naming the blob, whether it is copied to Garage or re-hashed in place.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_source_blob_is_refused_when_copied_or_rehashed() {
    let f = fill().await;
    let file = largest_blob_file(&f.dir);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let hex = file.file_name().unwrap().to_str().unwrap().to_string();

    let g = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let store = format!("s3://{}/moved", g.bucket);
    let copied = (
        migrate_args(
            &f.dir,
            &store,
            &layercache_test_support::postgres::fresh_database("migrate_corrupt_copy"),
            &[],
        ),
        g.env(),
    );
    let rehashed = (
        migrate_args(
            &f.dir,
            "dir",
            &layercache_test_support::postgres::fresh_database("migrate_corrupt_dir"),
            &[],
        ),
        vec![],
    );
    for (args, env) in [copied, rehashed] {
        let o = run(args, env).await;
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&hex), "the blob is named: {}", text(&o));
        assert!(
            err.contains("its content hashes to sha256:"),
            "{}",
            text(&o)
        );
    }
}
