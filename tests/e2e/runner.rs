//! The `layercache` runner with real engines and a real server: what CI workers see.

use std::process::Command;

use serde_json::Value;

use crate::util::{Context, MULTI_STEP_DOCKERFILE, TestEngine, TestServer, bin, run_logged};

/// Runs `layercache ARGS --json` against `engine` and `server_url`; returns (success, summary, stderr).
fn layercache(engine: &TestEngine, server_url: &str, args: &[&str]) -> (bool, Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.args(args)
        .arg("--json")
        .env("DOCKER_HOST", &engine.host)
        .env("LAYERCACHE_SERVER", server_url);
    let (ok, stdout, stderr) = run_logged(cmd, "layercache");
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (ok, summary, stderr)
}

fn build(engine: &TestEngine, url: &str, ctx: &Context, ns: &str, extra: &[&str]) -> Value {
    let mut args = vec!["build", "--namespace", ns, "-t", "e2e/app:latest"];
    args.extend(extra);
    args.push(ctx.path_str());
    let (ok, summary, stderr) = layercache(engine, url, &args);
    assert!(ok, "layercache build failed:\n{stderr}");
    assert!(
        summary.is_object(),
        "--json printed one JSON object, got {summary}"
    );
    summary
}

/// Cold build pushes; a wiped engine then restores it exactly: every step cached, same image ID.
#[test]
fn cold_build_then_wiped_worker_gets_exact_hit_and_same_image() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "v1\n");

    let cold = build(&engine, &server.url, &ctx, "acme/web", &[]);
    assert_eq!(cold["cache"], "miss", "{cold}");
    assert!(
        cold["bytes_uploaded"].as_u64().unwrap() > 256 * 1024,
        "{cold}"
    );
    let id = cold["image_id"].as_str().unwrap().to_string();
    assert_eq!(engine.image_id("e2e/app:latest"), id);

    engine.wipe();
    let warm = build(&engine, &server.url, &ctx, "acme/web", &[]);
    assert_eq!(warm["cache"], "exact", "{warm}");
    assert_eq!(
        warm["image_id"],
        id.as_str(),
        "same image ID from the cache: {warm}"
    );
    assert_eq!(warm["bytes_uploaded"], 0, "nothing new to push: {warm}");
    assert!(
        warm["bytes_downloaded"].as_u64().unwrap() > 256 * 1024,
        "{warm}"
    );

    // Each build reported its outcome: the server lists both, newest first, with the cold build
    // as the baseline the hit is credited against.
    let builds = server.get_json("/v1/builds?namespace=acme%2Fweb");
    assert_eq!(builds["builds"], 2, "{builds}");
    let recent = builds["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{builds}");
    let key = cold["key"].as_str().unwrap();
    for (report, cache, summary) in [(&recent[0], "exact", &warm), (&recent[1], "miss", &cold)] {
        assert_eq!(report["cache"], cache, "{builds}");
        assert_eq!(report["key"], key, "{builds}");
        assert_eq!(report["namespace"], "acme/web", "{builds}");
        assert_eq!(report["image_id"], id.as_str(), "{builds}");
        let total = report["total_seconds"].as_f64().unwrap();
        let seconds = summary["seconds"].as_f64().unwrap();
        assert!((total - seconds).abs() < 1e-6, "{total} vs {summary}");
    }
    assert_eq!(
        recent[1]["seconds_saved"], 0.0,
        "a miss saves nothing: {builds}"
    );
}

/// Changing only the last instruction: the unchanged steps come from the cache and the push
/// uploads only the new layer and configs, not the 256 KiB random layer again.
#[test]
fn changed_last_step_reuses_earlier_steps_and_uploads_only_new_layer() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "v1\n");
    build(&engine, &server.url, &ctx, "acme/web", &[]);

    engine.wipe();
    ctx.write(
        "Dockerfile",
        &format!("{MULTI_STEP_DOCKERFILE}RUN echo changed > /changed.txt\n"),
    );
    let second = build(&engine, &server.url, &ctx, "acme/web", &[]);
    assert_eq!(second["cache"], "prefix", "{second}");
    assert_eq!(
        second["layers_uploaded"], 1,
        "only the new RUN layer: {second}"
    );
    let up = second["bytes_uploaded"].as_u64().unwrap();
    assert!(
        up < 64 * 1024,
        "uploaded {up} bytes: the new layer and configs only: {second}"
    );
}

