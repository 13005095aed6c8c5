//! Load benchmark for `layercache-server`: N busy runners against one server.
//!
//! Each client loops until the time is up: it looks up one of K keys (whose images share a base
//! layer), restores the entry on a hit and checks the restored tarball holds exactly the layers
//! pushed for that key, uploads its image's unique layer as a blob, and pushes the whole tarball on
//! a miss or every fourth round. That is the traffic of a fleet's runners, compressed.
//!
//! Compiled, with the restored layers hashed on blocking threads, so the client's own cost (the
//! Python generator `bench/load.py` held the GIL while parsing tarballs) does not hide the
//! server's latency. The clients stand in for runners on machines of their own, so they yield the
//! CPU to the server (`sched`) and lookups are timed on a thread of their own (`lookups`);
//! `--clients-compete` and `--shared-lookups` measure as earlier versions did. With `--baseline`
//! it runs a second server binary on the same workload, runs alternating, and prints both with
//! ratios. With `--url` it runs against a server (or a load balancer in front of replicas) that
//! is already running, as `bench/replicas.py` does; `--json` prints each run's figures as a line
//! of JSON.
//!
//! ```sh
//! cargo build --release -p layercache-server -p layercache-loadgen
//! target/release/layercache-loadgen --seconds 30 --clients 32 --runs 3 \
//!     --baseline /path/to/older/layercache-server
//! ```

mod lookups;
mod report;
mod sched;
mod server;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use layercache_shared::Digest;
use layercache_test_support::tarball::{Image, layer, noise, save};

use lookups::Lookups;
use report::{Run, Stats};

#[derive(Parser, Debug)]
#[command(about = "Load benchmark: N busy runners against layercache-server")]
struct Args {
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Distinct keys (images) the clients pick from.
    #[arg(long, default_value_t = 24)]
    keys: usize,
    /// KiB of each image's unique layer (the base layer is 1 MiB).
    #[arg(long, default_value_t = 2048)]
    layer_kib: usize,
    /// Runs per server; with --baseline they alternate.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The server binary measured (started on a fresh data dir per run).
    #[arg(long, default_value = "target/release/layercache-server")]
    server: String,
    /// Another server binary run on the same workload, for ratios.
    #[arg(long)]
    baseline: Option<String>,
    /// Run against a server (or a load balancer in front of replicas) already running at this
    /// URL instead of starting one; each run uses a namespace of its own. No RSS is sampled (the
    /// server is not this process's child). Conflicts with --baseline.
    #[arg(long, conflicts_with = "baseline")]
    url: Option<String>,
    /// Also print each run's figures as one JSON object per line on stdout (for scripts such as
    /// bench/replicas.py).
    #[arg(long)]
    json: bool,
    /// Send and time lookups on the runtime that also drives every client's restores and pushes
    /// (the way of earlier versions), instead of on a thread of their own: a lookup's time then
    /// includes its wait behind other clients' work in this process.
    #[arg(long)]
    shared_lookups: bool,
    /// Run the clients at the normal scheduling policy, competing with the server for the CPU,
    /// instead of at `SCHED_IDLE` (see `sched`: they stand in for other machines).
    #[arg(long)]
    clients_compete: bool,
}

/// One generated image: what a client pushes and what a restore must give back.
struct Generated {
    key: String,
    diff_ids: Vec<Digest>,
    unique_layer: Bytes,
    unique_digest: Digest,
    tarball: Bytes,
}

fn generate(keys: usize, layer_kib: usize) -> Vec<Generated> {
    let base = layer(&[("base/shared.bin", &noise(0, 1 << 20))]);
    (0..keys)
        .map(|i| {
            let unique = layer(&[(
                &format!("app/{i}.bin"),
                &noise(1000 + i as u64, layer_kib << 10),
            )]);
            let img = Image::new(
                vec![base.clone(), unique.clone()],
                &["base", &format!("app {i}")],
            )
            .tagged(&format!("gen{i}:latest"));
            Generated {
                key: format!("k{i}"),
                diff_ids: img.diff_ids(),
                unique_digest: Digest::of(&unique),
                unique_layer: Bytes::from(unique),
                tarball: Bytes::from(save(&[&img])),
            }
        })
        .collect()
}

/// The layers of a served tarball's last image, in manifest order, each hashed.
fn restored_layers(body: &[u8]) -> anyhow::Result<Vec<Digest>> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(body);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(files.get("manifest.json").context("no manifest.json")?)?;
    let paths = manifest
        .as_array()
        .and_then(|a| a.last())
        .and_then(|m| m["Layers"].as_array())
        .context("manifest.json names no layers")?;
    paths
        .iter()
        .map(|p| {
            let p = p.as_str().context("a layer path is not a string")?;
            let data = files
                .get(p)
                .with_context(|| format!("{p} is not in the tarball"))?;
            Ok(Digest::of(data))
        })
        .collect()
}

