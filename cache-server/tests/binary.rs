//! The real binary, as a process: it keeps its data dir to its own user (files 0600, dirs 0700, a
//! warning when the operator's data dir is open to others), and its 500s tell the client a request
//! id, never a path or a database message, while its log carries both; its bulk threads run at the
//! priority `--bulk-priority` names.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};

mod common;

/// Starts the binary on `data_dir` and waits until it serves (it prints its address first, then
/// opens the store).
async fn start(data_dir: &Path) -> (Child, String) {
    start_with(data_dir, &[]).await
}

/// [`start`] with more flags.
async fn start_with(data_dir: &Path, flags: &[&str]) -> (Child, String) {
    let mut child = common::binary_command(flags)
        .arg("--data-dir")
        .arg(data_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = common::binary_url(&mut child).await;
    (child, url)
}

/// Kills the binary and returns its log.
fn stop(mut child: Child) -> String {
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    log
}

/// Uploads a 4 KiB blob and asserts it was stored.
async fn upload_a_blob(url: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/blobs"))
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_private_and_an_open_data_dir_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, url) = start(&dir).await;
    // A blob upload creates the blob fan-out dirs and a temp file on the way.
    upload_a_blob(&url).await;
    let log = stop(child);
    assert!(
        !log.contains("chmod 700"),
        "a private data dir is not warned about:\n{log}"
    );
    assert_eq!(mode(&dir), 0o700);
    for name in ["layercache.db", "layercache.db-wal"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let mut stack = vec![dir.join("blobs")];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            files += 1;
        }
    }
    assert_eq!(files, 1, "the uploaded blob is stored");

    // What an older version left readable is tightened; the operator's loose data dir is not
    // changed, but named in a warning with the fix.
    let loose = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(dir.join("layercache.db"), loose).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (child, _) = start(&dir).await;
    let log = stop(child);
    assert!(
        log.contains("chmod 700"),
        "no warning about the 0777 data dir:\n{log}"
    );
    assert_eq!(mode(&dir.join("layercache.db")), 0o600);
    assert_eq!(mode(&dir), 0o777);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_names_a_request_id_the_log_explains_and_no_internals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, url) = start(&dir).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/blobs"))
        .body(vec![9u8; 8192])
        .send()
        .await
        .unwrap();
    let digest = r.json::<serde_json::Value>().await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = digest.trim_start_matches("sha256:");
    let file = dir.join("blobs/sha256").join(&hex[..2]).join(hex);
    // Truncated behind the server's back: the blob can no longer be served as recorded.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(100)
        .unwrap();
    let r = client
        .get(format!("{url}/v1/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!id.is_empty());
    let body = r.text().await.unwrap();
    assert!(body.contains(&format!("request id {id}")), "{body}");
    for internal in [dir.to_str().unwrap(), "blobs/", "8192"] {
        assert!(!body.contains(internal), "`{internal}` leaks in {body}");
    }
    // A proxy's id is kept, so its logs and ours line up.
    let r = client
        .get(format!("{url}/v1/stats"))
        .header("x-request-id", "lb-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "lb-1234");

    let log = stop(child);
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("request failed"))
        .unwrap_or_else(|| panic!("no log line with request id {id}:\n{log}"));
    assert!(line.contains("8192"), "the log keeps the details: {line}");
}

/// The scheduling policy and nice value of each of `pid`'s threads named `name`, from
/// `/proc/PID/task/TID/stat` (fields 41 and 19; the name, field 2, may hold spaces, so fields are
/// counted after its closing parenthesis).
fn threads_policy_and_nice(pid: u32, name: &str) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let (head, rest) = stat.rsplit_once(')').unwrap();
        if head.split_once('(').unwrap().1 != name {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3.
        found.push((
            fields[41 - 3].parse().unwrap(),
            fields[19 - 3].parse().unwrap(),
        ));
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_threads_run_at_sched_idle_or_niced_as_asked() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    for (flags, want) in [
        (&[][..], (SCHED_IDLE, 0)),
        (&["--bulk-priority", "nice"][..], (SCHED_OTHER, 10)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (child, url) = start_with(&tmp.path().join("data"), flags).await;
        // An upload is hashed and written on a bulk thread, which then idles in the pool.
        upload_a_blob(&url).await;
        let bulk = threads_policy_and_nice(child.id(), "layercache-bulk");
        let workers = threads_policy_and_nice(child.id(), "tokio-rt-worker");
        stop(child);
        assert!(!bulk.is_empty(), "no bulk thread with {flags:?}");
        assert!(bulk.iter().all(|t| *t == want), "{flags:?}: {bulk:?}");
        assert!(!workers.is_empty());
        assert!(
            workers.iter().all(|t| *t == (SCHED_OTHER, 0)),
            "request threads keep the normal policy: {workers:?}"
        );
    }
    let refused = common::binary_command(&["--bulk-priority", "realtime"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values: idle, nice"));
}
