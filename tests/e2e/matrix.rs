//! `layercache build` hits the cache on every engine kind a CI fleet runs: Engine 20.10; Engine 26.1
//! on the classic store; Engine 26.1 on the containerd store with BuildKit (the default there), and
//! with `--builder classic`.
//!
//! Each case builds a two-stage Dockerfile with a slow step in each stage under `main`, wipes the
//! engine, builds under `feature --fallback main`: no step runs again (asserted on the engine's own
//! build output: each slow step prints a marker only when it runs) and the JSON summary says the
//! hit, the builder and the path. Then the last step changes and only it runs again.

use std::process::Command;

use serde_json::Value;

use crate::util::{Context, EngineKind, TestEngine, TestServer, bin, run_logged};

/// One slow step per stage; each `RUN` prints `ran-<stage>` when it runs (a reused step prints
/// nothing), so the engine's output says what ran whatever the builder.
const TWO_STAGE: &str = "\
FROM scratch AS build
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 3; echo ran-build; echo one > /one\"]

FROM scratch
COPY busybox /bin/busybox
COPY --from=build /one /one
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 3; echo ran-final; echo two > /two\"]
";

/// `layercache build --json` on `engine` with its own CLI and buildx, against `url` with `token`;
/// returns (success, summary, stderr).
fn run(
    engine: &TestEngine,
    url: &str,
    token: Option<&str>,
    ctx: &Context,
    args: &[&str],
) -> (bool, Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.arg("build")
        .args(args)
        .args(["-t", "e2e/matrix:latest", "--json", ctx.path_str()])
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_CONFIG", engine.docker_config())
        .env("LAYERCACHE_DOCKER_CLI", engine.cli())
        .env("LAYERCACHE_SERVER", url)
        .env_remove("LAYERCACHE_TOKEN");
    if let Some(token) = token {
        cmd.env("LAYERCACHE_TOKEN", token);
    }
    let (ok, stdout, stderr) = run_logged(cmd, "layercache");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (ok, summary, stderr)
}

/// [`run`] that must succeed and print a summary; returns (summary, stderr).
fn build(
    engine: &TestEngine,
    server: &TestServer,
    ctx: &Context,
    args: &[&str],
) -> (Value, String) {
    let (ok, summary, stderr) = run(engine, &server.url, None, ctx, args);
    assert!(ok, "layercache build failed:\n{stderr}");
    assert!(
        summary.is_object(),
        "--json printed no JSON object:\n{stderr}"
    );
    (summary, stderr)
}

/// Lines of the build output that are a step's own output, not the echo of its command.
fn ran(stderr: &str, marker: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.trim_end().ends_with(marker) && !l.contains("echo"))
}

fn matrix_case(kind: EngineKind, builder: &[&str], expect_builder: &str, expect_path: &str) {
    let engine = TestEngine::start_kind(kind);
    let server = TestServer::start();
    let ctx = Context::new(TWO_STAGE);

    let (cold, out) = build(
        &engine,
        &server,
        &ctx,
        &[&["--namespace", "main"], builder].concat(),
    );
    assert_eq!(cold["cache"], "miss", "{cold}");
    assert_eq!(cold["builder"], expect_builder, "{cold}");
    assert_eq!(cold["path"], expect_path, "{cold}");
    assert_eq!(cold["pushed"], true, "{cold}");
    assert!(ran(&out, "ran-build") && ran(&out, "ran-final"), "{out}");
    assert!(cold["steps_run"].as_u64().unwrap() >= 2, "{cold}");

    engine.wipe();
    let feature = [&["--namespace", "feature", "--fallback", "main"], builder].concat();
    let (warm, out) = build(&engine, &server, &ctx, &feature);
    assert!(
        !ran(&out, "ran-build") && !ran(&out, "ran-final"),
        "a step ran again on the wiped engine:\n{out}"
    );
    assert_eq!(warm["cache"], "fallback", "{warm}");
    assert_eq!(warm["steps_run"], 0, "{warm}\n{out}");
    assert!(warm["steps_reused"].as_u64().unwrap() >= 3, "{warm}");
    assert_eq!(warm["builder"], expect_builder, "{warm}");
    assert!(warm["warnings"].as_array().unwrap().is_empty(), "{warm}");

    // The last step changes: on a wiped engine, only it runs.
    ctx.write("Dockerfile", &TWO_STAGE.replace("ran-final", "ran-changed"));
    engine.wipe();
    let (changed, out) = build(&engine, &server, &ctx, &feature);
    assert!(ran(&out, "ran-changed"), "{out}");
    assert!(!ran(&out, "ran-build"), "the first stage ran again:\n{out}");
    assert_eq!(changed["steps_run"], 1, "{changed}\n{out}");
    assert_ne!(changed["cache"], "miss", "{changed}");
}

