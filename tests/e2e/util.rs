//! Test fixtures: a real `layercache-server` process on a free port, private Docker engines, and
//! busybox-based build contexts.
//!
//! Every test owns what it starts: its server's data dir and its engine's data root live in temp dirs
//! that go when the fixture is dropped, so tests run in parallel without seeing each other's images.

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
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> TestServer {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(bin("layercache-server"))
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

/// The Docker CLI to drive engines with: Debian's (`/usr/bin/docker`, same release as the engine)
/// when present, so the legacy builder and save format are the engine's own.
pub fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// A private `dockerd` with its own data root, exec root and socket, stopped and removed on drop.
pub struct TestEngine {
    child: Child,
    /// `unix:///…/sock`, for `DOCKER_HOST`.
    pub host: String,
    dir: PathBuf,
}

impl TestEngine {
    /// Starts an engine; panics (the test fails, never skips) if dockerd is missing or won't start.
    pub fn start() -> TestEngine {
        Self::start_with(&["--bridge=none", "--iptables=false"])
    }

    /// Starts an engine with the given network flags.
    pub fn start_with(net_flags: &[&str]) -> TestEngine {
        // Short paths: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("lc-dk")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let sock = dir.join("sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log file");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(net_flags)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (scripts/test.sh installs docker.io)");
        let engine = TestEngine {
            child,
            host: format!("unix://{}", sock.display()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if engine.docker(&["version"]).status.success() {
                return engine;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default();
                panic!("private dockerd did not start within 60 s; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the Docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("run docker CLI")
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
    }
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
    let mut child = Command::new(docker_cli())
        .arg("load")
        .env("DOCKER_HOST", &engine.host)
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
