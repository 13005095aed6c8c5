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

/// `layercache build --json` on `engine` with its own CLI and buildx; returns (summary, stderr).
fn build(
    engine: &TestEngine,
    server: &TestServer,
    ctx: &Context,
    args: &[&str],
) -> (Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.arg("build")
        .args(args)
        .args(["-t", "e2e/matrix:latest", "--json", ctx.path_str()])
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_CONFIG", engine.docker_config())
        .env("LAYERCACHE_DOCKER_CLI", engine.cli())
        .env("LAYERCACHE_SERVER", &server.url);
    let (ok, stdout, stderr) = run_logged(cmd, "layercache");
    assert!(ok, "layercache build failed:\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json printed no JSON object ({e}): {stdout}"));
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
    assert_eq!(warm["steps_run"], 0, "{warm}");
    assert!(warm["steps_reused"].as_u64().unwrap() >= 3, "{warm}");
    assert_eq!(warm["builder"], expect_builder, "{warm}");
    assert!(warm["warnings"].as_array().unwrap().is_empty(), "{warm}");

    // The last step changes: on a wiped engine, only it runs.
    ctx.write("Dockerfile", &TWO_STAGE.replace("ran-final", "ran-changed"));
    engine.wipe();
    let (changed, out) = build(&engine, &server, &ctx, &feature);
    assert!(ran(&out, "ran-changed"), "{out}");
    assert!(!ran(&out, "ran-build"), "the first stage ran again:\n{out}");
    assert_eq!(changed["steps_run"], 1, "{changed}");
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
