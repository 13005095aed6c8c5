//! The runner rides out a busy server and a bad network: `503` with `Retry-After` on lookups and
//! uploads, and a download cut off half-way, between the real runner and the real server (a
//! [`FlakyProxy`] in between plays the trouble). The build still pushes, the wiped worker still
//! gets its exact hit, and the log says what was retried.

use std::process::Command;

use serde_json::Value;

use crate::flaky::{Fault, FlakyProxy, Misdeed};
use crate::util::{Context, MULTI_STEP_DOCKERFILE, TestEngine, TestServer, bin, run_logged};

fn build(engine: &TestEngine, url: &str, ctx: &Context) -> (bool, Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.args([
        "build",
        "--namespace",
        "main",
        "-t",
        "e2e/retry:latest",
        "--json",
    ])
    .arg(ctx.path_str())
    .env("DOCKER_HOST", &engine.host)
    .env("LAYERCACHE_SERVER", url)
    .env("LAYERCACHE_RETRIES", "4");
    let (ok, stdout, stderr) = run_logged(cmd, "layercache");
    (
        ok,
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stderr,
    )
}

#[test]
fn a_busy_server_and_a_cut_download_are_retried_and_the_cache_still_hits() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "v1\n");
    let busy = Misdeed::Busy {
        retry_after_secs: 1,
    };
    let proxy = FlakyProxy::start(
        &server.url,
        vec![
            Fault {
                method: "POST",
                path_prefix: "/v1/lookup",
                misdeed: busy,
                times: 1,
            },
            // Streamed layer uploads (POST) and spooled ones (PUT) alike.
            Fault {
                method: "POST",
                path_prefix: "/v1/blobs",
                misdeed: busy,
                times: 2,
            },
            Fault {
                method: "PUT",
                path_prefix: "/v1/images/",
                misdeed: busy,
                times: 1,
            },
        ],
    );

    let (ok, cold, stderr) = build(&engine, &proxy.url, &ctx);
    assert!(ok, "{stderr}");
    assert_eq!(cold["cache"], "miss", "{cold}");
    assert_eq!(
        cold["pushed"], true,
        "the push rode out the 503s: {cold}\n{stderr}"
    );
    assert!(cold["warnings"].as_array().unwrap().is_empty(), "{cold}");
    assert_eq!(proxy.applied(0), 1, "the lookup was turned away once");
    assert!(proxy.applied(1) >= 1, "an upload was turned away");
    assert_eq!(proxy.applied(2), 1, "the commit was turned away once");
    assert!(stderr.contains("retrying the lookup"), "{stderr}");
    assert!(stderr.contains("retrying the commit"), "{stderr}");
    let id = cold["image_id"].as_str().unwrap().to_string();

    // The wiped worker's download is cut off after 64 KiB once: downloaded again, exact hit.
    engine.wipe();
    proxy.set_faults(vec![Fault {
        method: "GET",
        path_prefix: "/v1/images/",
        misdeed: Misdeed::CutAfter(64 * 1024),
        times: 1,
    }]);
    let (ok, warm, stderr) = build(&engine, &proxy.url, &ctx);
    assert!(ok, "{stderr}");
    assert_eq!(proxy.applied(0), 1, "the download was cut off");
    assert_eq!(warm["cache"], "exact", "{warm}");
    assert_eq!(warm["image_id"], id.as_str(), "{warm}\n{stderr}");
    assert!(warm["warnings"].as_array().unwrap().is_empty(), "{warm}");
    assert!(stderr.contains("the cache download broke"), "{stderr}");
}
