//! The registry protocol (`/v2/`, issue 10) driven by real clients against the real server binary:
//! `docker push`/`pull` (and a cross-repository mount) on Engine 20.10 and on Engine 26.1's classic
//! and containerd stores, `skopeo copy` in from a `docker-archive:` and out to an `oci:` layout,
//! BuildKit's registry cache (`--cache-to`/`--cache-from type=registry,mode=max`, both cache formats,
//! the tag rewritten like successive CI builds) across two engines, and `docker login` with
//! layercache tokens (write pushes, read pulls but cannot push, unknown refused).
//!
//! `LAYERCACHE_TEST_REGISTRY=distribution` runs the token-free tests against Debian's
//! `docker-registry` (distribution 2.8) instead: the reference registry, to check the tests
//! themselves. Without it (CI) every test runs against `layercache-server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::util::{Context, EngineKind, MULTI_STEP_DOCKERFILE, TestEngine, TestServer};

/// A registry on a loopback port (engines treat 127.0.0.0/8 as insecure-allowed: plain HTTP).
enum TestRegistry {
    /// `layercache-server`, serving `/v2/` beside its v1 API.
    Layercache(TestServer),
    /// Debian's `docker-registry` (distribution 2.8), the reference implementation.
    Distribution {
        /// The `docker-registry serve` process, killed on drop.
        child: Child,
        /// `127.0.0.1:PORT`.
        host: String,
        /// Config file and storage root.
        _dir: TempDir,
    },
}

impl TestRegistry {
    /// The registry the tests target: layercache, unless `LAYERCACHE_TEST_REGISTRY=distribution`.
    fn start() -> TestRegistry {
        match std::env::var("LAYERCACHE_TEST_REGISTRY").as_deref() {
            Ok("distribution") => Self::distribution(),
            Ok("layercache") | Err(_) => TestRegistry::Layercache(TestServer::start()),
            Ok(other) => {
                panic!("LAYERCACHE_TEST_REGISTRY={other}: expected layercache or distribution")
            }
        }
    }

    fn distribution() -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (scripts/test.sh installs it)");
        let registry = TestRegistry::Distribution {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(format!("http://{}/v2/", registry.host()))
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    fn host(&self) -> String {
        match self {
            TestRegistry::Layercache(server) => {
                server.url.trim_start_matches("http://").to_string()
            }
            TestRegistry::Distribution { host, .. } => host.clone(),
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let TestRegistry::Distribution { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A build context for [`MULTI_STEP_DOCKERFILE`] (busybox FROM scratch, several layers).
fn app_context() -> Context {
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "registry test\n");
    ctx
}

/// Builds, pushes, wipes the engine, pulls: the image comes back with the same ID. A second push of
/// the same image into another repository mounts its blobs across (`?mount=&from=`) and pulls too.
fn push_wipe_pull(kind: EngineKind) {
    let registry = TestRegistry::start();
    let engine = TestEngine::start_kind(kind);
    let ctx = app_context();
    let image = format!("{}/acme/app:v1", registry.host());
    let mounted = format!("{}/acme/copy:v1", registry.host());
    engine.docker_ok(&["build", "-t", &image, ctx.path_str()]);
    engine.docker_ok(&["tag", &image, &mounted]);
    let built = engine.image_id(&image);

    engine.docker_ok(&["push", &image]);
    let second = engine.docker_ok(&["push", &mounted]);
    if kind == EngineKind::V20 {
        // Engine 20.10 remembers where it pushed each layer and asks the registry to mount it.
        assert!(
            second.contains("Mounted from acme/app"),
            "second push should mount the layers from acme/app:\n{second}"
        );
    }
    for reference in [&image, &mounted] {
        engine.wipe();
        assert!(!engine.has_image(reference), "wipe left {reference} behind");
        engine.docker_ok(&["pull", reference]);
        assert_eq!(
            engine.image_id(reference),
            built,
            "pulled {reference}: image ID differs from the pushed one"
        );
        let out = engine.docker_ok(&["run", "--rm", "--network=none", reference]);
        assert_eq!(
            out, "registry test\n",
            "pulled {reference} runs with the pushed content"
        );
    }
}

#[test]
fn docker_push_then_pull_on_engine_20_gives_the_same_image_id() {
    push_wipe_pull(EngineKind::V20);
}

#[test]
fn docker_push_then_pull_on_engine_26_classic_store_gives_the_same_image_id() {
    push_wipe_pull(EngineKind::V26Classic);
}

#[test]
fn docker_push_then_pull_on_engine_26_containerd_store_gives_the_same_image_id() {
    push_wipe_pull(EngineKind::V26Containerd);
}

/// Reads a JSON file.
fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A string array field of a JSON value, e.g. a config's `rootfs.diff_ids`.
fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

/// The `digest` of each entry of a manifest's `layers`.
fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest without layers: {manifest}"))
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_string())
        .collect()
}

/// Runs skopeo, panicking with its stderr on failure.
fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A blob of an OCI layout, checked against its digest.
fn oci_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        hex,
        "{} content",
        path.display()
    );
    bytes
}