#[test]
fn engine_20_10_classic_builder_hits_main_from_a_feature_branch() {
    matrix_case(EngineKind::V20, &[], "classic", "classic-cachefrom");
}

#[test]
fn engine_26_classic_store_uses_the_classic_builder_with_cachefrom_and_hits() {
    matrix_case(EngineKind::V26Classic, &[], "classic", "classic-cachefrom");
}

#[test]
fn engine_26_containerd_store_buildkit_hits_through_the_registry_cache() {
    matrix_case(
        EngineKind::V26Containerd,
        &[],
        "buildkit",
        "buildkit-registry",
    );
}

#[test]
fn engine_26_containerd_store_with_builder_classic_hits() {
    matrix_case(
        EngineKind::V26Containerd,
        &["--builder", "classic"],
        "classic",
        "classic-cachefrom",
    );
}

/// A server that is down: BuildKit builds anyway, uncached, with a warning, and exports nothing.
#[test]
fn buildkit_build_runs_with_a_warning_when_the_server_is_down() {
    let engine = TestEngine::start_kind(EngineKind::V26Containerd);
    let ctx = Context::new(TWO_STAGE);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (ok, summary, stderr) = run(&engine, &dead, None, &ctx, &["--namespace", "main"]);
    assert!(
        ok,
        "the build must not fail when the server is down:\n{stderr}"
    );
    assert_eq!(summary["cache"], "miss", "{summary}");
    assert_eq!(summary["builder"], "buildkit", "{summary}");
    assert_eq!(summary["pushed"], false, "{summary}");
    assert!(
        !summary["warnings"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    assert!(engine.has_image("e2e/matrix:latest"));
}

/// Creates a token in `data_dir` before the server starts; returns it.
fn create_token(data_dir: &std::path::Path, role: &str) -> String {
    let out = Command::new(bin("layercache-server"))
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--role", role, "--namespace", "*"])
        .output()
        .expect("run layercache-server token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pull requests get read tokens: their BuildKit build imports main's cache (every step reused)
/// and exports nothing; the write token's build exported it through the registry with the token
/// as password.
#[test]
fn buildkit_with_a_read_token_imports_main_and_exports_nothing() {
    let data = tempfile::tempdir().unwrap();
    let write = create_token(data.path(), "write");
    let read = create_token(data.path(), "read");
    let server = TestServer::start_on(data.path(), &[]);
    let engine = TestEngine::start_kind(EngineKind::V26Containerd);
    let ctx = Context::new(TWO_STAGE);

    let (ok, main, stderr) = run(
        &engine,
        &server.url,
        Some(&write),
        &ctx,
        &["--namespace", "main"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(main["pushed"], true, "{main}\n{stderr}");
    assert!(main["warnings"].as_array().unwrap().is_empty(), "{main}");

    engine.wipe();
    let args = ["--namespace", "pr-7", "--fallback", "main"];
    let (ok, pr, stderr) = run(&engine, &server.url, Some(&read), &ctx, &args);
    assert!(ok, "{stderr}");
    assert_eq!(pr["cache"], "fallback", "{pr}\n{stderr}");
    assert!(
        !ran(&stderr, "ran-build") && !ran(&stderr, "ran-final"),
        "a step ran again with main's cache imported:\n{stderr}"
    );
    assert_eq!(pr["steps_run"], 0, "{pr}\n{stderr}");
    assert_eq!(pr["pushed"], false, "{pr}\n{stderr}");
    assert!(stderr.contains("may only read"), "{stderr}");
    assert!(
        !stderr.contains("exporting cache"),
        "a read token exported:\n{stderr}"
    );
}

/// The classic builder refuses BuildKit-only syntax: said before building, naming the lines.
#[test]
fn classic_builder_names_buildkit_only_lines_before_building() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(
        "FROM scratch\nCOPY --chmod=755 busybox /bin/busybox\nRUN --mount=type=cache,target=/c [\"/bin/busybox\", \"true\"]\n",
    );
    let (ok, _, stderr) = run(&engine, &server.url, None, &ctx, &["--namespace", "main"]);
    assert!(!ok, "the build should have been refused:\n{stderr}");
    assert!(
        stderr.contains("line 2: COPY --chmod") && stderr.contains("line 3: RUN --mount"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Step 1/"),
        "it started building:\n{stderr}"
    );
}
