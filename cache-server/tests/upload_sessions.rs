//! Registry upload sessions shared by a fleet (issue #15): three real `layercache-server`
//! binaries on one PostgreSQL database and one blob store, each request of a session sent to
//! whichever replica the test picks, as a load balancer would.
//!
//! Every scenario runs twice: on a blob directory the replicas share (`dir`: one `--data-dir`),
//! and on one Garage bucket (`s3`: a data dir each, `--blob-store s3://…`; Garage comes from
//! scripts/install-s3.sh and these tests fail naming it when it is missing).

mod common;
mod garage;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use garage::Garage;
use layercache_shared::Digest;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use reqwest::{Method, StatusCode};

/// Where the fleet keeps its blobs.
enum Blobs {
    /// One data dir for every replica.
    SharedDir,
    /// A bucket, with a data dir per replica.
    S3(Garage),
}

/// The key prefix of the fleet's objects in the bucket.
const PREFIX: &str = "fleet";

/// Replicas on one index and one blob store; killed (and their dirs removed) when dropped.
struct Fleet {
    /// `http://127.0.0.1:<port>` of each replica.
    urls: Vec<String>,
    /// The replica processes (`None` once killed).
    children: Vec<Option<Child>>,
    /// The blob store.
    blobs: Blobs,
    /// Holds the data dirs.
    tmp: tempfile::TempDir,
    client: reqwest::Client,
}

