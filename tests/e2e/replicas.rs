//! Several `layercache-server` replicas serving one cache (issue #15): three replicas on one S3
//! bucket (a 3-node Garage cluster with replication factor 3) and one PostgreSQL, behind haproxy
//! running `docs/haproxy.cfg`, the config the README documents. Runners (`layercache build` and
//! `layercache save`) and docker clients (`docker push`/`pull` through `/v2/`) talk only to
//! haproxy, which spreads their requests round robin, so consecutive requests of one push land on
//! different replicas.
//!
//! Faults, each under 8 concurrent runner pushes: `kill -9` of a replica, a Garage node down, and
//! PostgreSQL restarted. Afterwards every push a runner reported as done is listed and restores
//! whole, every listed entry restores whole (no half-visible entry), and
//! `layercache-server verify` on the shared store finds nothing wrong.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layercache_shared::archive::{Limits, read_archive};
use layercache_test_support::garage::Garage;
use layercache_test_support::haproxy::Haproxy;
use layercache_test_support::postgres::{self, PgServer};
use layercache_test_support::tarball::{Image, save};
use serde_json::{Value, json};

use crate::faults::{DigestSink, gen_image};
use crate::util::{Context, MULTI_STEP_DOCKERFILE, TestEngine, bin, run_logged};

/// One `layercache-server` process of the cluster, with its own data dir (upload temp files) and
/// the shared bucket prefix and database.
struct Replica {
    /// `None` once killed.
    child: Option<Child>,
    /// `127.0.0.1:<port>`; a restart listens there again.
    addr: String,
    /// Its data dir and log.
    dir: tempfile::TempDir,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown, requests in flight are cut.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Garage, PostgreSQL, replicas and haproxy, in drop order: haproxy and the replicas go before
/// the stores they use.
struct Cluster {
    lb: Haproxy,
    replicas: Vec<Replica>,
    /// `--database` of every replica.
    database: String,
    /// `--blob-store` of every replica.
    blob_store: String,
    garage: Garage,
    /// A PostgreSQL of this test's own (for the restart test); else the binary's shared one.
    pg: Option<PgServer>,
}

impl Cluster {
    /// `replicas` servers on a 3-node Garage and a fresh database, behind haproxy; returns once
    /// haproxy counts every replica as up. `own_pg`: a PostgreSQL of the test's own.
    fn start(test: &str, replicas: usize, own_pg: bool) -> Cluster {
        let garage = Garage::cluster(3);
        let pg = own_pg.then(PgServer::start_private);
        let database = match &pg {
            Some(pg) => pg.fresh_database(test),
            None => postgres::fresh_database(test),
        };
        let blob_store = garage.blob_store_url(test);
        let mut started = Vec::new();
        for _ in 0..replicas {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            started.push(Replica {
                child: None,
                addr: format!("127.0.0.1:{port}"),
                dir,
            });
        }
        let addrs: Vec<String> = started.iter().map(|r| r.addr.clone()).collect();
        let mut c = Cluster {
            lb: Haproxy::start(&addrs),
            replicas: started,
            database,
            blob_store,
            garage,
            pg,
        };
        for i in 0..replicas {
            c.spawn(i);
        }
        c.lb.wait_up();
        c
    }

    /// `layercache-server <sub>` on the shared bucket and database, with `data_dir` for its own
    /// files.
    fn server_command(&self, sub: &str, data_dir: &std::path::Path) -> Command {
        let mut cmd = Command::new(bin("layercache-server"));
        cmd.arg(sub)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--blob-store", &self.blob_store])
            .args(["--database", &self.database])
            .envs(self.garage.env())
            .stdin(Stdio::null());
        cmd
    }

