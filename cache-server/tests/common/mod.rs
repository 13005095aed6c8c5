//! What the in-process test binaries share: a server on a free port with its own data dir, and
//! tokens made straight in its database.
//!
//! The index backend is a parameter: with `LAYERCACHE_TEST_BACKEND=postgres` every server gets a
//! fresh database on a real PostgreSQL started for the test binary
//! (`layercache_test_support::postgres`) instead of SQLite in its data dir, so the same tests
//! run against both (`scripts/test.sh` runs them twice).

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::store::meta::Metadata;
use layercache_server::store::open_index;
use layercache_server::{Settings, serve};
use tokio::sync::oneshot;

/// The database URL of each data dir whose server runs on PostgreSQL.
static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// Whether this run puts servers on PostgreSQL (`LAYERCACHE_TEST_BACKEND=postgres`); any other
/// value than `sqlite` (the default) or `postgres` is a mistake worth failing on.
pub fn on_postgres() -> bool {
    match std::env::var("LAYERCACHE_TEST_BACKEND").as_deref() {
        Err(_) | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("LAYERCACHE_TEST_BACKEND={other}: use sqlite or postgres"),
    }
}

/// The `--database` of a server on `data_dir`: a fresh database when running on PostgreSQL
/// (made on first ask, then the same one), `None` on SQLite.
pub fn database_for(data_dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let mut map = DATABASES.lock().unwrap();
    let map = map.get_or_insert_with(HashMap::new);
    Some(
        map.entry(data_dir.to_path_buf())
            .or_insert_with(|| layercache_test_support::postgres::fresh_database("server"))
            .clone(),
    )
}

/// Fails unless the server on `data_dir` runs on the backend this run asked for: a run on
/// PostgreSQL that quietly used SQLite would prove nothing.
pub fn assert_backend(data_dir: &Path) {
    assert_eq!(
        data_dir.join("layercache.db").exists(),
        !on_postgres(),
        "the server on `{}` does not run on the backend LAYERCACHE_TEST_BACKEND asks for",
        data_dir.display()
    );
}

/// Runs `f` on the index of the server on `data_dir` (SQLite in it, or its PostgreSQL
/// database), on a thread of its own: PostgreSQL's synchronous client may not run inside an async
/// test's runtime (the server itself only queries on blocking threads).
pub fn with_index<T: Send>(data_dir: &Path, f: impl FnOnce(&dyn Metadata) -> T + Send) -> T {
    let database = database_for(data_dir);
    std::thread::scope(|s| {
        s.spawn(|| f(&*open_index(data_dir, database.as_deref()).unwrap()))
            .join()
            .unwrap()
    })
}

/// A server on a free port; stops when dropped.
pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _tmp: tempfile::TempDir,
}

/// A fresh temp dir with an empty data dir in it.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    (tmp, data_dir)
}

/// Starts a server on a fresh data dir with `configure`d settings.
pub async fn start(configure: impl FnOnce(&mut Settings)) -> Server {
    let (tmp, data_dir) = data_dir();
    start_in(tmp, data_dir, configure).await
}

/// Starts a server on `data_dir` (inside `tmp`, which the server keeps alive).
pub async fn start_in(
    tmp: tempfile::TempDir,
    data_dir: PathBuf,
    configure: impl FnOnce(&mut Settings),
) -> Server {
    // Open unless the test creates tokens (which turn auth on) or configures otherwise.
    let mut settings = Settings {
        open: true,
        database: database_for(&data_dir),
        ..Settings::new(&data_dir)
    };
    configure(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(listener, settings, async {
            let _ = rx.await;
        })
        .await
        .expect("server failed");
    });
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_backend(&data_dir);
    Server {
        url,
        data_dir,
        client,
        _stop: tx,
        _tmp: tmp,
    }
}

/// Creates a token in `data_dir`'s database; returns it.
pub fn token(data_dir: &Path, role: Role, patterns: &[&str], name: &str) -> String {
    let patterns: Vec<NamespacePattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
    with_index(data_dir, |db| {
        create_token(db, role, &patterns, Some(name)).unwrap().0
    })
}

/// The real `layercache-server` binary (`--open`, a free port) with `args`, started from the
/// test; the caller adds `--data-dir` and the rest. Its stdout is read for the address it prints
/// first; stderr is the caller's choice.
pub fn binary_command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_layercache-server"));
    cmd.args(["--open", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped());
    cmd
}

/// Reads the address `child` prints first, then waits until `/healthz` answers (it opens its
/// store after printing); panics after 20 s.
pub async fn binary_url(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    url
}

/// Pushes `images` as `ns_key` (`namespace/key`, the namespace's slashes escaped or not) through
/// `PUT /v1/images` and asserts the server stored it (201), showing its error otherwise.
pub async fn push_tarball(
    client: &reqwest::Client,
    url: &str,
    ns_key: &str,
    images: &[&layercache_test_support::tarball::Image],
) {
    let r = client
        .put(format!("{url}/v1/images/{ns_key}"))
        .body(layercache_test_support::tarball::save(images))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

/// Pushes a one-layer OCI image (a minimal config and `layer`) as `repo:tag` through the registry
/// API (monolithic blob uploads, then the manifest), with basic auth when `auth` is given, and
/// asserts each step was stored (201). Returns the manifest's bytes.
pub async fn push_registry_image(
    client: &reqwest::Client,
    url: &str,
    repo: &str,
    tag: &str,
    layer: &[u8],
    auth: Option<(&str, &str)>,
) -> Vec<u8> {
    use layercache_shared::Digest;
    use serde_json::json;
    let authed = |r: reqwest::RequestBuilder| match auth {
        Some((user, password)) => r.basic_auth(user, Some(password)),
        None => r,
    };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for blob in [&config[..], layer] {
        let upload = format!("{url}/v2/{repo}/blobs/uploads/?digest={}", Digest::of(blob));
        let r = authed(client.post(upload).body(blob.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    }
    let desc = |b: &[u8], mt: &str| json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc(layer, "application/vnd.oci.image.layer.v1.tar")],
    }))
    .unwrap();
    let put = client
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone());
    let r = authed(put).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    manifest
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
