//! Slow and hostile clients against the real binary (issue 12, finding 3): stalled uploads do not
//! starve lookups, a half-sent header is cut off, idle connections beyond the descriptor limit do
//! not lock out `/healthz`, SIGTERM exits within its deadline with a client stalled, and uploads
//! beyond the limit get `503` with `Retry-After`.
//!
//! Limits are given as `LAYERCACHE_*` environment variables, not flags, so the same test runs
//! against an older binary (which ignores them) and shows what failed there: set
//! `LAYERCACHE_SERVER_BIN` to that binary's path.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running server process.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `env`, and, when `nofile` is given, both open-file limits at that.
    async fn start(env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        // Hundreds of client sockets live in this process.
        let _ = layercache_server::serving::fdlimit::raise();
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::var("LAYERCACHE_SERVER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_layercache-server").to_string());
        let mut cmd = Command::new(bin);
        cmd.args(["--open", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            // A file, not a pipe: a full pipe would stall the server's logging.
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        if let Some(n) = nofile {
            // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let server = Server {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&server.addr, "/healthz", Duration::from_secs(1))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "{} never answered", server.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 request on a fresh connection; the status and the whole answer, within `limit`.
async fn exchange(addr: &str, request: &[u8], limit: Duration) -> Result<(u16, String), String> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(request).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {text:?}"))?;
        Ok((status, text))
    })
    .await
    .map_err(|_| format!("no answer within {limit:?}"))?
}

async fn get(addr: &str, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(addr, req.as_bytes(), limit).await
}

async fn lookup(addr: &str, limit: Duration) -> Result<(u16, String), String> {
    let body = r#"{"namespaces":["acme/web"],"key":"k"}"#;
    let req = format!(
        "POST /v1/lookup HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req.as_bytes(), limit).await
}

/// Opens a connection that announces a 1 MiB blob upload, sends 10 bytes of it and stalls.
async fn stalled_upload(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[0u8; 10]).await.unwrap();
    s
}

/// Whether the server closes `s` (EOF, reset, or an answer followed by EOF) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_stalled_uploads_do_not_stop_lookups_or_healthz() {
    // More stalled uploads than tokio's 512 blocking threads: each held one before.
    let server = Server::start(&[("LAYERCACHE_BODY_TIMEOUT_SECS", "120")], None).await;
    let mut stalled = Vec::new();
    for _ in 0..520 {
        stalled.push(stalled_upload(&server.addr, "/v1/blobs").await);
    }
    // Every answer within 2 s, ten times over (each request also needs a database thread).
    for i in 0..10 {
        let (status, text) = lookup(&server.addr, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("lookup {i} with 520 stalled uploads: {e}"));
        assert_eq!(status, 404, "{text}");
        let (status, _) = get(&server.addr, "/v1/stats", Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("stats {i} with 520 stalled uploads: {e}"));
        assert_eq!(status, 200);
        let (status, _) = get(&server.addr, "/healthz", Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("healthz {i} with 520 stalled uploads: {e}"));
        assert_eq!(status, 200);
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_header_is_closed_after_the_header_timeout() {
    let server = Server::start(&[("LAYERCACHE_HEADER_TIMEOUT_SECS", "1")], None).await;
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "a half-sent request is still open 10 s later (header timeout 1 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_body_is_aborted_after_the_body_timeout() {
    let server = Server::start(&[("LAYERCACHE_BODY_TIMEOUT_SECS", "1")], None).await;
    let mut s = stalled_upload(&server.addr, "/v1/blobs").await;
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "an upload body silent for 10 s is still open (body timeout 1 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_beyond_the_descriptor_limit_keep_healthz_reachable() {
    // The issue's case at a smaller scale: more idle connections than the server has descriptors.
    let server = Server::start(&[], Some(256)).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    for i in 0..5 {
        let (status, _) = get(&server.addr, "/healthz", Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("healthz {i} with 300 idle connections: {e}"));
        assert_eq!(status, 200);
    }
    let log = server.log();
    assert!(
        log.contains("max_connections"),
        "the cap is logged at start:\n{log}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_stalled_client_exits_within_the_deadline() {
    let mut server = Server::start(
        &[
            ("LAYERCACHE_SHUTDOWN_TIMEOUT_SECS", "2"),
            ("LAYERCACHE_BODY_TIMEOUT_SECS", "120"),
            ("LAYERCACHE_MAX_UPLOADS", "1"),
            ("LAYERCACHE_QUEUE_WAIT_SECS", "1"),
        ],
        None,
    )
    .await;
    let _stalled = stalled_upload(&server.addr, "/v1/blobs").await;
    // The stalled request must be in its handler before the signal (else shutdown just drops its
    // connection): it is once it holds the only upload slot, so a second upload gets 503.
    let digest = format!("sha256:{}", sha_hex(b"hello"));
    let probe = format!(
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = exchange(&server.addr, probe.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled upload never held its slot; last answer: {text}"
        );
    }
    let t0 = Instant::now();
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    // The deadline is the process's exit; a second of slack for a loaded machine.
    let deadline = t0 + Duration::from_secs(3);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 3 s after SIGTERM with a 2 s shutdown deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let log = server.log();
    assert!(log.contains("shutdown deadline passed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_limit_get_503_with_retry_after() {
    let server = Server::start(
        &[
            ("LAYERCACHE_MAX_UPLOADS", "2"),
            ("LAYERCACHE_QUEUE_WAIT_SECS", "1"),
            ("LAYERCACHE_BODY_TIMEOUT_SECS", "120"),
        ],
        None,
    )
    .await;
    let digest = format!("sha256:{}", sha_hex(b"hello"));
    let stalled = vec![
        stalled_upload(&server.addr, "/v1/blobs").await,
        stalled_upload(
            &server.addr,
            &format!("/v2/acme/web/blobs/uploads/?digest={digest}"),
        )
        .await,
    ];
    let put = |path: String| {
        format!("{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    };
    let v1 = put(format!("PUT /v1/blobs/{digest}"));
    let v2 = put(format!("POST /v2/acme/web/blobs/uploads/?digest={digest}"));
    // Until both stalled uploads hold their slots, a third may still get one: poll.
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (status, text) = exchange(&server.addr, v1.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        if status == 503 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 with 2 uploads stalled and --max-uploads 2; last: {text}"
        );
    };
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("retry-after: "), "{text}");
    assert!(text.contains("\"code\":\"busy\""), "{text}");
    let (status, text) = exchange(&server.addr, v2.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"code\":\"UNAVAILABLE\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: "),
        "{text}"
    );
    // Slots come back when the stalled clients go.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = exchange(&server.addr, v1.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        if status == 201 || status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "upload never accepted: {text}");
    }
}

fn sha_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