    /// Starts replica `i` (again) on its address and waits until it answers `/healthz`.
    fn spawn(&mut self, i: usize) {
        let r = &self.replicas[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(r.dir.path().join("server.log"))
            .unwrap();
        let child = self
            .server_command("serve", &r.dir.path().join("data"))
            .args(["--open", "--listen", &r.addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn layercache-server");
        let url = r.url();
        self.replicas[i].child = Some(child);
        let http = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http
                .get(format!("{url}/healthz"))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            let r = &mut self.replicas[i];
            if let Some(Ok(Some(status))) = r.child.as_mut().map(Child::try_wait) {
                panic!("replica {i} exited ({status}):\n{}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not answer /healthz within 60 s:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` through haproxy, as JSON.
    fn get_json(&self, path: &str) -> Value {
        let r = reqwest::blocking::get(format!("{}{path}", self.lb.url)).expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().expect("JSON body")
    }

    /// Stops every replica and runs `layercache-server verify` on the shared bucket and
    /// database; it must find nothing corrupt or missing.
    fn stop_and_verify(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
        let scratch = tempfile::tempdir().unwrap();
        let out = self
            .server_command("verify", &scratch.path().join("data"))
            .output()
            .expect("run layercache-server verify");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "verify found damage:\n{said}");
        assert!(
            said.contains("0 corrupt, 0 missing"),
            "verify said:\n{said}"
        );
    }
}

/// Runs `layercache ARGS --json` against `engine` through haproxy; (success, summary, stderr).
fn layercache(engine: &TestEngine, url: &str, args: &[&str]) -> (bool, Value, String) {
    let mut cmd = Command::new(bin("layercache"));
    cmd.args(args)
        .arg("--json")
        .env("DOCKER_HOST", &engine.host)
        .env("LAYERCACHE_SERVER", url);
    let (ok, stdout, stderr) = run_logged(cmd, "layercache");
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (ok, summary, stderr)
}

/// `layercache_http_requests_total` of one replica, summed over routes.
fn requests_served(replica: &Replica) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", replica.url()))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    text.lines()
        .filter(|l| l.starts_with("layercache_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Three replicas behind haproxy serve runners and docker clients as one cache: a cold
/// `layercache build` pushes (its requests spread over the replicas), a wiped worker's build
/// restores an exact hit with the same image ID, and `docker push` then `pull` through `/v2/` (an
/// upload session's requests going to different replicas) gives back the same image.
#[test]
fn three_replicas_behind_haproxy_serve_runner_builds_and_docker_push_pull() {
    let c = Cluster::start("replicas_builds", 3, false);
    assert_eq!(c.lb.backends().len(), 3, "{:?}", c.lb.backends());
    let before: Vec<f64> = c.replicas.iter().map(requests_served).collect();

    let engine = TestEngine::start();
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "three replicas\n");
    let build = |what: &str| {
        let args = [
            "build",
            "--namespace",
            "acme/web",
            "-t",
            "e2e/app:latest",
            ctx.path_str(),
        ];
        let (ok, summary, stderr) = layercache(&engine, &c.lb.url, &args);
        assert!(ok, "{what} build failed:\n{stderr}");
        assert!(summary["server_error"].is_null(), "{what}: {summary}");
        summary
    };
    let cold = build("cold");
    assert_eq!(cold["cache"], "miss", "{cold}");
    assert_eq!(cold["pushed"], true, "{cold}");
    let id = cold["image_id"].as_str().unwrap().to_string();
    engine.wipe();
    let warm = build("warm");
    assert_eq!(warm["cache"], "exact", "{warm}");
    assert_eq!(warm["image_id"], id.as_str(), "{warm}");
    assert_eq!(warm["bytes_uploaded"], 0, "{warm}");
    // Round robin: every replica took part in the runners' requests.
    for (i, r) in c.replicas.iter().enumerate() {
        let served = requests_served(r) - before[i];
        assert!(served >= 3.0, "replica {i} served {served} requests");
    }

    let image = format!("{}/acme/app:v1", c.lb.addr);
    engine.docker_ok(&["tag", "e2e/app:latest", &image]);
    engine.docker_ok(&["push", &image]);
    engine.wipe();
    engine.docker_ok(&["pull", &image]);
    assert_eq!(engine.image_id(&image), id, "pulled through haproxy");
}

/// Pushes through haproxy while a fault happens: eight `layercache save`s of eight images at once,
/// from one engine, each under its own Dockerfile's key.
struct Pushes {
    engine: TestEngine,
    /// The build contexts (one Dockerfile each: one key each).
    contexts: Vec<Context>,
    images: Vec<Image>,
}

/// Concurrent runners in the fault tests.
const RUNNERS: usize = 8;
/// MiB of each image's own layer: large enough that a push is still on its way when the fault
/// comes.
const LAYER_MIB: usize = 6;

impl Pushes {
    fn new() -> Pushes {
        let engine = TestEngine::start();
        let images: Vec<Image> = (0..RUNNERS as u64)
            .map(|i| gen_image(i, LAYER_MIB << 10))
            .collect();
        let contexts = (0..RUNNERS)
            .map(|i| Context::new(&format!("FROM scratch\nCOPY busybox /bin/busybox-{i}\n")))
            .collect();
        for img in &images {
            let mut load = engine
                .command()
                .arg("load")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            use std::io::Write;
            load.stdin.take().unwrap().write_all(&save(&[img])).unwrap();
            assert!(load.wait().unwrap().success(), "docker load");
        }
        Pushes {
            engine,
            contexts,
            images,
        }
    }

    /// Runs the eight saves through `url`; once the shared store holds a blob of theirs, calls
    /// `fault` (checking that not every push was committed by then). Every save must succeed
    /// (retrying what the fault broke); returns key → image.
    fn run(&self, url: &str, fault: impl FnOnce()) -> HashMap<String, &Image> {
        let http = reqwest::blocking::Client::new();
        let stat = |name: &str| -> u64 {
            http.get(format!("{url}/v1/stats"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .and_then(|s| s[name].as_u64())
                .unwrap_or(0)
        };
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..RUNNERS)
                .map(|i| {
                    let (ctx, img) = (&self.contexts[i], &self.images[i]);
                    let engine = &self.engine;
                    s.spawn(move || {
                        let args = [
                            "save",
                            "--namespace",
                            "replicas",
                            "--image",
                            &img.tags[0],
                            ctx.path_str(),
                        ];
                        let (ok, summary, stderr) = layercache(engine, url, &args);
                        assert!(ok, "runner {i}: layercache save failed:\n{stderr}");
                        assert_eq!(summary["pushed"], true, "runner {i}: {summary}");
                        (summary["key"].as_str().unwrap().to_string(), img)
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(120);
            while stat("blobs") == 0 {
                assert!(Instant::now() < deadline, "no blob arrived within 120 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            let committed = stat("entries");
            fault();
            // Otherwise the fault came after the pushes and the test proved nothing.
            assert!(
                committed < RUNNERS as u64,
                "all {committed} pushes were done before the fault"
            );
            runs.into_iter()
                .map(|r| r.join().expect("a runner failed"))
                .collect()
        })
    }
}

/// After a fault: every pushed key restores through haproxy as exactly its image, every listed
/// entry is one of them (nothing half-written is visible).
fn assert_all_restore(c: &Cluster, pushed: &HashMap<String, &Image>) {
    let listed = c.get_json("/v1/entries?namespace=replicas");
    let listed: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), pushed.len(), "listed {listed:?}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    for (key, img) in pushed {
        assert!(
            listed.contains(&key.as_str()),
            "pushed entry {key} was lost"
        );
        let r = http
            .post(format!("{}/v1/lookup", c.lb.url))
            .json(&json!({ "namespaces": ["replicas"], "key": key }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "lookup {key}");
        let r = http
            .get(format!("{}/v1/images/replicas/{key}", c.lb.url))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "restore {key}");
        let body = r.bytes().unwrap();
        let parsed = read_archive(&body[..], &mut DigestSink, &Limits::default())
            .unwrap_or_else(|e| panic!("{key}: the restored tarball does not parse: {e}"));
        let restored = parsed.images.last().expect("an image");
        assert_eq!(restored.id, img.id(), "{key}: another image was served");
        assert_eq!(restored.diff_ids, img.diff_ids(), "{key}");
    }
}

/// `kill -9` of one replica while eight runners push through haproxy: what the dead replica had
/// in flight fails, the runners retry it (haproxy sends the retry to a live replica), every push
/// completes, nothing is lost or half-visible, and `verify` is clean. The replica, restarted,
/// rejoins the rotation.
#[test]
fn kill_9_of_a_replica_during_eight_pushes_loses_nothing_committed() {
    let mut c = Cluster::start("replicas_kill", 3, false);
    let pushes = Pushes::new();
    let pushed = pushes.run(&c.lb.url.clone(), || c.replicas[1].kill());
    c.lb.wait_down("r2");
    assert_all_restore(&c, &pushed);
    c.spawn(1);
    c.lb.wait_up();
    assert_all_restore(&c, &pushed);
    c.stop_and_verify();
}

/// One Garage node of three (replication factor 3) goes down while eight runners push: writes
/// still reach a quorum, every push completes, everything restores, `verify` is clean.
#[test]
fn one_garage_node_down_during_eight_pushes_loses_nothing() {
    let mut c = Cluster::start("replicas_garage", 3, false);
    let pushes = Pushes::new();
    // Node 0 is the endpoint the replicas use; a storage node behind it goes down.
    let garage = &mut c.garage;
    let pushed = pushes.run(&c.lb.url.clone(), || garage.kill_node(2));
    assert_all_restore(&c, &pushed);
    c.stop_and_verify();
}

/// PostgreSQL restarts while eight runners push: requests that needed it meanwhile are answered
/// 503 (or cut), the runners retry them, every push completes, and afterwards the replicas work
/// on new connections: everything restores, `verify` is clean.
#[test]
fn postgresql_restart_during_eight_pushes_is_ridden_out() {
    let mut c = Cluster::start("replicas_pg", 3, true);
    let pushes = Pushes::new();
    let pg = c.pg.as_ref().unwrap();
    let pushed = pushes.run(&c.lb.url.clone(), || pg.restart());
    assert_all_restore(&c, &pushed);
    // A fresh push after the restart goes through too.
    let ctx = Context::new(MULTI_STEP_DOCKERFILE);
    ctx.write("app.txt", "after the restart\n");
    let (ok, summary, stderr) = layercache(
        &pushes.engine,
        &c.lb.url,
        &[
            "build",
            "--namespace",
            "after",
            "-t",
            "e2e/after:1",
            ctx.path_str(),
        ],
    );
    assert!(ok && summary["pushed"] == true, "{summary}\n{stderr}");
    c.stop_and_verify();
}
