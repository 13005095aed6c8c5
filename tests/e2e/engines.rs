//! Smoke tests of the engine fixtures: each [`EngineKind`] starts and runs the engine and image store
//! it says, so a test written for Engine 26 on the containerd store really runs there.

use crate::util::{EngineKind, TestEngine};

/// `docker info` fields of an engine: server version, storage driver, driver status pairs.
fn info(engine: &TestEngine) -> (String, String, String) {
    let out = engine.docker_ok(&[
        "info",
        "-f",
        "{{.ServerVersion}}|{{.Driver}}|{{json .DriverStatus}}",
    ]);
    let mut parts = out.trim().splitn(3, '|').map(str::to_string);
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

#[test]
fn engine_v20_is_debian_20_10_on_the_classic_store() {
    let engine = TestEngine::start_kind(EngineKind::V20);
    let (version, driver, status) = info(&engine);
    assert!(version.starts_with("20.10."), "server version {version}");
    assert_eq!(driver, "overlay2", "driver status {status}");
}

#[test]
fn engine_v26_classic_runs_26_1_on_overlay2() {
    let engine = TestEngine::start_kind(EngineKind::V26Classic);
    let (version, driver, status) = info(&engine);
    assert!(version.starts_with("26.1."), "server version {version}");
    assert_eq!(driver, "overlay2", "driver status {status}");
    assert!(
        !status.contains("io.containerd.snapshotter.v1"),
        "classic store expected, driver status {status}"
    );
    assert!(engine.cli().starts_with(crate::util::engine26_dir()));
    let client = engine.docker_ok(&["version", "-f", "{{.Client.Version}}"]);
    assert!(client.starts_with("26.1."), "CLI version {client}");
}

#[test]
fn engine_v26_containerd_uses_the_containerd_image_store_and_has_buildx() {
    let engine = TestEngine::start_kind(EngineKind::V26Containerd);
    let (version, _driver, status) = info(&engine);
    assert!(version.starts_with("26.1."), "server version {version}");
    assert!(
        status.contains(r#"["driver-type","io.containerd.snapshotter.v1"]"#),
        "containerd image store expected, driver status {status}"
    );
    let buildx = engine.docker_ok(&["buildx", "version"]);
    assert!(buildx.contains("0.13"), "buildx version {buildx}");
    // BuildKit's RUN needs the engine's bridge network: a one-step build proves it is there.
    let ctx = crate::util::Context::new(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"true\"]\n",
    );
    engine.docker_ok(&["build", "--progress=plain", "-t", "smoke", ctx.path_str()]);
    assert!(engine.has_image("smoke"));
}
