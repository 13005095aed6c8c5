//! haproxy (Debian's `/usr/sbin/haproxy`) in front of `layercache-server` replicas, for the
//! end-to-end tests and the benchmark.
//!
//! It runs the config the README documents, `docs/haproxy.cfg`, unchanged: the addresses go in
//! through the environment variables that file reads, so the documented setup and the tested one
//! cannot drift. That config balances round robin over up to three replicas and health-checks each
//! on `GET /healthz` every second (down after 2 failures, up after 2 successes).
//!
//! The fixture adds an admin socket (`LAYERCACHE_LB_ADMIN_SOCKET`, which the config reads when set)
//! to see which replicas haproxy counts as up: a test that kills a replica waits for haproxy to
//! notice from there, instead of sleeping.
//!
//! Missing haproxy is a failure naming the package, never a skip. `LAYERCACHE_HAPROXY` overrides
//! the binary.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The config the README documents and the tests run (the repository's `docs/haproxy.cfg`).
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/haproxy.cfg")
}

/// The haproxy binary, or a panic naming the package.
pub fn haproxy_bin() -> PathBuf {
    let bin = std::env::var_os("LAYERCACHE_HAPROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    assert!(
        bin.is_file(),
        "haproxy is not at `{}`: run `apt-get install -y haproxy` (scripts/test.sh does), or set \
         LAYERCACHE_HAPROXY to the binary",
        bin.display()
    );
    bin
}

/// The most replicas `docs/haproxy.cfg` names.
pub const MAX_REPLICAS: usize = 3;

/// A running haproxy on a free loopback port; killed (and its dir removed) on drop.
pub struct Haproxy {
    /// `http://127.0.0.1:<port>`: where clients connect.
    pub url: String,
    /// `127.0.0.1:<port>`: the same, as a registry host for docker.
    pub addr: String,
    /// The process.
    child: Child,
    /// Its admin socket and log.
    dir: tempfile::TempDir,
}

/// How haproxy sees one replica (a row of `show stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `r1`, `r2`, `r3`: the config's server names, in the order of the replicas given.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2`, `DOWN 1/2` (going up or down), `MAINT`, …
    pub status: String,
}

impl Backend {
    /// Whether haproxy sends it requests.
    pub fn is_up(&self) -> bool {
        self.status.starts_with("UP")
    }
}

impl Haproxy {
    /// Starts haproxy with `docs/haproxy.cfg` in front of `replicas` (`host:port` each, 1 to
    /// [`MAX_REPLICAS`]), and waits until it listens. It does not wait for the health checks:
    /// see [`Haproxy::wait_up`].
    pub fn start(replicas: &[String]) -> Haproxy {
        assert!(
            (1..=MAX_REPLICAS).contains(&replicas.len()),
            "docs/haproxy.cfg names 1 to {MAX_REPLICAS} replicas, not {}",
            replicas.len()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind port 0")
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let mut cmd = Command::new(haproxy_bin());
        // -db: stay in the foreground, as a child the fixture owns.
        cmd.arg("-db")
            .arg("-f")
            .arg(config_path())
            .env("LAYERCACHE_LB_BIND", &addr)
            .env("LAYERCACHE_LB_ADMIN_SOCKET", dir.path().join("admin.sock"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (i, r) in replicas.iter().enumerate() {
            cmd.env(format!("LAYERCACHE_REPLICA_{}", i + 1), r);
        }
        let child = cmd.spawn().expect("starting haproxy");
        let mut lb = Haproxy {
            url: format!("http://{addr}"),
            addr,
            child,
            dir,
        };
        lb.wait_for("listen and open its admin socket", |lb| {
            std::net::TcpStream::connect(&lb.addr).is_ok() && lb.try_backends().is_some()
        });
        lb
    }

    /// The replicas as haproxy sees them now (`show stat` on the admin socket).
    pub fn backends(&self) -> Vec<Backend> {
        self.try_backends()
            .unwrap_or_else(|| panic!("haproxy's admin socket does not answer: {}", self.log()))
    }

    fn try_backends(&self) -> Option<Vec<Backend>> {
        let mut s = UnixStream::connect(self.dir.path().join("admin.sock")).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).ok()?;
        // `# pxname,svname,…`: column 0 the proxy, 1 the server, 17 its status.
        Some(
            csv.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > 17 && f[0] == "replicas" && f[1] != "BACKEND")
                .map(|f| Backend {
                    name: f[1].to_string(),
                    status: f[17].to_string(),
                })
                .collect(),
        )
    }

    /// Waits until haproxy counts every replica as up (each passed its health checks).
    pub fn wait_up(&mut self) {
        self.wait_for("count every replica as up", |lb| {
            lb.try_backends()
                .is_some_and(|b| !b.is_empty() && b.iter().all(Backend::is_up))
        });
    }

    /// Waits until haproxy has taken replica `name` (`r1`, `r2`, …) out of the rotation.
    pub fn wait_down(&mut self, name: &str) {
        self.wait_for(&format!("take {name} out of the rotation"), |lb| {
            lb.try_backends()
                .is_some_and(|b| b.iter().any(|b| b.name == name && !b.is_up()))
        });
    }

    /// Polls `ready` every 50 ms; panics (with haproxy's log) after 30 s or if haproxy exits.
    fn wait_for(&mut self, what: &str, ready: impl Fn(&Haproxy) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not {what} within 30 s; it sees {:?}; its log:\n{}",
                self.try_backends(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// haproxy's output so far (config warnings, servers going up and down).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
