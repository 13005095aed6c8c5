//! Issue 14 against the real binary: eviction under a quota follows the order of use, to the
//! millisecond.
//!
//! The scenario of the issue: six entries pushed back to back within one second, the first one restored after
//! each push, a quota with room for five. Recency kept in whole seconds made the hot first entry
//! tie with the cold ones pushed in the same second, and ties went to the oldest id: the
//! collector evicted the entry in use and kept a cold one.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use layercache_test_support::tarball::{Image, layer, noise, save};

/// Bytes of each entry's own layer: the entries' configs and tar headers are small next to it.
const LAYER: usize = 16 * 1024;

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on `data_dir` with a quota, collecting every second; its address.
async fn start(data_dir: &Path, max_size: u64) -> (Server, String) {
    let mut child = Server(
        common::binary_command(&["--gc-interval-secs", "1", "--upload-grace-secs", "0"])
            .arg("--max-size")
            .arg(max_size.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = common::binary_url(&mut child.0).await;
    (child, url)
}

/// Entry `i`: one image of one layer of its own.
fn image(i: u64) -> Image {
    let data = noise(i, LAYER);
    Image::new(vec![layer(&[("f", &data)])], &["RUN x"]).tagged(&format!("e{i}:1"))
}

/// Entry `i`'s tarball.
fn tarball(i: u64) -> Vec<u8> {
    save(&[&image(i)])
}

/// Bytes entry `i` stores: its layer and its config.
fn stored(i: u64) -> u64 {
    let img = image(i);
    (img.layers[0].len() + img.config().len()) as u64
}

/// Waits until the wall clock is early in a second, so the pushes below share one second: what
/// whole-second recency could not order.
async fn start_of_a_second() {
    loop {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if ms < 20 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms).min(5))).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_keeps_the_entry_in_use_and_evicts_the_least_recently_used() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for five entries, not six.
    let max = (1..=5).map(stored).sum::<u64>() + LAYER as u64 / 2;
    let (server, url) = start(&tmp.path().join("data"), max).await;
    let client = reqwest::Client::new();
    let entry = |i: u64| format!("{url}/v1/images/ci/e{i}");

    start_of_a_second().await;
    for i in 1..=6u64 {
        let r = client.put(entry(i)).body(tarball(i)).send().await.unwrap();
        assert_eq!(r.status(), 201, "push {i}");
        // The hot entry: restored after every push.
        let r = client.get(entry(1)).send().await.unwrap();
        assert_eq!(r.status(), 200, "restore of e1 after push {i}");
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The collector runs after the commit that exceeded the quota, and every second: wait until
    // one entry went.
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let list: serde_json::Value = client
            .get(format!("{url}/v1/entries?namespace=ci"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys: Vec<String> = list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        if keys.len() < 6 {
            break keys;
        }
        assert!(Instant::now() < deadline, "nothing was evicted: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(server);
    assert_eq!(
        left,
        ["e1", "e3", "e4", "e5", "e6"],
        "the least recently used entry (e2) goes, the hot e1 stays"
    );
}
