//! Test fixtures: a real `layercache-server` process on a free port, private Docker engines, and
//! busybox-based build contexts.
//!
//! Every test owns what it starts: its server's data dir and its engine's data root live in temp dirs
//! that go when the fixture is dropped, so tests run in parallel without seeing each other's images.
//!
//! Engines ([`TestEngine`]), each a private `dockerd` (own data root, exec root, socket, pidfile,
//! `DOCKER_CONFIG`), stopped and removed on drop:
//! - `TestEngine::start()`: Engine 20.10 (Debian 12's docker.io), no network (`--bridge=none`).
//! - `TestEngine::start_kind(EngineKind::V20 | V26Classic | V26Containerd)`: Engine 26.1 runs from
//!   the dir `scripts/install-engine26.sh` unpacks (`LAYERCACHE_ENGINE26`, default
//!   `/opt/layercache-engine26`; missing → the test panics naming the script), on its own bridge
//!   `lcbrN` (10.231.N.0/24, N claimed atomically by `ip link add`, deleted on drop), with the
//!   classic or the containerd image store, and buildx linked into its `DOCKER_CONFIG/cli-plugins`.
//! - `engine.host` (`DOCKER_HOST`), `engine.cli()` (the matching CLI: 26.1 for Engine 26),
//!   `engine.docker_config()`, `engine.command()` (the CLI with both set, to add args/stdin/env),
//!   `engine.docker(&[..])` / `docker_ok(&[..])` to run it, `engine.wipe()` for a cold engine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Directory holding the workspace's built binaries (`target/debug`), found from this test binary's
/// own path (`target/debug/deps/e2e-…`), so a custom `CARGO_TARGET_DIR` works too.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile> dir")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the command to run when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A `layercache-server` child process listening on a free loopback port.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's `--data-dir`.
    pub data_dir: PathBuf,
    _tmp: Option<TempDir>,
}

impl TestServer {
    /// Starts a server on a fresh data dir.
    pub fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut s = Self::start_on(&data_dir, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (kept after drop: restart tests reuse it), with extra flags.
    /// It runs with `--open`: open while the data dir has no token, closed by the tokens a test
    /// creates before starting it.
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> TestServer {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(bin("layercache-server"))
            .arg("--open")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn layercache-server");
        let server = TestServer {
            child,
            url: format!("http://{listen}"),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::blocking::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send()
                && r.status().is_success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "layercache-server at {} did not answer /healthz within 20 s",
            self.url
        );
    }

    /// SIGKILLs the server (no graceful shutdown), for crash tests.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = reqwest::blocking::get(format!("{}{path}", self.url)).expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().expect("JSON body")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .unwrap()
        .port()
}

/// The Docker CLI to drive Engine 20.10 with: Debian's (`/usr/bin/docker`, same release as the
/// engine) when present, so the legacy builder and save format are the engine's own.
pub fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// Which Docker Engine a [`TestEngine`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Debian 12's Engine 20.10: classic image store (overlay2), classic builder, no network.
    V20,
    /// Engine 26.1 on the classic image store (overlay2); `docker build` is BuildKit.
    V26Classic,
    /// Engine 26.1 on the containerd image store (`containerd-snapshotter`), as fresh Engine 29
    /// installs have it; `docker build` is BuildKit and can export a registry cache.
    V26Containerd,
}

impl EngineKind {
    fn is_v26(self) -> bool {
        matches!(self, EngineKind::V26Classic | EngineKind::V26Containerd)
    }
}

/// Directory holding the unpacked Engine 26.1 (`LAYERCACHE_ENGINE26`, default
/// `/opt/layercache-engine26`); panics naming the install script when it is not there.
pub fn engine26_dir() -> PathBuf {
    let dir = std::env::var_os("LAYERCACHE_ENGINE26")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/layercache-engine26"));
    assert!(
        dir.join("usr/sbin/dockerd").exists(),
        "Engine 26.1 is not unpacked in {} (no usr/sbin/dockerd): run `scripts/install-engine26.sh` \
         as root (scripts/test.sh does), or point LAYERCACHE_ENGINE26 at its directory",
        dir.display()
    );
    dir
}

/// A Linux bridge of our own for one Engine 26 (BuildKit's `RUN` needs a bridge network, and
/// `docker0` would be shared by every engine); deleted on drop.
struct Bridge {
    /// Interface name, `lcbr<N>`.
    name: String,
}

