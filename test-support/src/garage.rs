//! A real S3-compatible object store for the tests: Garage on free loopback ports with its own
//! data dir, a bucket and a key, stopped (and its dir removed) when dropped. One node by default;
//! [`Garage::cluster`] starts three with replication factor 3 (about 1.5 s, against 0.8 s for one).
//!
//! The binary comes from `scripts/install-s3.sh` (`/opt/garage/bin/garage`, or
//! `LAYERCACHE_GARAGE`). When it is missing the tests fail, naming the script: an S3 test that
//! skips would pass as green without having tested anything.
//!
//! The server's own tests (`cache-server/tests/garage`) wrap this in a type that also builds the
//! server's `S3Location` settings; this crate does not depend on the server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};

/// The region the node answers for (signatures name it).
pub const REGION: &str = "garage";

/// A running single-node Garage with a bucket.
pub struct Garage {
    /// `http://127.0.0.1:<port>`, the S3 API.
    pub endpoint: String,
    /// A bucket the key may read, write and own.
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// Secret key.
    pub secret: String,
    /// Each node's config file (for `garage -c`).
    configs: Vec<PathBuf>,
    /// The node processes (`None` once killed).
    children: Vec<Option<Child>>,
    /// Their metadata and data dirs and logs.
    dir: tempfile::TempDir,
}

/// The Garage binary, or a panic naming the install script.
pub fn garage_bin() -> PathBuf {
    let bin = std::env::var_os("LAYERCACHE_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/garage/bin/garage"));
    assert!(
        bin.is_file(),
        "Garage (the S3 server these tests run against) is not at `{}`: run scripts/install-s3.sh \
         (or set LAYERCACHE_GARAGE to the binary)",
        bin.display()
    );
    bin
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    /// Starts one node, lays it out, creates bucket `layercache` and a key allowed on it.
    pub fn start() -> Garage {
        Self::cluster(1)
    }

    /// Starts `nodes` nodes on loopback as one cluster (replication factor 3 when there are 3 or
    /// more, each node in its own zone so every zone holds a copy), then the bucket and key.
    /// The S3 endpoint is node 0's.
    pub fn cluster(nodes: usize) -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let replication = if nodes >= 3 { 3 } else { 1 };
        let mut configs = Vec::new();
        let mut children = Vec::new();
        let mut endpoint = String::new();
        for n in 0..nodes {
            let d = dir.path().join(format!("node{n}"));
            std::fs::create_dir_all(&d).unwrap();
            let (s3, rpc, admin) = (free_port(), free_port(), free_port());
            if n == 0 {
                endpoint = format!("http://127.0.0.1:{s3}");
            }
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                    d = d.display()
                ),
            )
            .unwrap();
            let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
            children.push(Some(
                Command::new(&bin)
                    .arg("-c")
                    .arg(&config)
                    .arg("server")
                    .env("RUST_LOG", "warn")
                    .stdout(log("stdout.log"))
                    .stderr(log("stderr.log"))
                    .spawn()
                    .expect("starting garage"),
            ));
            configs.push(config);
        }
        let mut g = Garage {
            endpoint,
            bucket: "layercache".into(),
            key_id: String::new(),
            secret: String::new(),
            configs,
            children,
            dir,
        };
        let mut ids = Vec::new();
        for n in 0..nodes {
            g.wait_until(
                |g| g.cli_on(n, &["node", "id", "-q"]).is_ok(),
                "answers `garage node id`",
            );
            ids.push(
                g.cli_on(n, &["node", "id", "-q"])
                    .unwrap()
                    .trim()
                    .to_string(),
            );
        }
        // A node just started may not accept the connection yet (seen under load): retried
        // until it does or the deadline passes.
        for peer in &ids[1..] {
            g.wait_until(
                |g| g.cli(&["node", "connect", peer]).is_ok(),
                "connects to its peers",
            );
        }
        for (n, id) in ids.iter().enumerate() {
            let id = id.split('@').next().unwrap().to_string();
            let zone = format!("dc{n}");
            g.wait_until(
                |g| {
                    g.cli(&["layout", "assign", "-z", &zone, "-c", "1G", &id])
                        .is_ok()
                },
                "assigns the node a role",
            );
        }
        g.cli(&["layout", "apply", "--version", "1"])
            .expect("layout apply");
        g.wait_until(
            |g| g.cli(&["bucket", "create", "layercache"]).is_ok(),
            "creates the bucket",
        );
        let key = g
            .cli(&["json-api", "CreateKey", r#"{"name":"layercache-test"}"#])
            .expect("create key");
        let key: serde_json::Value = serde_json::from_str(&key).expect("CreateKey answers JSON");
        g.key_id = key["accessKeyId"].as_str().unwrap().to_string();
        g.secret = key["secretAccessKey"].as_str().unwrap().to_string();
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "layercache",
            "--key",
            &g.key_id,
        ])
        .expect("bucket allow");
        // The key's permission reaches the S3 API through a table; wait until a request passes.
        g.wait_until(Garage::list_ok, "lets the key list the bucket");
        g
    }

    /// Kills node `n` (a node of a cluster going down); the others keep serving.
    pub fn kill_node(&mut self, n: usize) {
        if let Some(mut c) = self.children[n].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `garage -c <node 0's config> args`; its stdout, or its stderr as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.cli_on(0, args)
    }

    /// Runs `garage -c <node n's config> args`.
    fn cli_on(&self, n: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.configs[n])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Polls `ready` every 100 ms; panics (with the node's log) after 60 s.
    fn wait_until(&mut self, ready: impl Fn(&Garage) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self) {
            for c in self.children.iter_mut().flatten() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("garage exited ({status}): {}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "garage never {what}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the key can list the bucket.
    fn list_ok(&self) -> bool {
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(object_store::ObjectStore::list_with_delimiter(
            &client, None,
        ))
        .is_ok()
    }

    /// Node 0's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node0/stderr.log")).unwrap_or_default()
    }

    /// The `--blob-store` value for `prefix` in the bucket (`s3://layercache/<prefix>`); the
    /// binary reads the rest from [`Garage::env`].
    pub fn blob_store_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment the binary reads (`--blob-store s3://layercache/<prefix>` with these).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A client of the bucket for the tests' own checks.
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(REGION)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Where the node keeps its data (for tests that look at it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in 0..self.children.len() {
            self.kill_node(n);
        }
    }
}
