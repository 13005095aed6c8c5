//! Several `layercache-server` replicas (real binaries) on one PostgreSQL database and one Garage
//! bucket, each with its own data dir, serving one cache: tokens, pins and the collector across
//! processes (see `store::leases`).

mod common;
mod garage;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::StreamExt;
use garage::Garage;
use layercache_shared::Digest;
use layercache_test_support::postgres as pg;
use layercache_test_support::tarball::{Image, layer, noise, save};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use reqwest::StatusCode;

/// A replica process, killed (and reaped) when dropped.
struct Replica {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A collector that runs every second, deletes orphans at once and lets a dead replica's leases
/// lapse in 4 s, so the tests see collection without waiting minutes.
const FAST_COLLECTOR: [&str; 6] = [
    "--gc-interval-secs",
    "1",
    "--upload-grace-secs",
    "0",
    "--lease-ttl-secs",
    "4",
];

/// Starts a replica on `database` (and the bucket of `garage` under `prefix`, when given) with
/// its own data dir and `extra` flags.
async fn replica(database: &str, garage: Option<(&Garage, &str)>, extra: &[&str]) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let mut args = vec!["--data-dir", &data, "--database", database];
    let store;
    if let Some((g, prefix)) = garage {
        store = format!("s3://{}/{prefix}", g.bucket);
        args.extend(["--blob-store", &store]);
    }
    args.extend(extra);
    let mut cmd = common::binary_command(&args);
    if let Some((g, _)) = garage {
        cmd.envs(g.env());
    }
    let mut child = cmd.spawn().unwrap();
    let url = common::binary_url(&mut child).await;
    Replica {
        child,
        url,
        _dir: dir,
    }
}

