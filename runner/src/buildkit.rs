//! The BuildKit path: `docker buildx build` with the cache server's registry as the build cache.
//!
//! Why the `buildx` CLI and not bollard: the Engine API's `/build` endpoint (what bollard's
//! `build_image` calls, also with `version=2`) takes `cachefrom` but has no cache export at all;
//! `--cache-to` exists only in BuildKit's own control API, which buildx speaks over the engine's
//! `/grpc` and `/session` endpoints with the client serving context, credentials and exporters.
//! `docker buildx`, which every engine since 23 ships as the plugin `docker build` itself runs,
//! does all of that and is what users run by hand, so what it does here is what they see. Cost:
//! one process per build (chosen for what it can do, not measured against a bollard `/grpc`
//! client, which would be a BuildKit client of our own to write and keep up).
//!
//! The cache lives in the server's registry (`/v2/`): repository = the namespace (lowercase, see
//! [`repository`]), tags `k-<key hex>` (this exact Dockerfile) and `cache-<target>` (the newest build
//! of the target, whatever its Dockerfile: steps shared with it still hit). Import: the namespace's
//! two tags, then each fallback's; export `mode=max` (every stage) to both tags of the namespace,
//! unless `--no-push`, a read-only token or a server without the registry protocol. Credentials go in
//! a private `DOCKER_CONFIG` (an `auths` entry for the server's host: any user, the token as
//! password) with the buildx plugin linked in, so the user's own Docker config is never touched.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use base64::Engine as _;
use layercache_shared::key::CacheKeys;
use layercache_shared::{CacheKey, Namespace};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::build::BuildRequest;
use crate::client::{Client, ClientError};
use crate::report::{Log, Phase, Summary};
use crate::reuse::{BuildkitCounter, StepCounts};

/// Compression of exported cache layers. Measured on this LAN-less loopback setup (see
/// `bench/build_matrix.py`): `uncompressed` exports and imports fastest; gzip costs CPU on both
/// sides for bytes a LAN carries cheaply.
pub const CACHE_COMPRESSION: &str = "uncompressed";

/// Where the buildx plugin may be, after `$DOCKER_CONFIG/cli-plugins` and `~/.docker/cli-plugins`
/// (the Docker CLI's own search list).
const PLUGIN_DIRS: &[&str] = &[
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
];