/// A feature branch with `--fallback main` restores main's entry and writes its own.
#[test]
fn feature_branch_falls_back_to_main_and_writes_its_own_entry() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "main\n");
    let main = build(&engine, &server.url, &ctx, "acme/main", &[]);

    engine.wipe();
    let feature = build(
        &engine,
        &server.url,
        &ctx,
        "acme/feature-x",
        &["--fallback", "acme/main"],
    );
    assert_eq!(feature["cache"], "fallback", "{feature}");
    assert_eq!(feature["image_id"], main["image_id"]);
    let entries = server.get_json("/v1/entries?namespace=acme%2Ffeature-x");
    assert_eq!(
        entries["entries"].as_array().unwrap().len(),
        1,
        "feature branch wrote its own entry: {entries}"
    );
}

/// Two CI workers (two engines) share one server: what A pushed, B restores and builds from cache.
#[test]
fn two_workers_share_one_cache() {
    let (a, b) = (TestEngine::start(), TestEngine::start());
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "shared\n");
    let from_a = build(&a, &server.url, &ctx, "fleet", &[]);
    let from_b = build(&b, &server.url, &ctx, "fleet", &[]);
    assert_eq!(from_b["cache"], "exact", "{from_b}");
    assert_eq!(
        from_b["image_id"], from_a["image_id"],
        "worker B built the same image from A's cache"
    );
}

/// Multi-stage: the builder stage's slow step is not re-run on a second worker.
#[test]
fn multi_stage_builder_stage_is_cached_on_second_worker() {
    let (a, b) = (TestEngine::start(), TestEngine::start());
    let server = TestServer::start();
    let ctx = Context::new(
        "FROM scratch AS builder\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN sleep 4 && echo compiled-$RANDOM > /artifact\n\
         FROM scratch\n\
         COPY busybox /bin/busybox\n\
         COPY --from=builder /artifact /artifact\n\
         CMD [\"/bin/busybox\", \"cat\", \"/artifact\"]\n",
    );
    let from_a = build(&a, &server.url, &ctx, "ms", &[]);
    let started = std::time::Instant::now();
    let mut cmd = Command::new(bin("layercache"));
    cmd.args([
        "build",
        "--namespace",
        "ms",
        "-t",
        "e2e/app:latest",
        ctx.path_str(),
    ])
    .env("DOCKER_HOST", &b.host)
    .env("LAYERCACHE_SERVER", &server.url);
    let (ok, _stdout, stderr) = run_logged(cmd, "layercache");
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("Running in"),
        "no RUN step re-ran on worker B:\n{stderr}"
    );
    assert!(started.elapsed().as_secs_f64() < 30.0);
    assert_eq!(
        b.image_id("e2e/app:latest"),
        from_a["image_id"].as_str().unwrap()
    );
}

/// The server down: the build still succeeds, uncached, with a warning.
#[test]
fn server_down_still_builds_uncached_with_warning() {
    let engine = TestEngine::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "offline\n");
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (ok, summary, stderr) = layercache(
        &engine,
        &dead,
        &["build", "--namespace", "x", ctx.path_str()],
    );
    assert!(ok, "build must not fail when the server is down:\n{stderr}");
    assert_eq!(summary["cache"], "miss", "{summary}");
    assert!(
        stderr.to_lowercase().contains("warn"),
        "a warning names the problem:\n{stderr}"
    );
    assert!(engine.has_image(summary["image_id"].as_str().unwrap()));
}

/// A failing build exits non-zero and pushes nothing.
#[test]
fn failing_build_exits_nonzero_and_pushes_nothing() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n",
    );
    let (ok, _summary, stderr) = layercache(
        &engine,
        &server.url,
        &["build", "--namespace", "x", ctx.path_str()],
    );
    assert!(!ok, "a failed build must exit non-zero:\n{stderr}");
    assert_eq!(server.get_json("/v1/stats")["entries"], 0);
}