#[test]
fn skopeo_copies_a_docker_archive_in_and_an_oci_layout_out_with_the_same_layers() {
    let registry = TestRegistry::start();
    let engine = TestEngine::start();
    let ctx = app_context();
    engine.docker_ok(&["build", "-t", "app:v1", ctx.path_str()]);
    let archive = ctx.scratch_file("app.tar");
    engine.docker_ok(&["save", "-o", archive.to_str().unwrap(), "app:v1"]);

    // The archive's own layers: its config's diff IDs (digests of the uncompressed layer tars).
    let unpacked = ctx.scratch_file("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("run tar");
    assert!(tar.success(), "tar -xf {}", archive.display());
    let saved = read_json(&unpacked.join("manifest.json"));
    let saved_config = read_json(&unpacked.join(saved[0]["Config"].as_str().expect("Config")));
    let archive_diff_ids = strings(&saved_config["rootfs"]["diff_ids"]);
    assert!(archive_diff_ids.len() >= 4, "test image has several layers");

    let remote = format!("docker://{}/acme/skopeo/app:v1", registry.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("docker-archive:{}", archive.display()),
        &remote,
    ]);
    let pushed: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &remote,
    ]))
    .expect("manifest JSON");
    let pushed_layers = layer_digests(&pushed);

    let layout = ctx.scratch_file("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:v1", layout.display()),
    ]);
    let index = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&oci_blob(&layout, manifest_digest)).expect("manifest JSON");
    assert_eq!(
        layer_digests(&manifest),
        pushed_layers,
        "oci: layout holds other layer blobs than the registry's manifest names"
    );
    for digest in &pushed_layers {
        oci_blob(&layout, digest);
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: serde_json::Value =
        serde_json::from_slice(&oci_blob(&layout, config_digest)).expect("config JSON");
    assert_eq!(
        strings(&config["rootfs"]["diff_ids"]),
        archive_diff_ids,
        "layers copied out differ from the docker-archive's"
    );
}

/// Step IDs of a `--progress=plain` build (`#7 [3/6] RUN …`) and those reported `#7 CACHED`.
fn build_steps(output: &str) -> (Vec<String>, Vec<String>) {
    let mut steps = Vec::new();
    let mut cached = Vec::new();
    for line in output.lines() {
        let Some((id, rest)) = line.split_once(' ') else {
            continue;
        };
        if !id.starts_with('#') {
            continue;
        }
        let rest = rest.trim();
        if is_dockerfile_step(rest) && !steps.iter().any(|s| s == id) {
            steps.push(id.to_string());
        } else if (rest == "CACHED" || is_blob_pull(rest)) && !cached.iter().any(|s| s == id) {
            cached.push(id.to_string());
        }
    }
    (steps, cached)
}

