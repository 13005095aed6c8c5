//! The dashboard of a real server holding real, docker-built entries, rendered by headless
//! Chromium: the numbers read off the rendered DOM match `/v1/stats`, the entry page shows the
//! image chain, and a screenshot is kept in `target/test-artifacts/` for people to look at.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{
    Context, MULTI_STEP_DOCKERFILE, TestEngine, TestServer, bin_dir, put_file, run_logged,
};

/// Where screenshots and dumped pages are kept after the run.
fn artifacts_dir() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Runs headless Chromium with `args` then `url`, bounded by a timeout, and returns its stdout.
fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = Command::new("timeout");
    cmd.args([
        "120",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
    ])
    .args(["--disable-dev-shm-usage", "--disable-background-networking"])
    .args([
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    let (ok, stdout, stderr) = run_logged(cmd, "chromium");
    assert!(
        ok,
        "chromium failed (install it with `apt-get install chromium`; scripts/test.sh does): {stderr}"
    );
    stdout
}

/// The `data-value` attribute of the element whose `id` is `id`, from serialized DOM.
fn data_value(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element #{id} in the rendered page"));
    let start = dom[..at].rfind('<').expect("tag start");
    let tag = &dom[start..start + dom[start..].find('>').expect("tag end")];
    let v = tag
        .split("data-value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("#{id} has no data-value: {tag}"));
    v[..v.find('"').expect("closing quote")].to_string()
}

#[test]
fn dashboard_renders_in_chromium_with_the_numbers_of_v1_stats() {
    let engine = TestEngine::start();
    let server = TestServer::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "hello from the dashboard test\n");
    engine.docker_ok(&["build", "-t", "e2e/dash:1", ctx.path_str()]);
    let chain = engine.chain("e2e/dash:1");
    let tar = ctx.scratch_file("dash.tar");
    let mut save = vec!["save", "-o", tar.to_str().unwrap(), "e2e/dash:1"];
    save.extend(chain.iter().skip(1).map(String::as_str));
    engine.docker_ok(&save);

    // The same chain in two entries (layers shared), one restore (a hit), one miss, two builds.
    for path in ["/v1/images/acme%2Fweb/key1", "/v1/images/main/key2"] {
        let r = put_file(&format!("{}{path}", server.url), &tar);
        assert_eq!(
            r.status(),
            201,
            "PUT {path}: {}",
            r.text().unwrap_or_default()
        );
    }
    let client = reqwest::blocking::Client::new();
    let got = client
        .get(format!("{}/v1/images/acme%2Fweb/key1", server.url))
        .send()
        .unwrap();
    assert_eq!(got.status(), 200);
    let served = got.bytes().unwrap().len();
    let lookup = serde_json::json!({"namespaces": ["acme/web"], "key": "absent"});
    let r = client
        .post(format!("{}/v1/lookup", server.url))
        .json(&lookup)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    for (cache, total) in [("miss", 42.0), ("exact", 6.5)] {
        let report = serde_json::json!({"namespace": "acme/web", "key": "key1", "cache": cache,
            "seconds": {"lookup": 0.2, "restore": 3.0, "build": total - 3.2, "push": 0.0, "total": total}});
        let r = client
            .post(format!("{}/v1/builds", server.url))
            .json(&report)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Bytes served are counted when the streaming body ends.
    let mut stats = server.get_json("/v1/stats");
    for _ in 0..100 {
        if stats["bytes_served"] == served as u64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        stats = server.get_json("/v1/stats");
    }

    let dom = chromium(&["--dump-dom"], &format!("{}/", server.url));
    let artifacts = artifacts_dir();
    std::fs::write(artifacts.join("dashboard.html"), &dom).unwrap();
    for (id, field) in [
        ("stat-hits", "hits"),
        ("stat-misses", "misses"),
        ("stat-hits-exact", "hits_exact"),
        ("stat-hits-fallback", "hits_fallback"),
        ("stat-hits-prefix", "hits_prefix"),
        ("stat-entries", "entries"),
        ("stat-blobs", "blobs"),
        ("stat-stored-bytes", "stored_bytes"),
        ("stat-bytes-served", "bytes_served"),
        ("stat-bytes-received", "bytes_received"),
        ("stat-bytes-deduplicated", "bytes_deduplicated"),
        ("stat-uploads-failed", "uploads_failed"),
    ] {
        assert_eq!(
            data_value(&dom, id),
            stats[field].to_string(),
            "#{id} against /v1/stats {field}"
        );
    }
    assert_eq!(stats["hits"], 1, "{stats}");
    assert!(stats["bytes_deduplicated"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(data_value(&dom, "stat-builds"), "2");
    assert_eq!(data_value(&dom, "stat-seconds-saved"), "35.500");
    assert_eq!(data_value(&dom, "window-hits"), "1");
    assert_eq!(data_value(&dom, "window-misses"), "1");
    assert!(dom.contains("no quota"), "no --max-size given");

    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &format!("{}/", server.url),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    // The entry page: every image of the chain, parents before children, sharing with main/key2.
    let entry_url = format!("{}/entries/acme%2Fweb/key1", server.url);
    let page = chromium(&["--dump-dom"], &entry_url);
    std::fs::write(artifacts.join("entry.html"), &page).unwrap();
    let positions: Vec<usize> = chain
        .iter()
        .rev()
        .map(|id| {
            let hex = id.trim_start_matches("sha256:");
            page.find(&format!("image-{hex}"))
                .unwrap_or_else(|| panic!("image {id} is on the entry page"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "parents come before their children: {positions:?}"
    );
    assert!(
        page.contains(r#"href="/entries/main/key2""#),
        "shared layers link the other entry"
    );
    assert!(page.contains("e2e/dash:1"), "the tag is shown");
    chromium(
        &[
            &format!("--screenshot={}", artifacts.join("entry.png").display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &entry_url,
    );
}