/// `host:port` of the server's base URL, as registry refs and `auths` name it.
pub fn registry_host(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The BuildKit path of `layercache build`: tag checks on the server's registry (the cache
/// result), the build with cache import and export, the outcome in `summary`. Server problems only
/// warn: the build then runs without the registry cache.
pub async fn through_registry(
    client: &Client,
    req: &BuildRequest,
    keys: &CacheKeys,
    summary: &mut Summary,
    log: &Log,
) -> anyhow::Result<BuildkitOutcome> {
    let repo = repository(&req.namespace)?;
    if repo != req.namespace.as_str() {
        log.line(&format!(
            "namespace {} is the registry repository {repo}",
            req.namespace
        ));
    }
    let host = registry_host(client.base());
    let tags = cache_tags(&keys.key, req.target.as_deref());
    let mut fallbacks = Vec::new();
    for ns in &req.fallbacks {
        match repository(ns) {
            Ok(r) => fallbacks.push(r),
            Err(e) => summary.warn(log, format!("skipping fallback: {e}")),
        }
    }

    let phase = Phase::start("lookup");
    let mut usable = match client.registry_available().await {
        Ok(()) => true,
        Err(e) => {
            summary.server_problem(log, format!("{e}; building without the registry cache"));
            false
        }
    };
    // The one cache to import: BuildKit fetches and merges every `--cache-from`, so naming the
    // tags that do not exist, or a second tag of the same cache, only costs time.
    let mut cache_from = Vec::new();
    if usable && !req.no_cache {
        match cache_result(client, &repo, &fallbacks, &tags).await {
            Ok(Some((kind, repo, tag))) => {
                log.line(&format!("cache {kind} hit: {host}/{repo}:{tag}"));
                summary.cache = kind.into();
                summary.restored_from = Some(format!("{repo}:{tag}"));
                cache_from.push(format!("{host}/{repo}:{tag}"));
            }
            Ok(None) => log.line(&format!("cache miss for {repo} in the registry")),
            Err(e) => {
                summary.server_problem(log, format!("{e}; building without the registry cache"));
                usable = false;
            }
        }
    }
    phase.end(summary);

    let mut read_only = false;
    let export = if !usable {
        false
    } else if req.no_push {
        log.line("no-push: not exporting the build cache");
        false
    } else if let Err(ClientError::TokenRefused { status, .. }) = client.missing(vec![]).await
        && status == reqwest::StatusCode::FORBIDDEN
    {
        log.line("the token may only read: not exporting the build cache");
        read_only = true;
        false
    } else {
        true
    };
    // Exported once, under the exact key's tag; the target's tag is pointed at the same manifest
    // afterwards (a second `--cache-to` would make BuildKit export everything twice).
    let cache_to = if export {
        vec![format!("{host}/{repo}:{}", tags[0])]
    } else {
        vec![]
    };
    let phase = Phase::start("build");
    let token = client.token();
    let outcome = build(
        BuildkitRun {
            context: &req.context,
            dockerfile: &req.dockerfile,
            build_args: &req.build_args,
            target: req.target.as_deref(),
            tags: &req.tags,
            pull: req.pull,
            no_cache: req.no_cache,
            registry: usable.then_some((host.as_str(), token)),
            cache_from,
            cache_to: cache_to.clone(),
        },
        log,
    )
    .await?;
    phase.end(summary);
    let outcome = BuildkitOutcome {
        read_only,
        ..outcome
    };
    if !cache_to.is_empty() {
        if outcome.export_errors.is_empty() {
            match client.registry_copy_tag(&repo, &tags[0], &tags[1]).await {
                Ok(()) => summary.pushed = true,
                Err(e) => summary.server_problem(
                    log,
                    format!("tagging the exported cache as {}: {e}", tags[1]),
                ),
            }
        } else {
            summary.server_problem(
                log,
                format!(
                    "exporting the build cache failed: {}",
                    outcome.export_errors.join("; ")
                ),
            );
        }
    }
    Ok(outcome)
}

/// The best registry tag to import: the exact key in the namespace, then in each fallback
/// (`fallback`), then the target's newest cache anywhere (`prefix`: shared steps hit).
async fn cache_result(
    client: &Client,
    repo: &str,
    fallbacks: &[String],
    tags: &[String; 2],
) -> Result<Option<(&'static str, String, String)>, ClientError> {
    let all: Vec<String> = std::iter::once(repo.to_string())
        .chain(fallbacks.iter().cloned())
        .collect();
    for (i, r) in all.iter().enumerate() {
        if client.registry_has_tag(r, &tags[0]).await? {
            let kind = if i == 0 { "exact" } else { "fallback" };
            return Ok(Some((kind, r.clone(), tags[0].clone())));
        }
    }
    for r in &all {
        if client.registry_has_tag(r, &tags[1]).await? {
            return Ok(Some(("prefix", r.clone(), tags[1].clone())));
        }
    }
    Ok(None)
}

/// Why a namespace cannot be a registry repository.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "namespace `{0}` cannot be a registry repository name, which BuildKit's cache needs: each \
     `/`-separated part must be lowercase letters and digits, separated by single `.`, `_`, `__` \
     or runs of `-` (e.g. `acme/web-app`); pass such a --namespace or use --builder classic"
)]
pub struct RepositoryError(String);

/// The registry repository of `ns`: the namespace, lowercased (the server maps it back the same
/// way). Refused when even lowercased it breaks the distribution spec's name grammar.
pub fn repository(ns: &Namespace) -> Result<String, RepositoryError> {
    let repo = ns.as_str().to_ascii_lowercase();
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        // Separators: `.`, `_`, `__` or `-+` between alphanumerics.
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                return false;
            }
        }
        true
    };
    if repo.len() <= 255 && repo.split('/').all(component_ok) {
        Ok(repo)
    } else {
        Err(RepositoryError(ns.to_string()))
    }
}

/// The two cache tags of a build: `k-<key hex>` and `cache-<target label>`.
pub fn cache_tags(key: &CacheKey, target: Option<&str>) -> [String; 2] {
    let hex = key.as_str().rsplit(':').next().unwrap_or(key.as_str());
    let label: String = target
        .unwrap_or("default")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    [format!("k-{hex}"), format!("cache-{label}")]
}

/// One buildx build.
pub struct BuildkitRun<'a> {
    /// The context directory (buildx packs it; BuildKit keys `COPY` on file contents).
    pub context: &'a Path,
    pub dockerfile: &'a Path,
    pub build_args: &'a std::collections::BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub tags: &'a [String],
    pub pull: bool,
    pub no_cache: bool,
    /// `host:port` of the registry, and its token; `None`: build without a registry cache.
    pub registry: Option<(&'a str, Option<&'a str>)>,
    /// `host:port/repo:tag` refs to import, best first.
    pub cache_from: Vec<String>,
    /// Refs to export to (`mode=max`); empty: no export.
    pub cache_to: Vec<String>,
}

