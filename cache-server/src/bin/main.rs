//! `layercache-server`: flags and `LAYERCACHE_*` environment, logging, signals; the server itself
//! is the library's [`layercache_server::serve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::gc::{self, Sweep};
use layercache_server::lru::Policy;
use layercache_server::registry::uploads::DEFAULT_UPLOAD_TIMEOUT;
use layercache_server::settings::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_GC_INTERVAL, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DOWNLOADS, DEFAULT_MAX_TARBALL_UPLOADS,
    DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOADS, DEFAULT_QUEUE_WAIT, DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_UPLOAD_GRACE,
};
use layercache_server::store::Store;
use layercache_server::store::blobs::BlobLocation;
use layercache_server::store::meta::Metadata;
use layercache_server::store::postgres::PgDb;
use layercache_server::store::sqlite::Db;
use layercache_server::store::tokens::TokenSelector;
use layercache_server::{Settings, serve, serve_tls, tls};

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
    Serve(Box<ServeArgs>),
    /// Manage access tokens. Auth is on as soon as the data dir holds one live token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a collection by hand: expire and evict entries per the policy, delete unreferenced
    /// blobs and orphan files; prints what was freed.
    Gc(GcArgs),
    /// Re-hash every stored blob; quarantine corrupt ones and drop the entries using them.
    Verify(VerifyArgs),
    /// Move an embedded cache (a data dir with layercache.db and blobs/) into PostgreSQL
    /// (--database) and, with --blob-store s3://…, a bucket, for replicas to serve. Stop its
    /// server first. Every blob is hashed while it is copied; counts are compared at the end.
    /// Resumable: after an interruption run the same command again; it skips what is already in
    /// the target (blobs by digest and size, rows by name) and copies the rest. A target
    /// database holding another cache's rows is refused unless --merge.
    Migrate(MigrateArgs),
    /// For bench/scale.py only: fills a data dir (no server running on it) with hand-made
    /// entries `from..to` (see `store::bench_fill`).
    #[command(hide = true)]
    BenchFill {
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
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
    /// Where blobs live: `dir` (`blobs/` in the data dir) or `s3://BUCKET[/PREFIX]`, an
    /// S3-compatible bucket configured like other S3 tools: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP=true (plain-HTTP endpoint),
    /// AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true (path style is the default). The database and
    /// upload temp files stay in the data dir.
    #[arg(long, env = "LAYERCACHE_BLOB_STORE", default_value = "dir")]
    blob_store: BlobLocation,
    #[command(flatten)]
    database: DatabaseArg,
    /// Answer blob downloads (`GET /v1/blobs/…`, `GET /v2/…/blobs/…`) with `307` to a presigned
    /// URL of the object (valid 5 minutes), after the usual auth and existence checks, so the
    /// bytes go from the bucket to the client without passing through this server. Needs
    /// --blob-store s3://…, and clients that can reach the object store's endpoint.
    #[arg(long, env = "LAYERCACHE_REDIRECT_BLOBS")]
    redirect_blobs: bool,
    /// Largest accepted upload body, in bytes (default 64 GiB).
    #[arg(long, env = "LAYERCACHE_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Serve without access tokens while the data dir holds none (one developer, or a cache only
    /// trusted machines reach). Without it, a server with no token refuses every request but
    /// /healthz until `token create`. The first token created turns auth on; revoking the last
    /// never turns it off again.
    #[arg(long, env = "LAYERCACHE_OPEN")]
    open: bool,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "LAYERCACHE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LAYERCACHE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Seconds between collector runs (it also runs after commits that exceed the quota).
    #[arg(long, env = "LAYERCACHE_GC_INTERVAL_SECS", default_value_t = DEFAULT_GC_INTERVAL.as_secs())]
    gc_interval_secs: u64,
    /// Seconds a registry blob upload session may sit idle between chunks before it is dropped.
    #[arg(long, env = "LAYERCACHE_UPLOAD_TIMEOUT_SECS", default_value_t = DEFAULT_UPLOAD_TIMEOUT.as_secs())]
    upload_timeout_secs: u64,
    /// With replicas on one --database: seconds a replica's leases on blobs in use and its quota
    /// reservations outlive it when it dies (renewed every quarter of this while it runs).
    #[arg(long, env = "LAYERCACHE_LEASE_TTL_SECS", default_value_t = layercache_server::store::leases::DEFAULT_LEASE_TTL.as_secs())]
    lease_ttl_secs: u64,
    /// Threads for blob bytes (hashing and writing uploads, reading blobs for downloads), run at
    /// a lower priority than requests. Default: twice the cores with blobs on local disk, 64 with
    /// --blob-store s3://… (those threads also wait on the network).
    #[arg(long, env = "LAYERCACHE_BULK_THREADS", value_parser = clap::value_parser!(u64).range(1..=4096))]
    bulk_threads: Option<u64>,
    /// How bulk threads yield to request threads: `idle` (SCHED_IDLE: they run only when no
    /// request thread wants the CPU, for the lowest lookup latency) or `nice` (nice +10: they keep
    /// a share of a CPU that other busy programs on the host also want).
    #[arg(long, env = "LAYERCACHE_BULK_PRIORITY", value_enum, default_value_t = layercache_server::bulk::Priority::Idle)]
    bulk_priority: layercache_server::bulk::Priority,
    /// Threads serving requests (async workers). Default: twice the cores.
    #[arg(long, env = "LAYERCACHE_WORKER_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    worker_threads: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Log line format.
    #[arg(long, env = "LAYERCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Limits on connections and transfers, so slow or hostile clients cannot take the server down.
#[derive(Debug, Clone, clap::Args)]
struct LimitArgs {
    /// Blob uploads handled at once; more wait --queue-wait-secs, then get 503 + Retry-After.
    #[arg(long, env = "LAYERCACHE_MAX_UPLOADS", default_value_t = DEFAULT_MAX_UPLOADS)]
    max_uploads: usize,
    /// Tarball uploads (`PUT /v1/images/...`) handled at once (each holds a thread).
    #[arg(long, env = "LAYERCACHE_MAX_TARBALL_UPLOADS", default_value_t = DEFAULT_MAX_TARBALL_UPLOADS)]
    max_tarball_uploads: usize,
    /// Blob and tarball downloads streaming at once.
    #[arg(long, env = "LAYERCACHE_MAX_DOWNLOADS", default_value_t = DEFAULT_MAX_DOWNLOADS)]
    max_downloads: usize,
    /// Seconds a transfer waits for a free slot before it is answered 503.
    #[arg(long, env = "LAYERCACHE_QUEUE_WAIT_SECS", default_value_t = DEFAULT_QUEUE_WAIT.as_secs())]
    queue_wait_secs: u64,
    /// A request body that sends nothing for this many seconds is aborted (a stalled upload).
    #[arg(long, env = "LAYERCACHE_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT.as_secs())]
    body_timeout_secs: u64,
    /// Seconds a client has to send a request's headers, and that a kept-alive connection may
    /// wait for its next request.
    #[arg(long, env = "LAYERCACHE_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT.as_secs())]
    header_timeout_secs: u64,
    /// A connection with no request in a handler that moves no byte for this many seconds is
    /// closed (a client that stopped reading).
    #[arg(long, env = "LAYERCACHE_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout_secs: u64,
    /// Open connections at most (lowered to half the open-file limit). At the cap the longest
    /// idle connection is closed for a new one; when all are busy the new one is closed.
    #[arg(long, env = "LAYERCACHE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// After SIGTERM/SIGINT, seconds in-flight requests may take before the server exits anyway.
    #[arg(long, env = "LAYERCACHE_SHUTDOWN_TIMEOUT_SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT.as_secs())]
    shutdown_timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown; only its hash is stored).
    Create {
        /// The data dir the server uses.
        #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// read: restore; write: restore and push; admin: everything, including DELETE.
        #[arg(long)]
        role: String,
        /// Namespaces the token may touch: `*`, `acme/*` (everything below acme), or an exact
        /// namespace. Repeat for several.
        #[arg(long = "namespace", required = true)]
        namespaces: Vec<String>,
        /// A name to list and revoke it by (not all digits).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens: id, name, role, namespaces, created, last used (never the token).
    List {
        /// The data dir the server uses.
        #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Revoke a token by name or id; it is refused from the next request on.
    Revoke {
        /// The data dir the server uses.
        #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// Token name, or id as `token list` shows it.
        token: String,
    },
}

/// Where the index lives, shared by `serve`, `token`, `gc` and `verify`.
#[derive(Debug, Clone, clap::Args)]
struct DatabaseArg {
    /// Keep the index (entries, layers, tags, tokens, counters, history) in PostgreSQL at this
    /// URL, e.g. `postgres://cache:PASSWORD@db.internal/layercache`, instead of SQLite in the
    /// data dir. Blobs stay in the data dir. The schema is created or migrated at start.
    #[arg(long, env = "LAYERCACHE_DATABASE", hide_env_values = true)]
    database: Option<String>,
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
    /// Where the server keeps blobs (as for `serve`): `dir` (`blobs/` in the data dir) or `s3://BUCKET[/PREFIX]`, an
    /// S3-compatible bucket configured like other S3 tools: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP=true (plain-HTTP endpoint),
    /// AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true (path style is the default). The database and
    /// upload temp files stay in the data dir.
    #[arg(long, env = "LAYERCACHE_BLOB_STORE", default_value = "dir")]
    blob_store: BlobLocation,
    #[command(flatten)]
    database: DatabaseArg,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Flags of `verify`.
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The server's data dir.
    #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
    data_dir: PathBuf,
    /// Where the server keeps blobs (as for `serve`): `dir` (`blobs/` in the data dir) or `s3://BUCKET[/PREFIX]`, an
    /// S3-compatible bucket configured like other S3 tools: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP=true (plain-HTTP endpoint),
    /// AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true (path style is the default). The database and
    /// upload temp files stay in the data dir.
    #[arg(long, env = "LAYERCACHE_BLOB_STORE", default_value = "dir")]
    blob_store: BlobLocation,
    #[command(flatten)]
    database: DatabaseArg,
}

/// Flags of `migrate`. Deliberately not read from `LAYERCACHE_*` variables: a one-off move names
/// its source and target on the command line.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The data dir of the embedded cache to move; its server must be stopped. Its rows and blobs
    /// are only read (its schema is brought up to date and tmp/ wiped, as a server start does).
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the blobs go: `s3://BUCKET[/PREFIX]` (configured by the AWS_* variables, as for
    /// `serve`), or `dir` to leave them in the data dir (they are re-hashed there) and move only
    /// the index. Start the new servers with the same value.
    #[arg(long)]
    blob_store: BlobLocation,
    /// The PostgreSQL database the index goes to, e.g.
    /// `postgres://cache:PASSWORD@db.internal/layercache` (the schema is created if missing).
    #[arg(long, required = true)]
    database: String,
    /// Also migrate into a database that already holds another cache's rows. Where both hold
    /// the same entry, manifest, tag or token, the target's is kept; counters and history add up.
    #[arg(long)]
    merge: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    layercache_shared::size::parse(s).map_err(|e| e.to_string())
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
        .with_writer(std::io::stderr)
        // Colour codes only for people at a terminal; CI logs and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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
    tracing::info!("shutting down");
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", args.listen))?;
    let addr = listener
        .local_addr()
        .context("failed to read the listening address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("layercache-server listening on {scheme}://{addr}");
    let settings = Settings {
        max_upload_bytes: args.max_upload_bytes,
        max_size: args.policy.max_size,
        ttl_days: args.policy.ttl_days,
        gc_interval: std::time::Duration::from_secs(args.gc_interval_secs.max(1)),
        upload_grace: std::time::Duration::from_secs(args.policy.upload_grace_secs),
        upload_timeout: std::time::Duration::from_secs(args.upload_timeout_secs.max(1)),
        lease_ttl: std::time::Duration::from_secs(args.lease_ttl_secs.max(1)),
        bulk_threads: args.bulk_threads.map(|n| n as usize),
        bulk_priority: args.bulk_priority,
        open: args.open,
        max_uploads: args.limits.max_uploads,
        max_tarball_uploads: args.limits.max_tarball_uploads,
        max_downloads: args.limits.max_downloads,
        queue_wait: secs(args.limits.queue_wait_secs),
        body_timeout: secs(args.limits.body_timeout_secs.max(1)),
        header_timeout: secs(args.limits.header_timeout_secs.max(1)),
        idle_timeout: secs(args.limits.idle_timeout_secs.max(1)),
        max_connections: args.limits.max_connections,
        shutdown_timeout: secs(args.limits.shutdown_timeout_secs),
        blob_store: args.blob_store.clone().with_env(),
        database: args.database.database.clone(),
        redirect_blobs: args.redirect_blobs,
        ..Settings::new(args.data_dir.clone())
    };
    let served = match tls {
        Some(tls) => serve_tls(listener, settings, tls, shutdown_signal()).await,
        None => serve(listener, settings, shutdown_signal()).await,
    };
    served.with_context(|| {
        format!(
            "server on `{addr}` with data dir `{}` failed",
            args.data_dir.display()
        )
    })
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// The index the server uses: PostgreSQL at `--database`, else SQLite in the data dir.
fn open_db(data_dir: &Path, database: &DatabaseArg) -> anyhow::Result<Box<dyn Metadata>> {
    if let Some(url) = &database.database {
        // The error names the URL without its password.
        return Ok(Box::new(PgDb::open(url)?));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create data dir `{}`", data_dir.display()))?;
    let path = data_dir.join("layercache.db");
    Ok(Box::new(Db::open(&path).with_context(|| {
        format!("failed to open `{}`", path.display())
    })?))
}

/// `secs` since the epoch as UTC RFC 3339, `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn when(secs: Option<u64>, absent: &str) -> String {
    secs.map_or_else(|| absent.to_string(), utc)
}

/// Runs a `token` subcommand, printing to stdout.
fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            data_dir,
            database,
            role,
            namespaces,
            name,
        } => {
            let role: Role = role.parse()?;
            let patterns = namespaces
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<NamespacePattern>, _>>()?;
            let db = open_db(&data_dir, &database)?;
            let (token, rec) = create_token(&*db, role, &patterns, name.as_deref())?;
            println!("{token}");
            eprintln!(
                "created token #{} ({role}, namespaces {}): store it now, it is not shown again",
                rec.id,
                namespaces.join(", ")
            );
        }
        TokenCommand::List { data_dir, database } => {
            let db = open_db(&data_dir, &database)?;
            println!("ID\tNAME\tROLE\tNAMESPACES\tCREATED\tLAST_USED\tREVOKED");
            for t in db.list_tokens()? {
                let pats: Vec<&str> = t.namespaces.iter().map(|p| p.as_str()).collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.name.as_deref().unwrap_or("-"),
                    t.role,
                    pats.join(","),
                    utc(t.created),
                    when(t.last_used, "never"),
                    when(t.revoked, "-"),
                );
            }
        }
        TokenCommand::Revoke {
            data_dir,
            database,
            token,
        } => {
            let db = open_db(&data_dir, &database)?;
            match db.revoke_token(&TokenSelector::parse(&token))? {
                Some(rec) => println!(
                    "revoked token #{} {}",
                    rec.id,
                    rec.name.as_deref().unwrap_or("")
                ),
                None => anyhow::bail!(
                    "no live token `{token}` in `{}`: see `layercache-server token list`",
                    match &database.database {
                        Some(url) => layercache_server::store::postgres::redacted(url),
                        None => data_dir.display().to_string(),
                    }
                ),
            }
        }
    }
    Ok(())
}