/// Whether a progress line is a layer blob being fetched (`sha256:<hex> 3.50kB / 3.50kB 0.0s
/// done`). When the image is unpacked into the containerd store, BuildKit fetches a cache hit's
/// layers from the cache registry under the step's own number, and the step then shows those
/// transfers and `DONE` instead of `CACHED` (seen for the last step, racing the exporter). A step
/// that ran fetches nothing: a COPY prints no line, a RUN its command's output.
fn is_blob_pull(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .and_then(|t| t.split_once(' '))
        .is_some_and(|(hex, rest)| {
            hex.len() == 64
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
                && rest.trim_end().ends_with(" done")
        })
}

/// Whether a progress line names a Dockerfile step, `[3/6] RUN …` or `[stage-1 2/4] COPY …`, and
/// not BuildKit's own work (`[internal] load build context`).
fn is_dockerfile_step(text: &str) -> bool {
    let Some(label) = text
        .strip_prefix('[')
        .and_then(|t| t.split_once(']'))
        .map(|(l, _)| l)
    else {
        return false;
    };
    let counter = label.rsplit(' ').next().unwrap_or_default();
    counter
        .split_once('/')
        .is_some_and(|(n, of)| n.parse::<u32>().is_ok() && of.parse::<u32>().is_ok())
}

/// `docker buildx build --progress=plain` with extra flags on `engine`; returns the build log.
fn buildx(engine: &TestEngine, ctx: &Context, flags: &[&str]) -> String {
    let mut cmd = engine.command();
    cmd.args(["buildx", "build", "--progress=plain", "-t", "app:ci"])
        .args(flags)
        .arg(ctx.path_str());
    let out = cmd.output().expect("run docker buildx build");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "docker buildx build {}:\n{log}",
        flags.join(" ")
    );
    log
}

/// Exports a mode=max cache from one Engine 26 (containerd store), twice to the same tag like CI
/// builds of successive commits, and builds the latest on a second, fresh engine importing it: every
/// step must come from the cache.
fn registry_cache_round_trip(format_flags: &str) {
    let registry = TestRegistry::start();
    let cache = format!("{}/acme/cache:main", registry.host());
    let cache_to = format!("--cache-to=type=registry,ref={cache},mode=max{format_flags}");
    let ctx = app_context();

    let first = TestEngine::start_kind(EngineKind::V26Containerd);
    ctx.write("app.txt", "an older commit\n");
    let log = buildx(&first, &ctx, &[&cache_to]);
    let (steps, cached) = build_steps(&log);
    assert!(
        steps.len() >= 5,
        "expected the Dockerfile's steps in the log:\n{log}"
    );
    assert!(
        cached.is_empty(),
        "a fresh engine reused steps {cached:?}:\n{log}"
    );
    // The next commit's build replaces the cache tag, as every CI build of a branch does.
    ctx.write("app.txt", "registry test\n");
    let log = buildx(&first, &ctx, &[&cache_to]);
    let (steps, cached) = build_steps(&log);
    assert!(
        cached.len() < steps.len(),
        "the changed COPY must run again:\n{log}"
    );
    drop(first);

    let second = TestEngine::start_kind(EngineKind::V26Containerd);
    let log = buildx(
        &second,
        &ctx,
        &[&format!("--cache-from=type=registry,ref={cache}")],
    );
    assert!(
        log.contains("importing cache manifest from"),
        "no cache import:\n{log}"
    );
    let (steps, cached) = build_steps(&log);
    assert!(
        steps.len() >= 5,
        "expected the Dockerfile's steps in the log:\n{log}"
    );
    let missed: Vec<&String> = steps.iter().filter(|s| !cached.contains(s)).collect();
    assert!(missed.is_empty(), "steps {missed:?} not CACHED:\n{log}");
}

#[test]
fn buildkit_registry_cache_mode_max_default_format_makes_every_step_cached() {
    registry_cache_round_trip("");
}

#[test]
fn buildkit_registry_cache_mode_max_image_manifest_format_makes_every_step_cached() {
    registry_cache_round_trip(",image-manifest=true,oci-mediatypes=true");
}