impl Bridge {
    /// Creates `lcbr<N>` with `10.231.N.1/24` for the first free N. `ip link add` fails when the
    /// name exists, so creating the link is what claims N, atomically, even against tests in other
    /// processes; the subnet follows from N, so subnets never collide either.
    fn create() -> Bridge {
        let start = std::process::id() as usize;
        for i in 0..250 {
            let n = (start + i) % 250;
            let name = format!("lcbr{n}");
            let add = Command::new("ip")
                .args(["link", "add", &name, "type", "bridge"])
                .output()
                .expect("run `ip` (iproute2)");
            if !add.status.success() {
                let err = String::from_utf8_lossy(&add.stderr);
                assert!(
                    err.contains("exists"),
                    "ip link add {name} type bridge failed (tests need root): {err}"
                );
                continue;
            }
            let bridge = Bridge { name };
            bridge.ip(&[
                "addr",
                "add",
                &format!("10.231.{n}.1/24"),
                "dev",
                &bridge.name,
            ]);
            bridge.ip(&["link", "set", &bridge.name, "up"]);
            return bridge;
        }
        panic!("no free bridge name lcbr0..lcbr249: delete stale ones with `ip link del lcbrN`");
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A private `dockerd` with its own data root, exec root, socket and Docker CLI config, stopped and
/// removed on drop. See the module docs for the API.
pub struct TestEngine {
    child: Child,
    /// Which engine this is.
    pub kind: EngineKind,
    /// `unix:///…/sock`, for `DOCKER_HOST`.
    pub host: String,
    /// Everything of this engine (data, exec root, socket, log, CLI config); removed on drop.
    dir: PathBuf,
    /// The Docker CLI that matches the engine (26.1 for Engine 26).
    cli: PathBuf,
    /// Engine 26's own bridge; `None` for Engine 20.10 (`--bridge=none`). Dropped after dockerd.
    bridge: Option<Bridge>,
}

impl TestEngine {
    /// Starts an Engine 20.10 without networking, as most tests use it; panics (the test fails,
    /// never skips) if dockerd is missing or won't start.
    pub fn start() -> TestEngine {
        Self::start_with(&["--bridge=none", "--iptables=false"])
    }

    /// Starts an Engine 20.10 with the given network flags.
    pub fn start_with(net_flags: &[&str]) -> TestEngine {
        let dir = engine_dir();
        let args: Vec<String> = net_flags.iter().map(|s| s.to_string()).collect();
        Self::spawn(
            EngineKind::V20,
            dir,
            "dockerd".into(),
            docker_cli(),
            args,
            None,
            None,
        )
    }

    /// Starts an engine of the given kind. Engine 26 gets its own bridge and a `--config-file`
    /// choosing its image store; it needs `scripts/install-engine26.sh` to have run.
    pub fn start_kind(kind: EngineKind) -> TestEngine {
        if kind == EngineKind::V20 {
            return Self::start();
        }
        let root = engine26_dir();
        let dir = engine_dir();
        let config = dir.join("daemon.json");
        let containerd_store = kind == EngineKind::V26Containerd;
        std::fs::write(
            &config,
            format!(r#"{{"features": {{"containerd-snapshotter": {containerd_store}}}}}"#),
        )
        .expect("write daemon.json");
        let bridge = Bridge::create();
        let args = vec![
            format!("--config-file={}", config.display()),
            format!("--bridge={}", bridge.name),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
        ];
        // dockerd starts the `containerd` it finds first on PATH: the unpacked 1.7 one; runc comes
        // from bookworm (/usr/sbin), trixie's needs a newer glibc.
        let path = format!(
            "{r}/usr/bin:{r}/usr/sbin:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            r = root.display()
        );
        let plugins = dir.join("config/cli-plugins");
        std::fs::create_dir_all(&plugins).expect("create cli-plugins dir");
        std::os::unix::fs::symlink(
            root.join("usr/libexec/docker/cli-plugins/docker-buildx"),
            plugins.join("docker-buildx"),
        )
        .expect("link docker-buildx into the private DOCKER_CONFIG");
        Self::spawn(
            kind,
            dir,
            root.join("usr/sbin/dockerd"),
            root.join("usr/bin/docker"),
            args,
            Some(path),
            Some(bridge),
        )
    }

    fn spawn(
        kind: EngineKind,
        dir: PathBuf,
        dockerd: PathBuf,
        cli: PathBuf,
        args: Vec<String>,
        path: Option<String>,
        bridge: Option<Bridge>,
    ) -> TestEngine {
        std::fs::create_dir_all(dir.join("config")).expect("create DOCKER_CONFIG dir");
        let sock = dir.join("sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log file");
        let mut cmd = Command::new(&dockerd);
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "start {} ({e}): scripts/test.sh installs docker.io and Engine 26",
                dockerd.display()
            )
        });
        let engine = TestEngine {
            child,
            kind,
            host: format!("unix://{}", sock.display()),
            dir,
            cli,
            bridge,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if engine.docker(&["version"]).status.success() {
                return engine;
            }
            if Instant::now() > deadline {
                panic!(
                    "private {} ({kind:?}) did not start within 60 s; log:\n{}",
                    dockerd.display(),
                    engine.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The engine's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Path of the Docker CLI matching this engine (`/usr/bin/docker` 20.10, or Engine 26's 26.1).
    pub fn cli(&self) -> &Path {
        &self.cli
    }

    /// This engine's private `DOCKER_CONFIG` (logins land here; Engine 26's has buildx in
    /// `cli-plugins/`).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The matching Docker CLI with `DOCKER_HOST` and `DOCKER_CONFIG` set, for tests to add
    /// arguments, stdin or env to. Engine 20.10 gets `DOCKER_BUILDKIT=0` (its classic builder);
    /// Engine 26's `docker build` is BuildKit through buildx.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.docker_config());
        if self.kind == EngineKind::V20 {
            cmd.env("DOCKER_BUILDKIT", "0");
        }
        cmd
    }

    /// Runs the Docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker CLI")
    }

    /// Runs the Docker CLI and returns stdout, panicking with stderr on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Full image id (`sha256:…`) of a reference.
    pub fn image_id(&self, reference: &str) -> String {
        self.docker_ok(&["image", "inspect", "-f", "{{.Id}}", reference])
            .trim()
            .to_string()
    }

    /// Whether the engine has this image.
    pub fn has_image(&self, reference: &str) -> bool {
        self.docker(&["image", "inspect", reference])
            .status
            .success()
    }

    /// Removes every image (and container) so the next build starts cold, as on a fresh CI worker.
    pub fn wipe(&self) {
        let containers = self.docker_ok(&["ps", "-aq"]);
        for c in containers.split_whitespace() {
            self.docker_ok(&["rm", "-f", c]);
        }
        // `prune -a` removes images children-first, which `rmi` of a parent chain cannot do in one go
        // ("image has dependent child images").
        self.docker_ok(&["image", "prune", "-a", "-f"]);
        if self.kind.is_v26() {
            // BuildKit keeps its own cache beside the images.
            self.docker_ok(&["builder", "prune", "-a", "-f"]);
        }
        let left = self.docker_ok(&["images", "-aq"]);
        assert!(
            left.trim().is_empty(),
            "engine still has images after wipe: {left}"
        );
    }

    /// The image and its parent chain, child first (`docker inspect .Parent` until empty).
    pub fn chain(&self, reference: &str) -> Vec<String> {
        let mut out = vec![self.image_id(reference)];
        loop {
            let parent =
                self.docker_ok(&["image", "inspect", "-f", "{{.Parent}}", out.last().unwrap()]);
            let parent = parent.trim();
            if parent.is_empty() {
                return out;
            }
            out.push(parent.to_string());
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount its overlay layers, so the data root can be removed.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The bridge goes last, once no dockerd uses it.
        drop(self.bridge.take());
    }
}

/// A fresh engine directory with a short path: the socket path must fit in sun_path (108 bytes).
fn engine_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("lc-dk")
        .tempdir_in("/tmp")
        .expect("temp dir")
        .keep()
}

/// A build context: a temp dir with `busybox` (static) and a Dockerfile the test writes.
pub struct Context {
    pub dir: TempDir,
    /// A second temp dir for files that must not be in the build context (saved tarballs).
    scratch: TempDir,
}

impl Context {
    /// A context holding `/bin/busybox` as `busybox`, and `Dockerfile` with `dockerfile`.
    pub fn new(dockerfile: &str) -> Context {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("copy /bin/busybox (scripts/test.sh installs busybox-static)");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        Context {
            dir,
            scratch: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A path for `name` in this test's own scratch dir, outside the build context.
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn write(&self, name: &str, content: &str) {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, content).unwrap();
    }
}

/// Runs a command, returning (status success, stdout, stderr) and echoing stderr lines as they come
/// with a prefix so a failing test's log shows what the binary said.
pub fn run_logged(mut cmd: Command, label: &str) -> (bool, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let label_owned = label.to_string();
    let t = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label_owned}] {line}");
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(all);
    });
    let out = child.wait_with_output().expect("wait");
    t.join().unwrap();
    let err = rx.recv().unwrap_or_default();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