/// Runs `layercache-server <args>` to completion; returns stdout, panics on failure.
fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_layercache-server"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "layercache-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn status(url: &str, token: Option<&str>) -> StatusCode {
    let mut req = reqwest::Client::new().get(format!("{url}/v1/stats"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

/// A token created with `token create --database` closes the gate of `--open` replicas at their
/// next request, and one revoked through any replica's index is refused by every replica at its
/// next request (auth reads tokens from the shared index per request, no cache).
#[tokio::test(flavor = "multi_thread")]
async fn tokens_created_or_revoked_anywhere_apply_on_every_replica_at_once() {
    let db = pg::fresh_database("replica_tokens");
    let a = replica(&db, None, &[]).await;
    let b = replica(&db, None, &[]).await;
    assert_eq!(
        status(&b.url, None).await,
        StatusCode::OK,
        "--open at first"
    );
    let dir = tempfile::tempdir().unwrap();
    let made = cli(&[
        "token",
        "create",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--database",
        &db,
        "--role",
        "admin",
        "--namespace",
        "*",
        "--name",
        "ci",
    ]);
    let token = made.lines().next().unwrap().trim().to_string();
    for r in [&a, &b] {
        assert_eq!(status(&r.url, None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&r.url, Some(&token)).await, StatusCode::OK);
    }
    cli(&[
        "token",
        "revoke",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--database",
        &db,
        "ci",
    ]);
    for r in [&b, &a] {
        assert_eq!(status(&r.url, Some(&token)).await, StatusCode::UNAUTHORIZED);
    }
}

async fn garage() -> Garage {
    tokio::task::spawn_blocking(Garage::start).await.unwrap()
}

/// The object key of blob `d` under `prefix`.
fn key_of(prefix: &str, d: &Digest) -> ObjectPath {
    let hex = d.hex();
    ObjectPath::from(format!("{prefix}/sha256/{}/{hex}", &hex[..2]))
}

async fn in_bucket(g: &Garage, prefix: &str, d: &Digest) -> bool {
    g.client().head(&key_of(prefix, d)).await.is_ok()
}

/// A replica (re)started while another replica's upload is between storing its blob in the
/// bucket and recording its row must not sweep that blob as an orphan: with a shared bucket the
/// start sweep gives orphans the upload grace period (alone on a data dir it need not).
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_replica_spares_blobs_another_replica_is_uploading() {
    let g = garage().await;
    let db = pg::fresh_database("replica_start_sweep");
    let prefix = "cache";
    let a = replica(&db, Some((&g, prefix)), &[]).await;
    // The state of an upload on replica A between the object's write and its row's insert.
    let content = noise(7, 4096);
    let digest = Digest::of(&content);
    g.client()
        .put(&key_of(prefix, &digest), PutPayload::from(content))
        .await
        .unwrap();
    let b = replica(&db, Some((&g, prefix)), &[]).await;
    assert_eq!(status(&b.url, None).await, StatusCode::OK);
    assert!(
        in_bucket(&g, prefix, &digest).await,
        "the starting replica deleted a blob in flight"
    );
    drop(a);
}

/// A blob a download on replica B is streaming survives replica A's collector, which deletes
/// an entry's blobs the moment they are unreferenced; once the download ends (and B's heartbeat
/// releases the lease) A deletes it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_streamed_by_one_replica_survives_another_replicas_collector() {
    let g = garage().await;
    let db = pg::fresh_database("replica_pins");
    let prefix = "cache";
    let a = replica(&db, Some((&g, prefix)), &FAST_COLLECTOR).await;
    let b = replica(&db, Some((&g, prefix)), &FAST_COLLECTOR).await;
    let client = reqwest::Client::new();
    // A big entry (streamed by B) and a small one (the control: deleted unhindered).
    let big_layer = layer(&[("big.bin", &noise(3, 24 << 20))]);
    let big = Image::new(vec![big_layer], &["ADD big"]);
    let small = Image::new(vec![layer(&[("small", b"small layer")])], &["ADD small"]);
    for (key, img) in [("big", &big), ("small", &small)] {
        common::push_tarball(&client, &a.url, &format!("t/{key}"), &[img]).await;
    }
    let big_blob = big.diff_ids()[0];
    let small_blob = small.diff_ids()[0];
    // B starts the restore and reads only its first bytes.
    let r = client
        .get(format!("{}/v1/images/t/big", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().len();
    // Both entries go; A's collector deletes the small one's blobs at once.
    for key in ["big", "small"] {
        let r = client
            .delete(format!("{}/v1/images/t/{key}", a.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_bucket(&g, prefix, &small_blob).await {
        assert!(Instant::now() < deadline, "A's collector never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        in_bucket(&g, prefix, &big_blob).await,
        "A deleted the blob B is streaming"
    );
    // The rest of the download comes through whole.
    while let Some(chunk) = body.next().await {
        got += chunk.expect("the download broke").len();
    }
    assert!(got > 24 << 20, "{got} bytes");
    // Released by B's heartbeat, the blob goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_bucket(&g, prefix, &big_blob).await {
        assert!(Instant::now() < deadline, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `PUT /v1/images/t/<key>` on `url` with a tarball of one 7 MiB layer (seeded by `seed`),
/// sending only its first 64 KiB: the server reserves space under the quota (the declared
/// length, or its 8 MiB growth step) and waits for the rest.
async fn slow_upload(url: &str, key: &str, seed: u64) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let img = Image::new(
        vec![layer(&[("blob.bin", &noise(seed, 7 << 20))])],
        &["ADD blob"],
    );
    let tarball = save(&[&img]);
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/images/t/{key} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {}\r\n\r\n",
        tarball.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&tarball[..64 << 10]).await.unwrap();
    s
}

/// The status code of the answer on `s`, read as soon as it comes.
async fn status_of(s: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
}

/// Bytes all replicas reserve together, as the index says.
fn reserved(db: &str) -> i64 {
    let db = db.to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
        c.query_one(
            "SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM quota_reservations
             WHERE expires_at > clock_timestamp()",
            &[],
        )
        .unwrap()
        .get(0)
    })
    .join()
    .unwrap()
}

/// Polls until the replicas together reserve more than `before` bytes; returns how many.
async fn reserved_above(db: &str, before: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = reserved(db);
        if now > before {
            return now;
        }
        assert!(Instant::now() < deadline, "reserved {now}, never more");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three replicas cannot together promise more than `--max-size` to uploads in progress: two
/// 7 MiB uploads on two replicas leave no room under 16 MiB for a third on the third replica
/// (507 before its body is read; alone, that replica would have had room), and room comes back
/// when one of them ends.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_together_never_reserve_past_the_quota() {
    let db = pg::fresh_database("replica_quota");
    let quota = ["--max-size", "16MiB", "--lease-ttl-secs", "4"];
    let a = replica(&db, None, &quota).await;
    let b = replica(&db, None, &quota).await;
    let c = replica(&db, None, &quota).await;
    let on_a = slow_upload(&a.url, "a", 1).await;
    let by_a = reserved_above(&db, 0).await;
    let _on_b = slow_upload(&b.url, "b", 2).await;
    let by_both = reserved_above(&db, by_a).await;
    assert!(by_both <= 16 << 20, "{by_both}");
    let mut on_c = slow_upload(&c.url, "c", 3).await;
    assert_eq!(status_of(&mut on_c).await, 507, "the third upload fit");
    assert_eq!(reserved(&db), by_both);
    // A's upload breaks off: its reservation goes, and C's next upload fits.
    drop(on_a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reserved(&db) == by_both {
        assert!(Instant::now() < deadline, "A's reservation never went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = reserved(&db);
    let _on_c = slow_upload(&c.url, "c", 3).await;
    assert!(reserved_above(&db, left).await <= 16 << 20);
}

/// One integer the index answers to `sql`.
fn pg_int(db: &str, sql: &str) -> i64 {
    let (db, sql) = (db.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
        c.query_one(&sql, &[]).unwrap().get(0)
    })
    .join()
    .unwrap()
}

fn entries(db: &str) -> i64 {
    pg_int(db, "SELECT COUNT(*) FROM entries")
}

/// Bytes of all blob rows (what counts against the quota).
fn stored(db: &str) -> i64 {
    pg_int(db, "SELECT value FROM totals WHERE name = 'blob_bytes'")
}

/// Whether some session holds the collector's advisory lock ("lcgc"; a bigint key below 2^32
/// shows as `classid` 0 and `objid` the key).
fn collector_locked(db: &str) -> bool {
    pg_int(
        db,
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND classid = 0 AND objid = 1818453859",
    ) > 0
}

/// Pushes `img` as `t/<key>` through `url`.
async fn push(url: &str, key: &str, img: &Image) {
    common::push_tarball(&reqwest::Client::new(), url, &format!("t/{key}"), &[img]).await;
}

/// Entry `i`'s image: one layer of its own, `size` bytes of noise.
fn image(i: u64, size: usize) -> Image {
    Image::new(
        vec![layer(&[("f.bin", &noise(100 + i, size))])],
        &[&format!("RUN step {i}")],
    )
}

/// One collector at a time, and a killed collector's work is taken over: replica A starts far
/// over the quota and collects at start; while it holds the collector lock (PostgreSQL shows it
/// held) and has evicted part of the entries it is killed with SIGKILL; replica B then gets the
/// lock, finishes within the quota, and `verify` finds every recorded blob in the bucket intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_killed_mid_run_is_taken_over_by_another_replica() {
    let g = garage().await;
    let db = pg::fresh_database("replica_collector_kill");
    let prefix = "cache";
    let n = 160;
    {
        // Its uploads' leases lapse 4 s after it is killed.
        let filler = replica(&db, Some((&g, prefix)), &["--lease-ttl-secs", "4"]).await;
        let pushes = (0..n).map(|i| {
            let url = filler.url.clone();
            async move { push(&url, &format!("k{i}"), &image(i, 16 << 10)).await }
        });
        futures::stream::iter(pushes)
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
    }
    assert_eq!(entries(&db), n as i64);
    let over = ["--max-size", "256KiB", "--upload-grace-secs", "0"];
    let store = format!("s3://{}/{prefix}", g.bucket);
    let a_dir = tempfile::tempdir().unwrap();
    let child = common::binary_command(&[
        "--data-dir",
        a_dir.path().to_str().unwrap(),
        "--database",
        &db,
        "--blob-store",
        &store,
        over[0],
        over[1],
        over[2],
        over[3],
    ])
    .envs(g.env())
    .spawn()
    .unwrap();
    // Not waited for: A prints its address, then collects before it answers.
    let mut a = Replica {
        child,
        url: String::new(),
        _dir: a_dir,
    };
    // A evicts at start, one entry per transaction: kill it mid-way, holding the lock.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = entries(&db);
        if left < n as i64 && collector_locked(&db) {
            a.child.kill().unwrap();
            a.child.wait().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "A never started collecting");
    }
    let left = entries(&db);
    assert!(
        left > 20,
        "A finished ({left} entries left) before it was killed: the test needs a slower collection"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector_locked(&db) {
        assert!(
            Instant::now() < deadline,
            "the killed replica's lock stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B collects at start (before it answers), and every second, until within the quota (the
    // blobs the filler's uploads leased go once those leases lapse).
    let b_flags = [over.as_slice(), &["--gc-interval-secs", "1"]].concat();
    let _b = replica(&db, Some((&g, prefix)), &b_flags).await;
    assert!(entries(&db) < left, "B did not take over");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&db) > 256 << 10 {
        assert!(Instant::now() < deadline, "{} bytes", stored(&db));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_layercache-server"))
        .args([
            "verify",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--database",
            &db,
            "--blob-store",
            &store,
        ])
        .envs(g.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The quota across replicas: three replicas ingest concurrently under one `--max-size`; hits
/// through one replica count for the others' collectors (PostgreSQL writes them at once, with a
/// fleet-wide use stamp). After the collectors settle, the store is within the quota and what
/// was kept is the most recently used, fleet-wide.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_keep_the_most_recently_used_entries_fleet_wide_within_the_quota() {
    let g = garage().await;
    let db = pg::fresh_database("replica_lru");
    let prefix = "cache";
    let flags = [&["--max-size", "6MiB"][..], &FAST_COLLECTOR].concat();
    let r = [
        replica(&db, Some((&g, prefix)), &flags).await,
        replica(&db, Some((&g, prefix)), &flags).await,
        replica(&db, Some((&g, prefix)), &flags).await,
    ];
    let size = 900 << 10;
    for i in 0..5u64 {
        push(&r[i as usize % 3].url, &format!("e{i}"), &image(i, size)).await;
    }
    // e0 and e1 are used again, through other replicas than the ones that stored them.
    for (i, via) in [(0, 2), (1, 0)] {
        let body = reqwest::get(format!("{}/v1/images/t/e{i}", r[via].url))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body.len() > size);
    }
    // Five more, concurrently through all three.
    let pushes = (5..10u64).map(|i| {
        let url = r[i as usize % 3].url.clone();
        async move { push(&url, &format!("e{i}"), &image(i, size)).await }
    });
    futures::future::join_all(pushes).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&db) > 6 << 20 {
        assert!(
            Instant::now() < deadline,
            "never within the quota: {}",
            stored(&db)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept: Vec<String> = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
            c.query("SELECT key FROM entries ORDER BY key", &[])
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect()
        })
        .join()
        .unwrap()
    };
    // Least recently used first; e5..e9 were committed after every other use.
    let order = ["e2", "e3", "e4", "e0", "e1"];
    let kept_old: Vec<&str> = order
        .iter()
        .copied()
        .filter(|k| kept.iter().any(|x| x == k))
        .collect();
    assert!(
        kept_old.is_empty() || order.ends_with(&kept_old),
        "kept {kept:?}: not the most recently used"
    );
    for k in ["e2", "e3", "e4"] {
        assert!(!kept.iter().any(|x| x == k), "kept {kept:?}");
    }
    if !kept_old.is_empty() {
        for i in 5..10 {
            assert!(kept.contains(&format!("e{i}")), "kept {kept:?}");
        }
    }
}