/// `gc`: one collection, reported on stdout.
fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let store = Store::open_for_maintenance_with_index(
        &args.data_dir,
        &args.blob_store.clone().with_env(),
        args.database.database.as_deref(),
    )
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
    let store = Store::open_for_maintenance_with_index(
        &args.data_dir,
        &args.blob_store.clone().with_env(),
        args.database.database.as_deref(),
    )
    .with_context(|| format!("failed to open data dir `{}`", args.data_dir.display()))?;
    let r = gc::verify(&store)
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

/// `migrate`: prints what moved; fails (exit 1) on any error, after which running it again
/// resumes.
fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let opts = layercache_server::migrate::Options {
        data_dir: args.data_dir.clone(),
        blob_store: args.blob_store.with_env(),
        database: args.database,
        merge: args.merge,
    };
    let s = layercache_server::migrate::run(&opts)
        .with_context(|| format!("migrating `{}`", args.data_dir.display()))?;
    if s.blobs_verified > 0 {
        println!("blobs: {} re-hashed in place", s.blobs_verified);
    } else {
        println!(
            "blobs: {} copied ({} bytes), {} already in the target",
            s.blobs_copied, s.bytes_copied, s.blobs_present
        );
    }
    for (table, written) in &s.rows_written {
        let present = s
            .rows_present
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n);
        println!("{table}: {written} copied, {present} already in the target");
    }
    println!(
        "counters, history and builds: {}",
        if s.history_added {
            "added"
        } else {
            "added by an earlier run"
        }
    );
    let t = &s.target;
    println!(
        "target now holds {} entries, {} blobs ({} bytes), {} manifests, {} tags, {} tokens",
        t.entries, t.blobs, t.blob_bytes, t.manifests, t.tags, t.tokens
    );
    Ok(())
}