/// One runner's loop until `deadline`.
async fn client(
    idx: usize,
    base: String,
    ns: String,
    images: Arc<Vec<Generated>>,
    deadline: Instant,
    stats: Arc<Mutex<Stats>>,
    lookups: Arc<Lookups>,
) {
    // One connection per client, as a runner has.
    let client = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client")
    };
    // With a lookup thread, the lookups' connection is driven by it (see `lookups`).
    let http = client();
    let lookup_http = if lookups.own_thread() {
        client()
    } else {
        http.clone()
    };
    let mut rng = fastrand::Rng::with_seed(idx as u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        let img = &images[rng.usize(..images.len())];
        let round_trip = one_round(
            &http,
            &lookup_http,
            &lookups,
            &base,
            &ns,
            img,
            round,
            &stats,
        );
        if let Err(e) = round_trip.await {
            stats
                .lock()
                .unwrap()
                .errors
                .push(format!("client {idx}: {e:#}"));
        }
        round += 1;
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_round(
    http: &reqwest::Client,
    lookup_http: &reqwest::Client,
    lookups: &Lookups,
    base: &str,
    ns: &str,
    img: &Generated,
    round: u64,
    stats: &Mutex<Stats>,
) -> anyhow::Result<()> {
    let request = lookup_http
        .post(format!("{base}/v1/lookup"))
        .json(&serde_json::json!({ "namespaces": [ns], "key": img.key }));
    let (status, took) = lookups
        .timed(async move {
            let r = request.send().await?;
            let status = r.status().as_u16();
            r.bytes().await?;
            Ok(status)
        })
        .await?;
    stats.lock().unwrap().lookup(took);
    if status != 200 && status != 404 {
        bail!("lookup {}: {status}", img.key);
    }
    if status == 200 {
        let t0 = Instant::now();
        let r = http
            .get(format!("{base}/v1/images/{ns}/{}", img.key))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("restore {}: {}", img.key, r.status());
        }
        let body = r.bytes().await?;
        stats.lock().unwrap().got(body.len() as u64, t0.elapsed());
        let layers = tokio::task::spawn_blocking(move || restored_layers(&body)).await??;
        if layers != img.diff_ids {
            bail!(
                "restore {}: the layers differ from what was pushed",
                img.key
            );
        }
    }
    let t0 = Instant::now();
    let r = http
        .put(format!("{base}/v1/blobs/{}", img.unique_digest))
        .body(img.unique_layer.clone())
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("blob PUT {}: {}", img.key, r.status());
    }
    r.bytes().await?;
    stats
        .lock()
        .unwrap()
        .put(img.unique_layer.len() as u64, t0.elapsed());
    if status == 404 || round.is_multiple_of(4) {
        let t0 = Instant::now();
        let r = http
            .put(format!("{base}/v1/images/{ns}/{}", img.key))
            .body(img.tarball.clone())
            .send()
            .await?;
        let st = r.status();
        let text = r.text().await?;
        if st.as_u16() != 201 {
            bail!(
                "push {}: {st} {}",
                img.key,
                text.chars().take(200).collect::<String>()
            );
        }
        stats
            .lock()
            .unwrap()
            .put(img.tarball.len() as u64, t0.elapsed());
    }
    Ok(())
}

/// One timed run against a fresh server started from `binary`, or against `--url`.
async fn run_once(args: &Args, binary: &str, images: &Arc<Vec<Generated>>) -> anyhow::Result<Run> {
    let server = match &args.url {
        Some(_) => None,
        None => Some(server::Server::start(binary).await?),
    };
    let url = match (&server, &args.url) {
        (Some(s), _) => s.url.clone(),
        (None, Some(url)) => url.trim_end_matches('/').to_string(),
        (None, None) => unreachable!("a server was started"),
    };
    let stats = Arc::new(Mutex::new(Stats::default()));
    let lookups = Arc::new(if args.shared_lookups {
        Lookups::shared()
    } else {
        Lookups::start_thread()?
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let ns = format!(
        "bench-{}",
        start.elapsed().as_nanos() ^ std::process::id() as u128
    );
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client(
                i,
                url.clone(),
                ns.clone(),
                Arc::clone(images),
                deadline,
                Arc::clone(&stats),
                Arc::clone(&lookups),
            ))
        })
        .collect();
    let sampler = server.as_ref().map(server::Server::sample_rss_until_done);
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let rss_peak_kib = match sampler {
        Some(s) => s.finish().await,
        None => 0,
    };
    drop(server);
    let stats = Arc::try_unwrap(stats)
        .map_err(|_| anyhow::anyhow!("a client outlived the run"))?
        .into_inner()
        .unwrap();
    Ok(Run::of(binary, stats, elapsed, rss_peak_kib))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let idle = !args.clients_compete;
    // The main thread keeps the normal policy: the server and the lookup thread are started from
    // it (and reset to the normal policy themselves, whatever thread starts them).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || sched::set_idle(idle))
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut binaries = vec![args.url.clone().unwrap_or_else(|| args.server.clone())];
    binaries.extend(args.baseline.clone());
    for b in binaries.iter().filter(|_| args.url.is_none()) {
        if !std::path::Path::new(b).exists() {
            bail!("{b} is missing: build it with `cargo build --release -p layercache-server`");
        }
    }
    eprintln!(
        "generating {} images of {} KiB unique + 1 MiB shared",
        args.keys, args.layer_kib
    );
    let images = Arc::new(generate(args.keys, args.layer_kib));
    let mut runs = Vec::new();
    for i in 0..args.runs {
        for b in &binaries {
            let run = run_once(&args, b, &images).await?;
            eprintln!("run {}/{} {}: {}", i + 1, args.runs, b, run.line());
            if args.json {
                println!("{}", run.json());
            }
            runs.push(run);
        }
    }
    println!(
        "\n{} clients, {} keys, {} KiB unique layers, {} s per run, {} run(s) per server\n",
        args.clients, args.keys, args.layer_kib, args.seconds, args.runs
    );
    print!("{}", report::table(&binaries, &runs));
    let errors: usize = runs.iter().map(|r| r.errors.len()).sum();
    if errors > 0 {
        for r in &runs {
            for e in r.errors.iter().take(5) {
                eprintln!("error ({}): {e}", r.binary);
            }
        }
        bail!("{errors} errors");
    }
    println!("\nevery restored tarball matched what was pushed");
    Ok(())
}
