//! Command-line flags (clap derive): one struct per subcommand, shared option groups flattened in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::detect::Builder;
use crate::steps::StepsArgs;

/// Default address of the cache server when neither `--server` nor `LAYERCACHE_SERVER` is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8700";

/// layercache: restore Docker layer caches before a build, push only new layers after.
#[derive(Debug, Parser)]
#[command(name = "layercache", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restore the cache, `docker build`, then push new layers to the cache.
    Build(BuildArgs),
    /// Only restore: look the Dockerfile's key up and `docker load` the entry.
    Restore(RestoreArgs),
    /// Only push: store an already built image (and its parent chain) under the Dockerfile's key.
    Save(SaveArgs),
    /// Print the cache key and instruction-prefix hashes of a Dockerfile.
    Key(KeyArgs),
    /// Show whether the server answers, and its statistics.
    Status(StatusArgs),
    /// List the server's entries.
    Ls(LsArgs),
    /// Run a steps file against services (Jet-style CI pipeline).
    Steps(StepsArgs),
}

/// What the cache key is computed from.
#[derive(Debug, Clone, Args)]
pub struct KeyOpts {
    /// The Dockerfile (default: `CONTEXT/Dockerfile`).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build argument `KEY=VALUE` (or `KEY` to take the value from the environment); repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
}

/// Where entries are looked up and stored.
#[derive(Debug, Clone, Args)]
pub struct CacheOpts {
    /// Namespace to store under and look up first (default: the context's git branch, else `default`).
    #[arg(long, env = "LAYERCACHE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespaces to look up after `--namespace` (e.g. `main`); repeatable, tried in order.
    #[arg(long = "fallback", value_name = "NS")]
    pub fallbacks: Vec<String>,
    #[command(flatten)]
    pub server: ServerOpts,
}

/// The cache server to talk to.
#[derive(Debug, Clone, Args)]
pub struct ServerOpts {
    /// Base URL of the layercache server.
    #[arg(long, env = "LAYERCACHE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Access token sent as `Authorization: Bearer <token>` (servers that require auth); prefer
    /// the environment variable, a flag shows up in process listings.
    #[arg(long, env = "LAYERCACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Retries of a request that failed on the way or that an overloaded server turned away
    /// (429/503, after its Retry-After), with jittered exponential backoff; 0 tries once.
    #[arg(
        long,
        env = "LAYERCACHE_RETRIES",
        default_value_t = 3,
        value_name = "N"
    )]
    pub retries: u32,
}

impl ServerOpts {
    /// A client for this server, sending the token if one was given.
    pub fn client(&self) -> Result<crate::client::Client, crate::client::ClientError> {
        Ok(
            crate::client::Client::new(&self.server, self.token.as_deref())?
                .with_retry(crate::retry::RetryPolicy::with_retries(self.retries)),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The build context directory.
    pub context: PathBuf,
    #[command(flatten)]
    pub key: KeyOpts,
    #[command(flatten)]
    pub cache: CacheOpts,
    /// Name and tag for the built image (`repo:tag`); repeatable. Checked as an image reference
    /// here, so a bad one fails before anything is built.
    #[arg(short = 't', long = "tag", value_parser = image_ref_arg)]
    pub tags: Vec<String>,
    /// Always try to pull a newer version of the base images.
    #[arg(long)]
    pub pull: bool,
    /// Build without the engine's layer cache (and skip the restore); the result is still pushed.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not push the built image to the cache.
    #[arg(long)]
    pub no_push: bool,
    /// The builder: `auto` = what `docker build` uses on this engine where it can hit the cache
    /// (BuildKit with the server's registry cache on the containerd image store, else the classic
    /// builder with the restored images as cachefrom).
    #[arg(long, value_enum, default_value_t = Builder::Auto)]
    pub builder: Builder,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The build context directory (for the Dockerfile and the default namespace).
    pub context: PathBuf,
    #[command(flatten)]
    pub key: KeyOpts,
    #[command(flatten)]
    pub cache: CacheOpts,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SaveArgs {
    /// The build context directory (for the Dockerfile and the default namespace).
    pub context: PathBuf,
    /// The built image to store (tag or ID).
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub key: KeyOpts,
    #[command(flatten)]
    pub cache: CacheOpts,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub key: KeyOpts,
    /// Print the keys as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerOpts,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Only entries of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub server: ServerOpts,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why a `--build-arg` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildArgError {
    #[error("bad --build-arg `{0}`: the name before `=` is empty; use --build-arg KEY=VALUE")]
    EmptyName(String),
    #[error(
        "bad --build-arg `{0}`: no `=` and no environment variable of that name; use --build-arg KEY=VALUE"
    )]
    Unset(String),
}

/// Parses `KEY=VALUE` build args; a bare `KEY` takes its value from `env` (as `docker build` does).
/// Later duplicates win, like Docker.
pub fn parse_build_args(
    raw: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, BuildArgError> {
    let mut out = BTreeMap::new();
    for arg in raw {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, value.to_string()),
            None => (
                arg.as_str(),
                env(arg).ok_or_else(|| BuildArgError::Unset(arg.clone()))?,
            ),
        };
        if name.trim().is_empty() {
            return Err(BuildArgError::EmptyName(arg.clone()));
        }
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// A `--tag` value: an image reference (`layercache_shared::image_ref`), kept as written.
fn image_ref_arg(s: &str) -> Result<String, String> {
    s.parse::<layercache_shared::image_ref::ImageRef>()
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn build_args_split_at_the_first_equals_sign() {
        let raw = vec!["A=1".to_string(), "B=x=y".to_string(), "C=".to_string()];
        let args = parse_build_args(&raw, no_env).unwrap();
        assert_eq!(args["A"], "1");
        assert_eq!(args["B"], "x=y");
        assert_eq!(args["C"], "");
    }

    #[test]
    fn bare_build_arg_names_take_the_environment_value() {
        let raw = vec!["HOME".to_string()];
        let args = parse_build_args(&raw, |k| (k == "HOME").then(|| "/root".to_string())).unwrap();
        assert_eq!(args["HOME"], "/root");
        assert_eq!(
            parse_build_args(&raw, no_env),
            Err(BuildArgError::Unset("HOME".into()))
        );
    }

    #[test]
    fn build_args_without_a_name_are_refused_naming_the_flag() {
        let err = parse_build_args(&["=novalue".to_string()], no_env).unwrap_err();
        assert_eq!(err, BuildArgError::EmptyName("=novalue".into()));
        assert!(err.to_string().contains("--build-arg"));
    }

    #[test]
    fn later_build_args_override_earlier_ones() {
        let raw = vec!["A=1".to_string(), "A=2".to_string()];
        assert_eq!(parse_build_args(&raw, no_env).unwrap()["A"], "2");
    }

    #[test]
    fn cli_parses_a_full_build_command() {
        let cli = Cli::try_parse_from([
            "layercache",
            "build",
            "-f",
            "x/Dockerfile",
            "-t",
            "a:1",
            "-t",
            "b:2",
            "--build-arg",
            "K=V",
            "--fallback",
            "main",
            "--no-push",
            ".",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.tags, ["a:1", "b:2"]);
        assert_eq!(b.cache.fallbacks, ["main"]);
        assert!(b.no_push);
    }

    #[test]
    fn a_tag_that_is_no_image_reference_is_refused_before_the_build() {
        let Err(e) = Cli::try_parse_from(["layercache", "build", "-t", "Bad:Name", "."]) else {
            panic!("an invalid --tag was accepted");
        };
        assert!(e.to_string().contains("not an image reference"), "{e}");
    }
}
