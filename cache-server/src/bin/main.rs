//! `layercache-server`: flags and `LAYERCACHE_*` environment, logging, signals; the server itself
//! is the library's [`layercache_server::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use layercache_server::gc::{self, Sweep};
use layercache_server::lru::{Policy, parse_size};
use layercache_server::settings::{
    DEFAULT_GC_INTERVAL, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_UPLOAD_GRACE,
};
use layercache_server::store::Store;
use layercache_server::{Settings, serve};

/// Docker image layer cache server for CI fleets.
///
/// Without a subcommand it serves (same as `serve`).
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Run a collection by hand: expire and evict entries per the policy, delete unreferenced
    /// blobs and orphan files; prints what was freed.
    Gc(GcArgs),
    /// Re-hash every stored blob; quarantine corrupt ones and drop the entries using them.
    Verify(VerifyArgs),
}

/// Flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LAYERCACHE_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Directory for the database, blobs and temp files (created if missing).
    #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
    data_dir: PathBuf,
    /// Largest accepted upload body, in bytes (default 64 GiB).
    #[arg(long, env = "LAYERCACHE_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Seconds between collector runs (it also runs after commits that exceed the quota).
    #[arg(long, env = "LAYERCACHE_GC_INTERVAL_SECS", default_value_t = DEFAULT_GC_INTERVAL.as_secs())]
    gc_interval_secs: u64,
    /// Log line format.
    #[arg(long, env = "LAYERCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The eviction policy, shared by `serve` and `gc`.
#[derive(Debug, Clone, clap::Args)]
struct PolicyArgs {
    /// Size quota for stored blobs, e.g. `200GiB`, `500GB`, `1073741824` (KB/MB/GB/TB are
    /// 1000-based, KiB/MiB/GiB/TiB 1024-based). Above it, least recently used entries are evicted.
    #[arg(long, env = "LAYERCACHE_MAX_SIZE", value_parser = parse_size_arg)]
    max_size: Option<u64>,
    /// Evict entries not used (restored or looked up) for this many days.
    #[arg(long, env = "LAYERCACHE_TTL_DAYS")]
    ttl_days: Option<u64>,
    /// Unreferenced blobs uploaded within this many seconds are kept (a client commits its entry
    /// after uploading the blobs).
    #[arg(long, env = "LAYERCACHE_UPLOAD_GRACE_SECS", default_value_t = DEFAULT_UPLOAD_GRACE.as_secs())]
    upload_grace_secs: u64,
}

/// Flags of `gc`.
#[derive(Debug, clap::Args)]
struct GcArgs {
    /// The server's data dir.
    #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Flags of `verify`.
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The server's data dir.
    #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
    data_dir: PathBuf,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", args.listen))?;
    let addr = listener
        .local_addr()
        .context("failed to read the listening address")?;
    println!("layercache-server listening on http://{addr}");
    let settings = Settings {
        max_upload_bytes: args.max_upload_bytes,
        max_size: args.policy.max_size,
        ttl_days: args.policy.ttl_days,
        gc_interval: std::time::Duration::from_secs(args.gc_interval_secs.max(1)),
        upload_grace: std::time::Duration::from_secs(args.policy.upload_grace_secs),
        ..Settings::new(args.data_dir.clone())
    };
    serve(listener, settings, shutdown_signal())
        .await
        .with_context(|| {
            format!(
                "server on `{addr}` with data dir `{}` failed",
                args.data_dir.display()
            )
        })
}

/// `gc`: one collection, reported on stdout.
fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let store = Store::open_for_maintenance(&args.data_dir)
        .with_context(|| format!("failed to open data dir `{}`", args.data_dir.display()))?;
    let policy = Policy {
        max_size: args.policy.max_size,
        ttl_secs: args.policy.ttl_days.map(|d| d.saturating_mul(gc::DAY_SECS)),
    };
    let grace = args.policy.upload_grace_secs;
    // A server may be running: orphans and temp files get the same grace as unreferenced blobs.
    let sweep = Sweep {
        grace_secs: grace,
        orphans: Some(grace),
    };
    let r = gc::collect(
        &store,
        &policy,
        sweep,
        layercache_server::store::sqlite::now(),
    )
    .with_context(|| format!("collection in `{}` failed", args.data_dir.display()))?;
    println!(
        "freed {} bytes: {} expired and {} evicted entries, {} blobs, {} orphan files; {} bytes stored",
        r.bytes_freed,
        r.entries_expired,
        r.entries_evicted,
        r.blobs_deleted,
        r.orphan_files,
        r.bytes_after
    );
    Ok(())
}

/// `verify`: re-hash every blob; fails (exit 1) when anything was corrupt or missing.
fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let store = Store::open_for_maintenance(&args.data_dir)
        .with_context(|| format!("failed to open data dir `{}`", args.data_dir.display()))?;
    let r = gc::verify(&store, &args.data_dir)
        .with_context(|| format!("verifying `{}` failed", args.data_dir.display()))?;
    for d in &r.corrupt {
        println!("corrupt: {d} (moved to quarantine/)");
    }
    for d in &r.missing {
        println!("missing: {d}");
    }
    println!(
        "checked {} blobs: {} corrupt, {} missing; {} entries dropped",
        r.checked,
        r.corrupt.len(),
        r.missing.len(),
        r.entries_dropped
    );
    if r.corrupt.is_empty() && r.missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the store had corrupt or missing blobs; they will not be served")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Gc(args)) => {
            init_logging(LogFormat::Text);
            run_gc(args)
        }
        Some(Command::Verify(args)) => {
            init_logging(LogFormat::Text);
            run_verify(args)
        }
        Some(Command::Serve(args)) => serve_main(args),
        None => serve_main(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_main(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(run(args))
}
