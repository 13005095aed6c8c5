//! A real PostgreSQL server for tests: one per test binary, started on first use from the
//! Debian package's binaries, with one fresh database per test so tests run in parallel.
//!
//! - Where: a private temp dir (data dir, Unix socket dir, log), a free loopback port, `trust`
//!   authentication (nothing but this process's tests can reach it: loopback only).
//! - Who: PostgreSQL refuses to run as root; when the tests run as root, `initdb` and the server
//!   run as the `postgres` user the Debian package creates.
//! - Lifetime: the server runs under a small `sh` supervisor whose stdin is a pipe this process
//!   holds; when the test binary exits (however it exits) the pipe closes, and the supervisor
//!   stops the server and removes the temp dir.
//! - Restarts: [`PgServer::start_private`] gives a test a server of its own that
//!   [`PgServer::restart`] stops and starts again under load.
//! - Missing PostgreSQL is a failure naming the install step, never a skip.
//!
//! `LAYERCACHE_PG_BIN` overrides where the binaries are (default: the newest
//! `/usr/lib/postgresql/*/bin`).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How to get the binaries when they are missing.
pub const INSTALL_HINT: &str = "PostgreSQL is not installed: run `apt-get install -y postgresql` \
     (Debian; the tests need initdb and postgres from /usr/lib/postgresql/*/bin, or set \
     LAYERCACHE_PG_BIN)";

/// The running server of this test binary.
pub struct PgServer {
    /// Loopback port it listens on.
    pub port: u16,
    /// The temp dir holding its data, socket and log.
    pub dir: PathBuf,
    /// The supervisor; its stdin closing (at exit) stops the server.
    supervisor: Mutex<(Child, ChildStdin)>,
    /// Databases handed out, for unique names.
    created: AtomicUsize,
}

/// The server, or why it could not start (kept, so every test fails with the same reason
/// instead of trying again).
static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// This binary's server, started on first call. Panics with the reason (and [`INSTALL_HINT`]
/// when PostgreSQL is missing).
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(|| off_runtime(start)) {
        Ok(server) => server,
        Err(e) => panic!("starting PostgreSQL failed: {e}"),
    }
}

/// Runs `f` on a thread of its own: the synchronous PostgreSQL client runs a runtime of its own,
/// which tokio refuses inside an async test's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("PostgreSQL setup panicked"))
}

/// A new empty database named after `test` on this binary's server; returns its URL.
pub fn fresh_database(test: &str) -> String {
    server().fresh_database(test)
}

/// The directory holding `initdb` and `postgres`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LAYERCACHE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| INSTALL_HINT.to_string())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| INSTALL_HINT.to_string())
}

/// The uid and gid to run PostgreSQL as: the `postgres` user when we are root, else ourselves.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam is given a valid C string; the record is read before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(format!(
            "running as root, and there is no `postgres` user to run the server as. {INSTALL_HINT}"
        ));
    }
    // SAFETY: non-null result of getpwnam.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// `cmd`, run as `who` when given.
fn as_user(mut cmd: Command, who: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = who {
        // std drops root's supplementary groups itself when it changes the uid.
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn start() -> Result<PgServer, String> {
    let bin = bin_dir()?;
    let who = run_as()?;
    let dir = std::env::temp_dir().join(format!(
        "layercache-pg-{}-{}",
        std::process::id(),
        free_port()?
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating `{}`: {e}", dir.display()))?;
    let started = start_in(&bin, who, &dir);
    if started.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    started
}

fn start_in(bin: &Path, who: Option<(u32, u32)>, dir: &Path) -> Result<PgServer, String> {
    if let Some((uid, gid)) = who {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown `{}`: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ])
        .arg("--no-sync");
    let out = as_user(initdb, who).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("running initdb: {e}. {INSTALL_HINT}"),
        _ => format!("running initdb: {e}"),
    })?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port()?;
    // The supervisor: start the server; on each `restart` line on stdin stop it (fast shutdown:
    // connections are cut, as when a DBA restarts it) and start it again, counting restarts in
    // `restarts`; when stdin closes, stop it and remove the dir.
    let script = r#"
run() {
    "$PGBIN/postgres" -D "$PGDIR/data" -p "$PGPORT" -k "$PGDIR" \
        -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c max_connections=500 >>"$PGDIR/log" 2>&1 &
    pid=$!
}
run
restarts=0
while read -r cmd; do
    if [ "$cmd" = restart ]; then
        kill -INT "$pid"
        wait "$pid"
        run
        restarts=$((restarts + 1))
        echo "$restarts" >"$PGDIR/restarts"
    fi
done
kill -INT "$pid"
wait "$pid"
rm -rf "$PGDIR"
"#;
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .env("PGBIN", bin)
        .env("PGDIR", dir)
        .env("PGPORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = as_user(sh, who)
        .spawn()
        .map_err(|e| format!("starting the PostgreSQL supervisor: {e}"))?;
    let stdin = child.stdin.take().expect("piped");
    wait_accepting(port, dir, &mut child)?;
    Ok(PgServer {
        port,
        dir: dir.to_path_buf(),
        supervisor: Mutex::new((child, stdin)),
        created: AtomicUsize::new(0),
    })
}

/// Polls until the server on `port` takes connections (60 s at most, or until the supervisor
/// exits).
fn wait_accepting(port: u16, dir: &Path, supervisor: &mut Child) -> Result<(), String> {
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match postgres::Client::connect(&admin, postgres::NoTls) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "PostgreSQL did not accept connections within 60s ({e}); its log:\n{}",
                    read_log(dir)
                ));
            }
            Err(_) => {
                if let Ok(Some(status)) = supervisor.try_wait() {
                    return Err(format!(
                        "PostgreSQL exited ({status}) before accepting connections; its log:\n{}",
                        read_log(dir)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn read_log(dir: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(dir.join("log")) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

impl PgServer {
    /// A server of the caller's own, stopped (and its dir removed) when dropped: for a test that
    /// restarts PostgreSQL, which must not cut off the other tests of its binary. Panics with the
    /// reason when it cannot start.
    pub fn start_private() -> PgServer {
        off_runtime(start).unwrap_or_else(|e| panic!("starting PostgreSQL failed: {e}"))
    }

    /// Restarts the server (fast shutdown, which cuts every connection, then a start on the same
    /// port and data) and returns once it takes connections again.
    pub fn restart(&self) {
        let mut supervisor = self.supervisor.lock().unwrap();
        let (child, stdin) = &mut *supervisor;
        let before = self.restarts();
        stdin
            .write_all(b"restart\n")
            .and_then(|()| stdin.flush())
            .expect("asking the PostgreSQL supervisor to restart");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.restarts() == before {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not restart within 60 s; its log:\n{}",
                read_log(&self.dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        off_runtime(|| wait_accepting(self.port, &self.dir, child))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// How many restarts the supervisor has completed.
    fn restarts(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("restarts"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` on the `postgres` database (creating databases, terminating connections).
    pub fn admin(&self, sql: &str) -> Result<(), postgres::Error> {
        off_runtime(|| {
            let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)?;
            c.batch_execute(sql)
        })
    }

    /// A new empty database named after `test` (made a valid, unique identifier); its URL.
    pub fn fresh_database(&self, test: &str) -> String {
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        let mut name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        name.truncate(50);
        let name = format!("t{n}_{name}");
        self.admin(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        self.url(&name)
    }
}