/// What a buildx build produced.
pub struct BuildkitOutcome {
    /// The image ID (`--iidfile`).
    pub image_id: String,
    /// Steps run and reused, from the plain progress output.
    pub steps: StepCounts,
    /// Lines of the cache export that failed (ignored by BuildKit with `ignore-error=true`).
    pub export_errors: Vec<String>,
    /// The token may only read: the server takes no build report from it either.
    pub read_only: bool,
}

/// The buildx plugin binary: `$LAYERCACHE_BUILDX`, else the Docker CLI's plugin dirs.
fn find_buildx() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("LAYERCACHE_BUILDX") {
        return Ok(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(cfg) = std::env::var("DOCKER_CONFIG") {
        dirs.push(Path::new(&cfg).join("cli-plugins"));
    }
    if let Ok(home) = std::env::var("HOME") {
        dirs.push(Path::new(&home).join(".docker/cli-plugins"));
    }
    dirs.extend(PLUGIN_DIRS.iter().map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join("docker-buildx"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "BuildKit builds need the docker buildx plugin, found in none of {}; install \
                 docker-buildx (Debian: `apt-get install docker-buildx`), set LAYERCACHE_BUILDX \
                 to its path, or use --builder classic",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The user's Docker CLI config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
fn user_config() -> Option<serde_json::Value> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The config BuildKit's client gets: the user's own (logins for private base images, credential
/// helpers) with an `auths` entry for the cache server (any user name, the token as password).
/// A `credsStore` would shadow inline `auths`, so it goes when a token is added, and so does a
/// `credHelpers` entry for the server's host.
fn compose_config(
    user: Option<serde_json::Value>,
    registry: Option<(&str, Option<&str>)>,
) -> serde_json::Value {
    let mut config = match user {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    if let Some((host, Some(token))) = registry {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("layercache:{token}"));
        config.remove("credsStore");
        if let Some(serde_json::Value::Object(helpers)) = config.get_mut("credHelpers") {
            helpers.remove(host);
        }
        let auths = config
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}));
        if !auths.is_object() {
            *auths = serde_json::json!({});
        }
        if let serde_json::Value::Object(auths) = auths {
            auths.insert(host.to_string(), serde_json::json!({ "auth": auth }));
        }
    }
    serde_json::Value::Object(config)
}

/// The private `DOCKER_CONFIG`: the user's config plus credentials for the cache server's
/// registry, the buildx plugin linked in.
fn docker_config(registry: Option<(&str, Option<&str>)>) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().context("failed to create a private DOCKER_CONFIG dir")?;
    let plugins = dir.path().join("cli-plugins");
    std::fs::create_dir(&plugins).context("failed to create cli-plugins in DOCKER_CONFIG")?;
    let buildx = find_buildx()?;
    std::os::unix::fs::symlink(&buildx, plugins.join("docker-buildx"))
        .with_context(|| format!("failed to link {} into DOCKER_CONFIG", buildx.display()))?;
    let config = compose_config(user_config(), registry);
    // Only the owner may read the token (the temp dir is 0700 too).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.path().join("config.json"))
        .context("failed to create DOCKER_CONFIG/config.json")?;
    file.write_all(config.to_string().as_bytes())
        .context("failed to write DOCKER_CONFIG/config.json")?;
    Ok(dir)
}

/// The Docker CLI: `$LAYERCACHE_DOCKER_CLI`, else `docker` on `PATH`.
fn docker_cli() -> String {
    std::env::var("LAYERCACHE_DOCKER_CLI").unwrap_or_else(|_| "docker".into())
}

/// `#12 exporting cache…` → (12, `exporting cache…`).
fn vertex(line: &str) -> Option<(u64, &str)> {
    let (num, rest) = line.strip_prefix('#')?.split_once(' ')?;
    Some((num.parse().ok()?, rest.trim()))
}

/// Runs `docker buildx build`, its output to `log`; fails when the build fails.
pub async fn build(run: BuildkitRun<'_>, log: &Log) -> anyhow::Result<BuildkitOutcome> {
    let config = docker_config(run.registry)?;
    let iid = config.path().join("iid");
    let mut cmd = Command::new(docker_cli());
    cmd.env("DOCKER_CONFIG", config.path())
        .args([
            "buildx",
            "build",
            "--progress=plain",
            "--builder",
            "default",
        ])
        .arg("-f")
        .arg(run.dockerfile)
        .arg("--iidfile")
        .arg(&iid);
    for (k, v) in run.build_args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    if let Some(t) = run.target {
        cmd.args(["--target", t]);
    }
    for t in run.tags {
        cmd.args(["-t", t]);
    }
    if run.pull {
        cmd.arg("--pull");
    }
    if run.no_cache {
        cmd.arg("--no-cache");
    }
    for r in &run.cache_from {
        cmd.arg("--cache-from")
            .arg(format!("type=registry,ref={r}"));
    }
    for r in &run.cache_to {
        cmd.arg("--cache-to").arg(format!(
            "type=registry,ref={r},mode=max,ignore-error=true,compression={CACHE_COMPRESSION}"
        ));
    }
    cmd.arg(run.context)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{} buildx build`", docker_cli()))?;
    let stdout = child.stdout.take().context("no stdout of docker buildx")?;
    let stderr = child.stderr.take().context("no stderr of docker buildx")?;
    let mut out = BufReader::new(stdout).lines();
    let mut err = BufReader::new(stderr).lines();
    let mut counter = BuildkitCounter::default();
    let mut export_errors = Vec::new();
    // Vertices exporting the cache: an `ERROR` of theirs is a failed export (BuildKit goes on
    // with `ignore-error=true`), unlike the import's "not found" of a first build.
    let mut export_vertices: Vec<u64> = Vec::new();
    let mut last_lines: Vec<String> = Vec::new();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => l.context("reading docker buildx output")?.or_else(|| { out_open = false; None }),
            l = err.next_line(), if err_open => l.context("reading docker buildx output")?.or_else(|| { err_open = false; None }),
        };
        let Some(line) = line else { continue };
        counter.line(&line);
        if let Some((num, rest)) = vertex(&line) {
            if rest.starts_with("exporting cache") {
                export_vertices.push(num);
            } else if rest.starts_with("ERROR") && export_vertices.contains(&num) {
                export_errors.push(line.clone());
            }
        }
        log.line(&line);
        last_lines.push(line);
        if last_lines.len() > 20 {
            last_lines.remove(0);
        }
    }
    let status = child.wait().await.context("waiting for docker buildx")?;
    if !status.success() {
        bail!(
            "docker buildx build failed ({status}); its last lines:\n{}",
            last_lines.join("\n")
        );
    }
    let image_id = std::fs::read_to_string(&iid)
        .context("docker buildx build wrote no image ID (--iidfile)")?
        .trim()
        .to_string();
    Ok(BuildkitOutcome {
        image_id,
        steps: counter.finish(),
        export_errors,
        read_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_map_to_lowercase_repositories_or_are_refused() {
        let repo = |s: &str| repository(&s.parse().unwrap());
        assert_eq!(repo("acme/web/main").unwrap(), "acme/web/main");
        assert_eq!(repo("Acme/Feature-X").unwrap(), "acme/feature-x");
        assert_eq!(repo("a__b/c--d/e.f").unwrap(), "a__b/c--d/e.f");
        for bad in ["-lead", "trail_", "a..b", "a___b", "a.-b"] {
            let err = repo(bad).unwrap_err();
            assert!(err.to_string().contains("--namespace"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_private_config_keeps_the_users_logins_and_adds_the_token() {
        let user = serde_json::json!({
            "auths": {"ghcr.io": {"auth": "dXNlcjpwdw=="}},
            "credsStore": "desktop",
            "credHelpers": {"127.0.0.1:8700": "x", "gcr.io": "gcloud"},
        });
        let c = compose_config(Some(user), Some(("127.0.0.1:8700", Some("lc_t"))));
        assert_eq!(c["auths"]["ghcr.io"]["auth"], "dXNlcjpwdw==");
        // base64("layercache:lc_t")
        assert_eq!(c["auths"]["127.0.0.1:8700"]["auth"], "bGF5ZXJjYWNoZTpsY190");
        assert!(c.get("credsStore").is_none());
        assert_eq!(c["credHelpers"], serde_json::json!({"gcr.io": "gcloud"}));
        // No token (an open server): the user's config as it is; no config at all: empty.
        let open = compose_config(
            Some(serde_json::json!({"credsStore": "pass"})),
            Some(("h", None)),
        );
        assert_eq!(open, serde_json::json!({"credsStore": "pass"}));
        assert_eq!(compose_config(None, None), serde_json::json!({}));
    }

    #[test]
    fn cache_tags_name_the_key_and_the_target() {
        let key: CacheKey = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let [exact, latest] = cache_tags(&key, None);
        assert_eq!(exact, format!("k-{}", "ab".repeat(32)));
        assert_eq!(latest, "cache-default");
        assert_eq!(cache_tags(&key, Some("Builder"))[1], "cache-builder");
    }
}
