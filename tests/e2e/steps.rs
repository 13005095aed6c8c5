//! `layercache steps` (the Jet workflow) on a real engine, with the sample project in
//! `tests/fixtures/jet-sample/`: a parallel group of three test steps, each with its own database
//! container, then a deploy step gated on `^main$`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use crate::util::{TestEngine, TestServer, bin};

/// A fresh copy of the sample project with `busybox` beside it.
fn sample_project() -> (tempfile::TempDir, PathBuf) {
    fixture_project("jet-sample", "jet-sample")
}

/// A fresh copy of `tests/fixtures/<fixture>` in a directory named `dir_name`, with `busybox`.
fn fixture_project(fixture: &str, dir_name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join(dir_name);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(fixture),
        &dest,
    );
    std::fs::copy("/bin/busybox", dest.join("busybox")).unwrap();
    (tmp, dest)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `layercache steps --json ARGS` in `dir`; returns (exit code, summary JSON, stderr).
fn steps(engine: &TestEngine, dir: &Path, args: &[&str]) -> (i32, Value, String) {
    // No cache server in these tests: service builds warn and run uncached.
    steps_with_server(engine, dir, "http://127.0.0.1:9", args)
}

/// [`steps`] with the cache server at `server_url`.
fn steps_with_server(
    engine: &TestEngine,
    dir: &Path,
    server_url: &str,
    args: &[&str],
) -> (i32, Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.arg("steps")
        .args(["--jobs", "3", "--json", "--ci-commit-id", "abc"])
        .args(args)
        .current_dir(dir)
        .env("DOCKER_HOST", &engine.host)
        .env("LAYERCACHE_SERVER", server_url);
    let out = cmd.output().expect("run layercache steps");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("[layercache steps]\n{stderr}");
    let summary =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), summary, stderr)
}

fn step<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("step {name} in {summary}"))
}

fn assert_nothing_left(engine: &TestEngine) {
    let containers = engine.docker_ok(&["ps", "-aq", "--filter", "label=layercache.run"]);
    let networks = engine.docker_ok(&["network", "ls", "-q", "--filter", "label=layercache.run"]);
    // Every volume, not only labelled ones: anonymous volumes carry no label.
    let volumes = engine.docker_ok(&["volume", "ls", "-q"]);
    assert!(volumes.trim().is_empty(), "volumes left behind: {volumes}");
    assert!(
        containers.trim().is_empty(),
        "containers left behind: {containers}"
    );
    assert!(
        networks.trim().is_empty(),
        "networks left behind: {networks}"
    );
}

