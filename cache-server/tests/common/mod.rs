//! What the in-process test binaries share: a server on a free port with its own data dir, and
//! tokens made straight in its database.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::time::Duration;

use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::store::sqlite::Db;
use layercache_server::{Settings, serve};
use tokio::sync::oneshot;

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
    let db = Db::open(&data_dir.join("layercache.db")).unwrap();
    let patterns: Vec<NamespacePattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
    create_token(&db, role, &patterns, Some(name)).unwrap().0
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