impl Drop for Fleet {
    /// Kills the replicas; when the test failed, prints their logs.
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.urls.len() {
                let log = self.tmp.path().join(format!("replica{i}.log"));
                eprintln!(
                    "--- replica {i} ---\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

impl Fleet {
    /// Starts `n` replicas on a fresh database, with `extra` flags.
    async fn start(s3: bool, n: usize, extra: &[&str]) -> Fleet {
        let database = tokio::task::spawn_blocking(|| {
            layercache_test_support::postgres::fresh_database("sessions")
        })
        .await
        .unwrap();
        let blobs = if s3 {
            Blobs::S3(tokio::task::spawn_blocking(Garage::start).await.unwrap())
        } else {
            Blobs::SharedDir
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut fleet = Fleet {
            urls: Vec::new(),
            children: Vec::new(),
            blobs,
            tmp,
            client: reqwest::Client::new(),
        };
        for i in 0..n {
            let data_dir = fleet.data_dir(i);
            std::fs::create_dir_all(&data_dir).unwrap();
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            // Each replica's log in a file of its own, read when a test fails.
            let log =
                std::fs::File::create(fleet.tmp.path().join(format!("replica{i}.log"))).unwrap();
            let mut args = vec![
                "--data-dir".to_string(),
                data_dir.display().to_string(),
                "--database".to_string(),
                database.clone(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = common::binary_command(&args);
            if let Blobs::S3(g) = &fleet.blobs {
                cmd.arg("--blob-store")
                    .arg(format!("s3://{}/{PREFIX}", g.bucket))
                    .envs(g.env());
            }
            let mut child = cmd.stderr(log).spawn().unwrap();
            let url = common::binary_url(&mut child).await;
            fleet.urls.push(url);
            fleet.children.push(Some(child));
        }
        fleet
    }

    /// Replica `i`'s data dir (the same for all on a shared dir).
    fn data_dir(&self, i: usize) -> PathBuf {
        match self.blobs {
            Blobs::SharedDir => self.tmp.path().join("data"),
            Blobs::S3(_) => self.tmp.path().join(format!("data{i}")),
        }
    }

    /// A request to replica `i`; `path` may be a `Location` the server gave.
    fn req(&self, i: usize, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.urls[i]))
    }

    /// Kills replica `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The staging objects in the store (files under `uploads/`, or keys under
    /// `<PREFIX>/uploads/`).
    async fn staging_objects(&self) -> Vec<String> {
        match &self.blobs {
            Blobs::SharedDir => common::files_under(&self.data_dir(0).join("uploads"))
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Blobs::S3(g) => {
                let prefix = ObjectPath::from(format!("{PREFIX}/uploads"));
                g.client()
                    .list(Some(&prefix))
                    .map_ok(|m| m.location.to_string())
                    .try_collect()
                    .await
                    .unwrap()
            }
        }
    }

    /// Whether blob `d` is in the store (not asking a server).
    async fn stored(&self, d: &Digest) -> bool {
        let hex = d.hex();
        match &self.blobs {
            Blobs::SharedDir => self
                .data_dir(0)
                .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
                .exists(),
            Blobs::S3(g) => {
                let key = ObjectPath::from(format!("{PREFIX}/sha256/{}/{hex}", &hex[..2]));
                g.client().head(&key).await.is_ok()
            }
        }
    }

    /// Opens a session on replica `i`; its location.
    async fn open(&self, i: usize, repo: &str) -> String {
        let r = self
            .req(i, Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        r.headers()["location"].to_str().unwrap().to_string()
    }

    /// Sends `body` as the chunk at `start` to replica `i`.
    async fn patch(&self, i: usize, loc: &str, start: usize, body: &[u8]) -> reqwest::Response {
        let end = start + body.len() - 1;
        self.req(i, Method::PATCH, loc)
            .header("content-range", format!("{start}-{end}"))
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Replica `i`'s answer to the session's status request: status and `Range`.
    async fn status(&self, i: usize, loc: &str) -> (StatusCode, Option<String>) {
        let r = self.req(i, Method::GET, loc).send().await.unwrap();
        let range = r
            .headers()
            .get("range")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status(), range)
    }

    /// Finishes the session on replica `i` as `digest`, with `body` as the last chunk at
    /// `start` (none when empty).
    async fn put(
        &self,
        i: usize,
        loc: &str,
        digest: &Digest,
        start: usize,
        body: &[u8],
    ) -> reqwest::Response {
        let mut r = self.req(i, Method::PUT, &format!("{loc}?digest={digest}"));
        if body.is_empty() {
            // As docker (Go's client) sends an empty PUT.
            r = r.header("content-length", "0");
        } else {
            r = r.header(
                "content-range",
                format!("{start}-{}", start + body.len() - 1),
            );
        }
        r.header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Asserts that every replica serves blob `d` of `repo` as `content`.
    async fn assert_served_everywhere(&self, repo: &str, d: &Digest, content: &[u8]) {
        for i in 0..self.urls.len() {
            if self.children[i].is_none() {
                continue;
            }
            let r = self
                .req(i, Method::GET, &format!("/v2/{repo}/blobs/{d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "replica {i}");
            assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
            assert_eq!(r.bytes().await.unwrap(), content, "replica {i}");
        }
    }

    /// Polls until no staging object is left; panics after `limit`.
    async fn await_no_staging(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.staging_objects().await;
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "staging objects still there: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Body bytes `n` long, not all alike.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Error code of a registry error answer.
async fn code_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// POST on 1, PATCH on 2, GET on 3, PATCH on 3, PUT with the last chunk on 1: every replica
/// serves the blob, and nothing is left staged.
async fn a_session_moves_between_replicas(s3: bool) {
    let fleet = Fleet::start(s3, 3, &[]).await;
    let blob = content(3 << 20);
    let d = Digest::of(&blob);
    let (a, b) = (1 << 20, 2 << 20);
    let loc = fleet.open(0, "acme/web").await;
    let r = fleet.patch(1, &loc, 0, &blob[..a]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        fleet.status(2, &loc).await,
        (StatusCode::NO_CONTENT, Some(format!("0-{}", a - 1)))
    );
    let r = fleet.patch(2, &loc, a, &blob[a..b]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], format!("0-{}", b - 1).as_str());
    let r = fleet.put(0, &loc, &d, b, &blob[b..]).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
    fleet.assert_served_everywhere("acme/web", &d, &blob).await;
    assert_eq!(fleet.staging_objects().await, Vec::<String>::new());
    assert_eq!(fleet.status(1, &loc).await.0, StatusCode::NOT_FOUND);
}

/// How `docker push` sends a layer (one PATCH, an empty PUT), across replicas: the chunk becomes
/// the blob where it is staged.
async fn a_single_chunk_session_finishes_on_another_replica(s3: bool) {
    let fleet = Fleet::start(s3, 2, &[]).await;
    let blob = content(5 << 20);
    let d = Digest::of(&blob);
    let loc = fleet.open(0, "acme/web").await;
    let r = fleet
        .req(1, Method::PATCH, &loc)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = fleet.put(0, &loc, &d, 0, b"").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    fleet.assert_served_everywhere("acme/web", &d, &blob).await;
    assert_eq!(fleet.staging_objects().await, Vec::<String>::new());
}

/// A wrong digest at the end is DIGEST_INVALID, stores nothing, and ends the session with its
/// staging objects: both for a session of several chunks and for one of a single chunk.
async fn a_wrong_digest_is_refused_and_nothing_is_stored(s3: bool) {
    let fleet = Fleet::start(s3, 3, &[]).await;
    let blob = content(300_000);
    let d = Digest::of(&blob);
    let wrong = Digest::of(b"something else");
    for chunks in [2, 1] {
        let loc = fleet.open(0, "acme/web").await;
        let cut = if chunks == 2 { 100_000 } else { blob.len() };
        assert_eq!(
            fleet.patch(1, &loc, 0, &blob[..cut]).await.status(),
            StatusCode::ACCEPTED
        );
        if chunks == 2 {
            let r = fleet.patch(2, &loc, cut, &blob[cut..]).await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
        let r = fleet.put(2, &loc, &wrong, 0, b"").await;
        assert_eq!(
            code_of(r).await,
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into()),
            "{chunks} chunk(s)"
        );
        assert!(!fleet.stored(&d).await && !fleet.stored(&wrong).await);
        for i in 0..3 {
            let r = fleet
                .req(i, Method::HEAD, &format!("/v2/acme/web/blobs/{d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
        }
        assert_eq!(fleet.status(0, &loc).await.0, StatusCode::NOT_FOUND);
        assert_eq!(fleet.staging_objects().await, Vec::<String>::new());
    }
}

/// A chunk that does not continue the upload is refused with 416 by any replica, and of two
/// chunks sent for one offset to two replicas at once exactly one is taken.
async fn chunks_out_of_order_or_twice_get_416(s3: bool) {
    let fleet = Fleet::start(s3, 3, &[]).await;
    let blob = content(4_000_000);
    let d = Digest::of(&blob);
    let loc = fleet.open(0, "acme/web").await;
    assert_eq!(
        fleet.patch(0, &loc, 0, &blob[..10_000]).await.status(),
        StatusCode::ACCEPTED
    );
    for (i, start) in [(1, 15_000), (2, 0)] {
        let r = fleet
            .patch(i, &loc, start, &blob[start..start + 5_000])
            .await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{start}");
    }
    let (one, two) = tokio::join!(
        fleet.patch(1, &loc, 10_000, &blob[10_000..2_010_000]),
        fleet.patch(2, &loc, 10_000, &blob[10_000..2_010_000]),
    );
    let mut statuses = [one.status(), two.status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::RANGE_NOT_SATISFIABLE]
    );
    assert_eq!(
        fleet.status(0, &loc).await,
        (StatusCode::NO_CONTENT, Some("0-2009999".into()))
    );
    let r = fleet.put(0, &loc, &d, 2_010_000, &blob[2_010_000..]).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    fleet.assert_served_everywhere("acme/web", &d, &blob).await;
    // The losing chunk's staging object went with it.
    assert_eq!(fleet.staging_objects().await, Vec::<String>::new());
}

/// A replica killed (SIGKILL) after acknowledging a chunk loses nothing: the client asks another
/// where the upload stands and continues there.
async fn a_killed_replica_loses_no_acknowledged_chunk(s3: bool) {
    let mut fleet = Fleet::start(s3, 3, &[]).await;
    let blob = content(2 << 20);
    let d = Digest::of(&blob);
    let half = 1 << 20;
    let loc = fleet.open(0, "acme/web").await;
    assert_eq!(
        fleet.patch(1, &loc, 0, &blob[..half]).await.status(),
        StatusCode::ACCEPTED
    );
    fleet.kill(1);
    assert_eq!(
        fleet.status(2, &loc).await,
        (StatusCode::NO_CONTENT, Some(format!("0-{}", half - 1)))
    );
    assert_eq!(
        fleet.patch(2, &loc, half, &blob[half..]).await.status(),
        StatusCode::ACCEPTED
    );
    let r = fleet.put(0, &loc, &d, 0, b"").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    fleet.assert_served_everywhere("acme/web", &d, &blob).await;
}

/// A session idle past `--upload-timeout-secs` is dropped with its staging objects by one of
/// the replicas, and is unknown to all of them.
async fn idle_sessions_expire_with_their_staging_objects(s3: bool) {
    let fleet = Fleet::start(s3, 2, &["--upload-timeout-secs", "1"]).await;
    let loc = fleet.open(0, "acme/web").await;
    assert_eq!(
        fleet.patch(1, &loc, 0, &content(1000)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(fleet.staging_objects().await.len(), 1);
    // Asking the session for its state would count as activity: only the store is watched.
    fleet.await_no_staging(Duration::from_secs(15)).await;
    for i in 0..2 {
        assert_eq!(fleet.status(i, &loc).await.0, StatusCode::NOT_FOUND);
    }
}

/// Declares each scenario as a test on the shared dir (`dir::`) and on Garage (`s3::`).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod dir {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(false).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(true).await;
                }
            )*
        }
    };
}

on_both!(
    a_session_moves_between_replicas,
    a_single_chunk_session_finishes_on_another_replica,
    a_wrong_digest_is_refused_and_nothing_is_stored,
    chunks_out_of_order_or_twice_get_416,
    a_killed_replica_loses_no_acknowledged_chunk,
    idle_sessions_expire_with_their_staging_objects,
);