/// `docker save` of `tag` plus its whole parent chain, so `manifest.json` carries `Parent` links.
pub fn save_with_chain(engine: &TestEngine, tag: &str, out: &std::path::Path) {
    let chain = engine.chain(tag);
    let mut args = vec!["save", "-o", out.to_str().unwrap(), tag];
    args.extend(chain.iter().skip(1).map(String::as_str));
    engine.docker_ok(&args);
}

/// Streams `GET url` into `docker load` on `engine`.
pub fn load_from(engine: &TestEngine, url: &str) -> String {
    let mut resp = reqwest::blocking::get(url).expect("GET tarball");
    assert_eq!(resp.status(), 200, "GET {url}");
    let mut child = engine
        .command()
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    resp.copy_to(&mut stdin).expect("stream into docker load");
    stdin.flush().unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn put_file(url: &str, path: &std::path::Path) -> reqwest::blocking::Response {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    reqwest::blocking::Client::new()
        .put(url)
        .body(reqwest::blocking::Body::sized(file, len))
        .send()
        .expect("PUT")
}

/// The Dockerfile most tests build: FROM scratch, busybox, several steps each making a layer.
pub const MULTI_STEP_DOCKERFILE: &str = "\
FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN echo one > /one.txt
ENV GREETING=hello
RUN dd if=/dev/urandom of=/blob.bin bs=1024 count=256 2>/dev/null
COPY app.txt /app.txt
CMD [\"cat\", \"/app.txt\"]
";
