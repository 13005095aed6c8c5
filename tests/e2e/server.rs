//! The cache server with a real engine: what `docker save` writes, the server takes; what the server
//! serves, `docker load` takes, and the legacy builder then reuses every step.

use crate::util::{
    Context, MULTI_STEP_DOCKERFILE, TestEngine, TestServer, load_from, put_file, save_with_chain,
};

/// Builds `tag` from `ctx` with the engine's legacy builder and returns the build output.
fn docker_build(engine: &TestEngine, ctx: &Context, tag: &str) -> String {
    engine.docker_ok(&["build", "-t", tag, ctx.path_str()])
}

/// The acceptance path: build, save with parents, PUT, wipe the engine, GET | docker load,
/// rebuild: every step says "Using cache" and the image ID is unchanged.
#[test]
fn saved_image_restored_through_server_makes_every_step_a_cache_hit() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "hello from the app\n");

    docker_build(&engine, &ctx, "e2e/app:1");
    let built_id = engine.image_id("e2e/app:1");
    let chain = engine.chain("e2e/app:1");
    assert!(chain.len() >= 5, "expected a parent chain, got {chain:?}");

    let tar = ctx.scratch_file("saved.tar");
    save_with_chain(&engine, "e2e/app:1", &tar);
    let url = format!("{}/v1/images/acme%2Fweb/key1", server.url);
    let r = put_file(&url, &tar);
    assert_eq!(r.status(), 201, "PUT: {}", r.text().unwrap_or_default());
    let report: serde_json::Value = r.json().unwrap();
    assert!(report["layers_total"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(report["layers_new"], report["layers_total"], "{report}");

    let manifest = server.get_json("/v1/images/acme%2Fweb/key1/manifest");
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(
        images.len(),
        chain.len(),
        "every image of the chain is stored: {manifest}"
    );
    let final_img = images
        .iter()
        .find(|i| i["id"] == built_id.as_str())
        .expect("final image in manifest");
    assert!(
        final_img["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "e2e/app:1"),
        "{final_img}"
    );

    engine.wipe();
    assert!(!engine.has_image(&built_id));
    load_from(&engine, &url);
    for id in &chain {
        assert!(engine.has_image(id), "image {id} of the chain restored");
    }

    let out = docker_build(&engine, &ctx, "e2e/app:2");
    let steps = out.lines().filter(|l| l.starts_with("Step ")).count();
    let cached = out.matches("Using cache").count();
    assert_eq!(
        cached,
        steps - 1,
        "every step after FROM uses the cache:\n{out}"
    );
    assert_eq!(
        engine.image_id("e2e/app:2"),
        built_id,
        "same image ID after restore"
    );

    let stats = server.get_json("/v1/stats");
    assert_eq!(stats["hits"], 1, "{stats}");
    assert_eq!(stats["entries"], 1, "{stats}");
}

/// Storing the same image under a second name stores no new layer bytes.
#[test]
fn same_image_in_two_namespaces_is_stored_once() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "dedup\n");
    docker_build(&engine, &ctx, "e2e/dedup:1");
    let tar = ctx.scratch_file("saved.tar");
    save_with_chain(&engine, "e2e/dedup:1", &tar);

    let first: serde_json::Value = put_file(&format!("{}/v1/images/team-a/k", server.url), &tar)
        .json()
        .unwrap();
    let stored_after_first = server.get_json("/v1/stats")["stored_bytes"]
        .as_u64()
        .unwrap();
    let r = put_file(&format!("{}/v1/images/team-b%2Fmain/k", server.url), &tar);
    assert_eq!(r.status(), 201);
    let second: serde_json::Value = r.json().unwrap();
    assert_eq!(second["layers_new"], 0, "{second}");
    assert_eq!(second["bytes_new"], 0, "{second}");
    assert_eq!(second["layers_total"], first["layers_total"]);
    let stats = server.get_json("/v1/stats");
    assert_eq!(
        stats["stored_bytes"].as_u64().unwrap(),
        stored_after_first,
        "{stats}"
    );
    assert!(
        stats["bytes_deduplicated"].as_u64().unwrap() > 256 * 1024,
        "{stats}"
    );
    assert_eq!(stats["entries"], 2);
}

/// A truncated upload is refused and leaves the entry already stored under that name intact.
#[test]
fn truncated_reput_keeps_the_stored_entry_loadable() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "keep me\n");
    docker_build(&engine, &ctx, "e2e/keep:1");
    let id = engine.image_id("e2e/keep:1");
    let tar = ctx.scratch_file("saved.tar");
    save_with_chain(&engine, "e2e/keep:1", &tar);
    let url = format!("{}/v1/images/ns/k", server.url);
    assert_eq!(put_file(&url, &tar).status(), 201);

    let bytes = std::fs::read(&tar).unwrap();
    for cut in [bytes.len() / 3, bytes.len() - 1024] {
        let r = reqwest::blocking::Client::new()
            .put(&url)
            .body(bytes[..cut].to_vec())
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            400,
            "truncated at {cut}: {}",
            r.text().unwrap_or_default()
        );
    }
    let r = reqwest::blocking::Client::new()
        .put(&url)
        .body("this is not a tarball".repeat(100))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );

    engine.wipe();
    load_from(&engine, &url);
    assert!(
        engine.has_image(&id),
        "the first entry is still served whole"
    );
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

/// SIGKILL after a commit: the restarted server serves the entry.
#[test]
fn entry_survives_sigkill_and_restart() {
    let engine = TestEngine::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_on(&data, &[]);
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "crash\n");
    docker_build(&engine, &ctx, "e2e/crash:1");
    let id = engine.image_id("e2e/crash:1");
    let tar = ctx.scratch_file("saved.tar");
    save_with_chain(&engine, "e2e/crash:1", &tar);
    assert_eq!(
        put_file(&format!("{}/v1/images/ns/crash", server.url), &tar).status(),
        201
    );
    server.kill();

    let server = TestServer::start_on(&data, &[]);
    engine.wipe();
    load_from(&engine, &format!("{}/v1/images/ns/crash", server.url));
    assert!(engine.has_image(&id));
}