/// Bad input fails fast with one clear line and a non-zero exit.
#[test]
fn bad_input_gives_clear_errors() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "x\n");
    let cases: &[(&[&str], &str)] = &[
        (&["build", "-f", "/nonexistent/Dockerfile"], "Dockerfile"),
        (&["build", "--build-arg", "=novalue"], "build-arg"),
        (&["build", "--target", "nosuchstage"], "nosuchstage"),
    ];
    for (args, needle) in cases {
        let mut a: Vec<&str> = args.to_vec();
        a.push(ctx.path_str());
        let (ok, _, stderr) = layercache(&engine, &server.url, &a);
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: error should mention {needle}:\n{stderr}"
        );
    }
    let mut cmd = Command::new(bin("layercache"));
    cmd.args(["build", ctx.path_str()])
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .env("LAYERCACHE_SERVER", &server.url);
    let (ok, _, stderr) = run_logged(cmd, "layercache");
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent.sock"),
        "names the engine it could not reach:\n{stderr}"
    );
}

/// The files of image `reference`'s filesystem under `/ctx/`, read from `docker export` of a
/// container created (not run) from it.
fn files_under_ctx(engine: &TestEngine, reference: &str) -> Vec<String> {
    let id = engine.docker_ok(&["create", reference, "/none"]);
    let id = id.trim();
    let out = engine
        .command()
        .args(["export", id])
        .output()
        .expect("docker export");
    assert!(out.status.success(), "docker export {id}");
    let mut names: Vec<String> = tar::Archive::new(out.stdout.as_slice())
        .entries()
        .expect("export is a tar")
        .map(|e| {
            let e = e.expect("tar entry");
            e.path().unwrap().to_string_lossy().into_owned()
        })
        .filter_map(|p| {
            p.strip_prefix("ctx/")
                .map(|s| s.trim_end_matches('/').to_string())
        })
        .filter(|p| !p.is_empty())
        .collect();
    names.sort();
    engine.docker_ok(&["rm", id]);
    names
}

/// `.dockerignore` follows Docker's own rules: the context the runner packs (globset configured to
/// Docker's semantics) puts the same files into an image as the Docker CLI's classic build of the
/// same directory does.
#[test]
fn dockerignore_leaves_out_what_the_docker_cli_leaves_out() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new("FROM scratch\nCOPY . /ctx/\n");
    ctx.write(
        ".dockerignore",
        "# comment\n*.log\n!keep.log\nbuild/\n**/*.tmp\n/docs/*.md\n!docs/README.md\n\
         ./cache\nsrc/gen/..\nb?n\n[xy].txt\nnode_modules/**\n  spaced  \nbusybox\n",
    );
    for f in [
        "a.log",
        "keep.log",
        "sub/a.log",
        "build/out/x",
        "deep/er/a.tmp",
        "top.tmp",
        "docs/guide.md",
        "docs/README.md",
        "docs/sub/guide.md",
        "cache/c",
        "src/main.rs",
        "src/gen/g.rs",
        "bin/tool",
        "bxn",
        "x.txt",
        "z.txt",
        "sub/x.txt",
        "node_modules/m/i.js",
        "spaced",
        "kept/file",
    ] {
        ctx.write(f, "x\n");
    }
    engine.docker_ok(&["build", "-q", "-t", "e2e/ctx:cli", ctx.path_str()]);
    let (ok, _, stderr) = layercache(
        &engine,
        &server.url,
        &[
            "build",
            "--namespace",
            "ctx",
            "--builder",
            "classic",
            "-t",
            "e2e/ctx:ours",
            ctx.path_str(),
        ],
    );
    assert!(ok, "layercache build failed:\n{stderr}");
    let cli = files_under_ctx(&engine, "e2e/ctx:cli");
    let ours = files_under_ctx(&engine, "e2e/ctx:ours");
    assert!(cli.contains(&"keep.log".to_string()), "{cli:?}");
    assert!(!cli.contains(&"a.log".to_string()), "{cli:?}");
    assert_eq!(ours, cli, "runner's context vs the Docker CLI's");
}