/// An engine whose containers talk over user-defined networks, held with this process's turn.
///
/// Such engines need iptables on, and all of them share the host's `DOCKER` nat chain: one
/// shutting down removes the chain under another ("Chain 'DOCKER' does not exist"). So the tests
/// that need one take turns; the engine is stopped before the turn passes (fields drop in order).
struct NetworkedEngine {
    engine: TestEngine,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for NetworkedEngine {
    type Target = TestEngine;
    fn deref(&self) -> &TestEngine {
        &self.engine
    }
}

/// Containers on user-defined networks need the bridge driver: keep iptables on, no docker0.
fn networked_engine() -> NetworkedEngine {
    static TURN: Mutex<()> = Mutex::new(());
    // A test that panicked while holding the turn still stopped its engine: the lock is free to use.
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    NetworkedEngine {
        engine: TestEngine::start_with(&["--bridge=none"]),
        _turn: turn,
    }
}

#[test]
fn parallel_steps_overlap_each_get_a_db_and_deploy_runs_on_main() {
    let engine = networked_engine();
    let (_tmp, dir) = sample_project();
    let (code, summary, stderr) = steps(&engine, &dir, &["--branch", "main"]);
    assert_eq!(code, 0, "run should pass:\n{stderr}");
    let names = ["test-unit", "test-integration", "test-lint"];
    for n in names {
        assert_eq!(step(&summary, n)["status"], "passed", "{summary}");
    }
    // Overlap: every test step started before the slow one ended.
    let slow_end = step(&summary, "test-integration")["end_offset_ms"]
        .as_u64()
        .unwrap();
    for n in names {
        let start = step(&summary, n)["start_offset_ms"].as_u64().unwrap();
        assert!(
            start + 2000 < slow_end,
            "{n} started at {start} ms, slow step ended at {slow_end} ms: not parallel"
        );
    }
    // The deploy step runs after all of them.
    let deploy = step(&summary, "deploy");
    assert_eq!(deploy["status"], "passed", "{summary}");
    let max_end = names
        .iter()
        .map(|n| step(&summary, n)["end_offset_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(deploy["start_offset_ms"].as_u64().unwrap() >= max_end);
    // Each test step saw its own database container.
    let mut dbs: Vec<String> = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.join("out").join(format!("{n}.db")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    dbs.sort();
    dbs.dedup();
    assert_eq!(dbs.len(), 3, "three distinct db containers: {dbs:?}");
    assert!(dir.join("out/deployed").exists());
    assert_nothing_left(&engine);
}

#[test]
fn tagged_step_is_skipped_on_other_branches() {
    let engine = networked_engine();
    let (_tmp, dir) = sample_project();
    let (code, summary, stderr) = steps(&engine, &dir, &["--branch", "feature/x"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(step(&summary, "deploy")["status"], "skipped", "{summary}");
    assert!(!dir.join("out/deployed").exists());
    assert_nothing_left(&engine);
}

#[test]
fn failing_step_stops_the_serial_chain_and_fails_the_run() {
    let engine = networked_engine();
    let (_tmp, dir) = sample_project();
    let (code, summary, stderr) = steps(
        &engine,
        &dir,
        &["--branch", "main", "--steps", "layercache-steps-fail.yml"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        step(&summary, "test-integration")["status"],
        "failed",
        "{summary}"
    );
    assert_eq!(step(&summary, "test-unit")["status"], "passed");
    assert_eq!(step(&summary, "deploy")["status"], "skipped");
    assert!(
        !dir.join("out/deployed").exists(),
        "deploy must not run after a failure"
    );
    assert_nothing_left(&engine);
}

#[test]
fn bad_steps_file_is_refused_with_file_line_and_column_before_anything_runs() {
    let engine = networked_engine();
    let (_tmp, dir) = sample_project();
    std::fs::write(
        dir.join("bad.yml"),
        "- name: x\n  service: nosuch\n  command: true\n",
    )
    .unwrap();
    let (code, _, stderr) = steps(&engine, &dir, &["--steps", "bad.yml"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("bad.yml:2:"),
        "file and line named:\n{stderr}"
    );
    assert!(stderr.contains("nosuch"), "{stderr}");
    assert!(
        engine.docker_ok(&["images", "-q"]).trim().is_empty(),
        "nothing built before validation"
    );
}

fn service<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["services"]
        .as_array()
        .unwrap_or_else(|| panic!("services in {summary}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("service {name} in {summary}"))
}

/// Issue 6: service images are built through the layer cache. The first run on a fresh worker
/// misses and pushes each service under `<namespace>/<service>`; a second run on another fresh
/// worker restores them (exact hits) and gets the very same image IDs.
#[test]
fn second_run_on_a_fresh_worker_restores_every_service_from_the_cache() {
    let server = TestServer::start();
    let args = ["--branch", "main", "--namespace", "jet"];
    let mut ids = Vec::new();
    for (run, expected) in [(1, "miss"), (2, "exact")] {
        let engine = networked_engine();
        let (_tmp, dir) = sample_project();
        let (code, summary, stderr) = steps_with_server(&engine, &dir, &server.url, &args);
        assert_eq!(code, 0, "run {run} should pass:\n{stderr}");
        let mut run_ids = Vec::new();
        for name in ["app", "db"] {
            let s = service(&summary, name);
            assert_eq!(s["cache"], expected, "run {run}, service {name}: {summary}");
            assert_eq!(s["namespace"], format!("jet/{name}").as_str(), "{summary}");
            assert_eq!(s["pushed"], true, "run {run}, service {name}: {summary}");
            assert!(
                s.get("warnings").is_none(),
                "no server problem expected: {summary}"
            );
            let id = s["image_id"].as_str().unwrap().to_string();
            assert_eq!(engine.image_id(s["image"].as_str().unwrap()), id);
            run_ids.push(id);
        }
        assert!(
            stderr.contains("build app "),
            "build lines are prefixed with the service:\n{stderr}"
        );
        ids.push(run_ids);
        assert_nothing_left(&engine);
    }
    assert_eq!(ids[0], ids[1], "the second worker got the cached images");
    let entries = server.get_json("/v1/entries");
    let text = entries.to_string();
    assert!(
        text.contains("jet/app") && text.contains("jet/db"),
        "{entries}"
    );
}

/// A `docker-registry` (Debian's distribution registry) on a loopback port with htpasswd auth.
struct TestRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    host: String,
    _dir: tempfile::TempDir,
}

const REGISTRY_USER: &str = "ci";
const REGISTRY_PASSWORD: &str = "s3cret-push";

impl TestRegistry {
    fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("htpasswd (apache2-utils) must be installed; scripts/test.sh installs it");
        assert!(htpasswd.status.success());
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: layercache-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = TestRegistry {
            child,
            host,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // An anonymous `/v2/` answers 401 once the registry listens.
            if let Ok(r) = reqwest::blocking::get(format!("http://{}/v2/", registry.host))
                && r.status() == 401
            {
                return registry;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not answer on {} within 20 s",
                registry.host
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn tags(&self, repo: &str) -> Value {
        reqwest::blocking::Client::new()
            .get(format!("http://{}/v2/{repo}/tags/list", self.host))
            .basic_auth(REGISTRY_USER, Some(REGISTRY_PASSWORD))
            .send()
            .unwrap()
            .json()
            .unwrap_or(Value::Null)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `layercache steps --json` on the compose sample with `DOCKER_CONFIG` and no `--jobs`
/// (every step of a parallel group at once is the default).
fn compose_steps(
    engine: &TestEngine,
    dir: &Path,
    docker_config: &Path,
    args: &[&str],
) -> (i32, Value, String) {
    let out = Command::new(bin("layercache"))
        .arg("steps")
        .args([
            "--json",
            "--ci-commit-id",
            "abc",
            "--services",
            "compose.yaml",
        ])
        .args(args)
        .current_dir(dir)
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_CONFIG", docker_config)
        .env("LAYERCACHE_SERVER", "http://127.0.0.1:9")
        .output()
        .expect("run layercache steps");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("[layercache steps]\n{stderr}");
    let summary =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), summary, stderr)
}

/// Issue 13, end to end: a compose file as projects write it (ports, restart, container_name,
/// expose, build.target, env_file, a named volume, x- fields, merge keys, interpolation) runs three
/// parallel steps, each with its own database that the app waits for (`service_healthy`); a
/// tagged push step pushes with the `docker login` credentials, and is refused without them;
/// nothing is left behind. The project directory is named `ctx-_8_x`, which once made image names
/// invalid references.
#[test]
fn compose_file_with_healthy_dependency_runs_parallel_steps_and_pushes_with_login() {
    let engine = networked_engine();
    let registry = TestRegistry::start();
    let (tmp, dir) = fixture_project("compose-sample", "ctx-_8_x");
    let steps = std::fs::read_to_string(dir.join("steps.yml")).unwrap();
    std::fs::write(
        dir.join("steps.yml"),
        format!(
            "{steps}- name: push-app\n  service: app\n  tag: ^main$\n  type: push\n  image_name: {}/compose-sample/app:ci\n",
            registry.host
        ),
    )
    .unwrap();
    let docker_config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let login = Command::new(crate::util::docker_cli())
        .arg("--config")
        .arg(&docker_config)
        .args([
            "login",
            &registry.host,
            "-u",
            REGISTRY_USER,
            "-p",
            REGISTRY_PASSWORD,
        ])
        .env("DOCKER_HOST", &engine.host)
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&login.stderr)
    );

    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        &docker_config,
        &["--branch", "main", "--steps", "steps.yml"],
    );
    assert_eq!(code, 0, "run should pass:\n{stderr}");
    for key in ["ports", "restart", "container_name", "expose"] {
        assert!(
            stderr.contains(&format!("notice: `services.db.{key}`"))
                || stderr.contains(&format!("notice: `services.app.{key}`")),
            "a notice for {key}:\n{stderr}"
        );
    }
    let names = ["test-unit", "test-integration", "test-lint"];
    for n in names {
        assert_eq!(step(&summary, n)["status"], "passed", "{summary}");
    }
    // All three at once by default: each started before the slow one ended.
    let slow_end = step(&summary, "test-integration")["end_offset_ms"]
        .as_u64()
        .unwrap();
    for n in names {
        let start = step(&summary, n)["start_offset_ms"].as_u64().unwrap();
        assert!(
            start + 2000 < slow_end,
            "{n} started at {start} ms, slow step ended at {slow_end} ms"
        );
    }
    assert!(
        stderr.matches("is healthy").count() >= 3,
        "every step waited for its own db to be healthy:\n{stderr}"
    );
    let mut dbs: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(dir.join("out").join(format!("{n}.db"))).unwrap())
        .collect();
    dbs.sort();
    dbs.dedup();
    assert_eq!(dbs.len(), 3, "three distinct db containers: {dbs:?}");
    assert_eq!(step(&summary, "push-app")["status"], "passed", "{summary}");
    let tags = registry.tags("compose-sample/app");
    assert_eq!(tags["tags"], serde_json::json!(["ci"]), "{tags}");
    assert_nothing_left(&engine);

    // Without the login, the registry refuses and the step says so.
    let empty_config = tmp.path().join("no-login");
    std::fs::create_dir_all(&empty_config).unwrap();
    std::fs::write(
        dir.join("push-only.yml"),
        format!(
            "- name: push-app\n  service: app\n  type: push\n  image_name: {}/compose-sample/app:nologin\n",
            registry.host
        ),
    )
    .unwrap();
    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        &empty_config,
        &["--branch", "main", "--steps", "push-only.yml"],
    );
    assert_eq!(code, 1, "{stderr}");
    let error = step(&summary, "push-app")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("refused the push") && error.contains("docker login"),
        "{error}"
    );
    assert_nothing_left(&engine);
}

#[test]
fn failing_compose_step_fails_the_run_and_leaves_nothing_behind() {
    let engine = networked_engine();
    let (tmp, dir) = fixture_project("compose-sample", "compose-sample");
    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        tmp.path(),
        &["--branch", "main", "--steps", "steps-fail.yml"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        step(&summary, "test-integration")["status"],
        "failed",
        "{summary}"
    );
    assert_eq!(step(&summary, "test-unit")["status"], "passed", "{summary}");
    assert_eq!(step(&summary, "test-lint")["status"], "passed", "{summary}");
    assert_eq!(step(&summary, "after")["status"], "skipped", "{summary}");
    assert_nothing_left(&engine);
}

/// `--check` parses both files, prints notices and the plan, and touches no engine (here there
/// is none: `DOCKER_HOST` names a socket that does not exist).
#[test]
fn check_prints_notices_and_plan_without_an_engine() {
    let (_tmp, dir) = fixture_project("compose-sample", "compose-sample");
    let out = Command::new(bin("layercache"))
        .args([
            "steps",
            "--check",
            "--services",
            "compose.yaml",
            "--branch",
            "dev",
            "--steps",
            "steps.yml",
        ])
        .current_dir(&dir)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("compose.yaml:21:7: notice: `services.db.ports` ignored"),
        "{stderr}"
    );
    assert!(stdout.contains("app  build"), "{stdout}");
    assert!(stdout.contains("after db (healthy)"), "{stdout}");
    assert!(
        stdout.contains("test-unit: run in `app` with db"),
        "{stdout}"
    );
    // An error names the file, line, column and key path, and exits non-zero.
    std::fs::write(
        dir.join("bad.yaml"),
        "services:\n  app:\n    image: x\n    build:\n      context: .\n      target: [a]\n",
    )
    .unwrap();
    let out = Command::new(bin("layercache"))
        .args(["steps", "--check", "--services", "bad.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.yaml:6:15: services.app.build.target"),
        "{stderr}"
    );
}

/// A dependency whose healthcheck never passes fails the step with a message naming the service,
/// the condition and the last check's output, and leaves nothing behind.
#[test]
fn unhealthy_dependency_fails_the_step_clearly() {
    let engine = networked_engine();
    let (tmp, dir) = fixture_project("compose-sample", "compose-sample");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let broken = compose.replace(
        "test: [\"CMD-SHELL\", \"wget -qO- http://127.0.0.1:5432/id\"]",
        "test: [\"CMD-SHELL\", \"echo db-not-ready; exit 1\"]",
    );
    assert_ne!(broken, compose, "the fixture's healthcheck line changed");
    std::fs::write(
        dir.join("compose.yaml"),
        broken.replace("retries: 30", "retries: 2"),
    )
    .unwrap();
    std::fs::write(
        dir.join("one.yml"),
        "- name: test-unit\n  service: app\n  command: sh test.sh 0\n",
    )
    .unwrap();
    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        tmp.path(),
        &["--branch", "main", "--steps", "one.yml"],
    );
    assert_eq!(code, 1, "{stderr}");
    let error = step(&summary, "test-unit")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("condition: service_healthy")
            && error.contains("`db` is unhealthy")
            && error.contains("db-not-ready"),
        "{error}"
    );
    assert_nothing_left(&engine);
}

/// The push step against layercache's own registry (`/v2/` of the cache server, auth on): `docker
/// login` with a write token as the password, then a tagged push step; without the login the
/// server refuses and the step says so.
#[test]
fn push_step_pushes_to_the_cache_servers_registry_with_docker_login() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = Command::new(bin("layercache-server"))
        .args(["token", "create", "--role", "write", "--namespace", "*"])
        .args(["--name", "steps-push", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run layercache-server token create");
    assert!(out.status.success(), "token create failed: {out:?}");
    let token = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("lc_"))
        .expect("token create prints the token")
        .to_string();
    let server = TestServer::start_on(&data, &[]);
    let host = server.url.trim_start_matches("http://").to_string();

    let engine = networked_engine();
    let (_project_tmp, dir) = fixture_project("compose-sample", "compose-sample");
    std::fs::write(
        dir.join("push.yml"),
        format!(
            "- name: push-app\n  service: app\n  tag: ^main$\n  type: push\n  image_name: {host}/compose-sample/app:ci\n"
        ),
    )
    .unwrap();
    let docker_config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let login = Command::new(crate::util::docker_cli())
        .arg("--config")
        .arg(&docker_config)
        .args(["login", &host, "-u", "ci", "-p", &token])
        .env("DOCKER_HOST", &engine.host)
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        &docker_config,
        &["--branch", "main", "--steps", "push.yml"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(step(&summary, "push-app")["status"], "passed", "{summary}");
    let tags: Value = reqwest::blocking::Client::new()
        .get(format!("{}/v2/compose-sample/app/tags/list", server.url))
        .basic_auth("ci", Some(&token))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["ci"]), "{tags}");
    assert_nothing_left(&engine);

    let no_login = tmp.path().join("no-login");
    std::fs::create_dir_all(&no_login).unwrap();
    let (code, summary, stderr) = compose_steps(
        &engine,
        &dir,
        &no_login,
        &["--branch", "main", "--steps", "push.yml"],
    );
    assert_eq!(code, 1, "{stderr}");
    let error = step(&summary, "push-app")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains(&format!("the registry `{host}` refused the push"))
            && error.contains(&format!("docker login {host}")),
        "{error}"
    );
}