fn main() -> ExitCode {
    // Every file and dir this process creates (the index, its WAL, blobs, temp files) is for its
    // own user only: they hold every tenant's images and the token hashes.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
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
        Some(Command::Migrate(args)) => {
            init_logging(LogFormat::Text);
            run_migrate(args)
        }
        Some(Command::Token(cmd)) => token(cmd),
        Some(Command::BenchFill { data_dir, from, to }) => {
            layercache_server::store::Store::open(&data_dir)
                .and_then(|s| layercache_server::store::bench_fill::fill(&s, from, to))
                .with_context(|| format!("filling `{}`", data_dir.display()))
        }
        Some(Command::Serve(args)) => serve_main(*args),
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
    // Every connection, upload temp file and blob being read is a descriptor: a soft limit of
    // 1024 is what a few hundred idle clients exhaust.
    match layercache_server::serving::fdlimit::raise() {
        Ok((before, after)) if after > before => {
            tracing::info!("raised the open-file limit from {before} to {after}")
        }
        Ok((before, _)) => tracing::info!("open-file limit {before}"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let workers = args
        .worker_threads
        .map_or_else(layercache_server::settings::default_worker_threads, |n| {
            n as usize
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    tracing::info!(workers, "request threads");
    let result = runtime.block_on(run(args));
    // The shutdown deadline has passed or everything finished: do not wait for blocking work
    // still tied to a stalled client.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(when(None, "never"), "never");
    }
}