/// Creates a token in `data_dir` (before the server starts) and returns it.
fn create_token(data_dir: &Path, role: &str, namespace: &str) -> String {
    let out = Command::new(crate::util::bin("layercache-server"))
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--role", role, "--namespace", namespace])
        .output()
        .expect("run layercache-server token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!token.is_empty(), "token create printed no token");
    token
}

/// `docker login HOST -u anything --password-stdin` with `token`; returns (success, output).
fn login(engine: &TestEngine, host: &str, token: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = engine
        .command()
        .args(["login", host, "-u", "anything", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker login");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn docker_login_with_tokens_write_pushes_read_pulls_but_cannot_push() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = tmp.path().join("data");
    let write = create_token(&data_dir, "write", "acme/*");
    let read = create_token(&data_dir, "read", "acme/*");
    let server = TestServer::start_on(&data_dir, &[]);
    let host = server.url.trim_start_matches("http://").to_string();
    let engine = TestEngine::start();
    let ctx = app_context();
    let image = format!("{host}/acme/web/app:v1");
    engine.docker_ok(&["build", "-t", &image, ctx.path_str()]);

    let anonymous = engine.docker(&["push", &image]);
    assert!(!anonymous.status.success(), "push without login succeeded");

    let (ok, out) = login(&engine, &host, "lc_not_a_token");
    assert!(!ok, "login with an unknown token succeeded: {out}");

    let (ok, out) = login(&engine, &host, &write);
    assert!(ok, "login with a write token failed: {out}");
    engine.docker_ok(&["push", &image]);
    let other = format!("{host}/other/app:v1");
    engine.docker_ok(&["tag", &image, &other]);
    let refused = engine.docker(&["push", &other]);
    assert!(
        !refused.status.success(),
        "write token for acme/* pushed to other/"
    );

    let (ok, out) = login(&engine, &host, &read);
    assert!(ok, "login with a read token failed: {out}");
    let second = format!("{host}/acme/web/app:v2");
    engine.docker_ok(&["tag", &image, &second]);
    let refused = engine.docker(&["push", &second]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "read token pushed: {said}");
    assert!(
        said.to_lowercase().contains("denied"),
        "refused push should say access is denied: {said}"
    );

    let id = engine.image_id(&image);
    engine.wipe();
    engine.docker_ok(&["pull", &image]);
    assert_eq!(
        engine.image_id(&image),
        id,
        "read token pulls what the write token pushed"
    );
}

/// The progress parser the cache tests rely on: steps and `CACHED` marks, BuildKit's own work left
/// out, so a build that ran a step can never pass for a cached one.
#[test]
fn plain_progress_parser_tells_cached_steps_from_run_ones() {
    let log = "\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 263B done
#1 DONE 0.0s
#4 [internal] load build context
#4 DONE 0.1s
#5 [1/6] COPY busybox /bin/busybox
#5 CACHED
#6 [stage-1 2/6] RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
#6 DONE 0.3s
#7 importing cache manifest from 127.0.0.1:5000/acme/cache:main
#10 [stage-1 3/6] COPY app.txt /app.txt
#10 sha256:54d9c75ad821c591d5c1f7d522a982a6be28b10c5fd4e5fed79acf5a5f19c5e8 3.50kB / 3.50kB 0.0s done
#10 sha256:900c334e9aa990fab54643d9e73d358eb7c9a990f999f1d786d55983c5bee8ea 262.37kB / 262.37kB 0.0s done
#10 DONE 0.1s
#11 [stage-1 4/6] COPY other.txt /other.txt
#11 sha256:54d9c75ad821c591d5c1f7d522a982a6be28b10c5fd4e5fed79acf5a5f19c5e8 1.2kB / 3.50kB 0.0s
#11 DONE 0.1s
";
    let (steps, cached) = build_steps(log);
    assert_eq!(steps, ["#5", "#6", "#10", "#11"]);
    assert_eq!(cached, ["#5", "#10"]);
}
