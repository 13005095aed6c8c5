//! `layercache-server`: flags and `LAYERCACHE_*` environment, logging, signals; the server itself
//! is the library's [`layercache_server::serve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use layercache_server::auth::{NamespacePattern, Role, create_token};
use layercache_server::store::sqlite::Db;
use layercache_server::store::tokens::TokenSelector;
use layercache_server::{Settings, serve, serve_tls, settings::DEFAULT_MAX_UPLOAD_BYTES, tls};

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
    /// Manage access tokens. Auth is on as soon as the data dir holds one live token.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
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
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "LAYERCACHE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LAYERCACHE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "LAYERCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown; only its hash is stored).
    Create {
        /// The data dir the server uses.
        #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
        data_dir: PathBuf,
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
    },
    /// Revoke a token by name or id; it is refused from the next request on.
    Revoke {
        /// The data dir the server uses.
        #[arg(long, env = "LAYERCACHE_DATA_DIR", default_value = "./layercache-data")]
        data_dir: PathBuf,
        /// Token name, or id as `token list` shows it.
        token: String,
    },
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
    tracing::info!("shutting down: finishing in-flight requests");
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
        data_dir: args.data_dir.clone(),
        max_upload_bytes: args.max_upload_bytes,
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

fn open_db(data_dir: &Path) -> anyhow::Result<Db> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create data dir `{}`", data_dir.display()))?;
    let path = data_dir.join("layercache.db");
    Db::open(&path).with_context(|| format!("failed to open `{}`", path.display()))
}

/// `secs` since the epoch as UTC `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date, counting in 400-year eras that start on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn when(secs: Option<u64>, absent: &str) -> String {
    secs.map_or_else(|| absent.to_string(), utc)
}

/// Runs a `token` subcommand, printing to stdout.
fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            data_dir,
            role,
            namespaces,
            name,
        } => {
            let role: Role = role.parse()?;
            let patterns = namespaces
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<NamespacePattern>, _>>()?;
            let db = open_db(&data_dir)?;
            let (token, rec) = create_token(&db, role, &patterns, name.as_deref())?;
            println!("{token}");
            eprintln!(
                "created token #{} ({role}, namespaces {}): store it now, it is not shown again",
                rec.id,
                namespaces.join(", ")
            );
        }
        TokenCommand::List { data_dir } => {
            let db = open_db(&data_dir)?;
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
        TokenCommand::Revoke { data_dir, token } => {
            let db = open_db(&data_dir)?;
            match db.revoke_token(&TokenSelector::parse(&token))? {
                Some(rec) => println!(
                    "revoked token #{} {}",
                    rec.id,
                    rec.name.as_deref().unwrap_or("")
                ),
                None => anyhow::bail!(
                    "no live token `{token}` in `{}`: see `layercache-server token list`",
                    data_dir.display()
                ),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Token(cmd)) => {
            return match token(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
