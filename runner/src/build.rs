//! The commands that work on a build context: `build`, `restore`, `save` and `key`.
//!
//! Each first computes the cache key from the Dockerfile, build args and target (bad input fails
//! here, before the engine or the server is touched), then runs its halves.
//!
//! [`build_through_cache`] is the whole of `build` without the flags: `layercache steps` builds
//! each service image with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use layercache_shared::api::{BuildCache, BuildReport, BuildSeconds};
use layercache_shared::key::{self, CacheKeys, Platform};
use layercache_shared::{CacheKey, Digest, Namespace};

use crate::cli::{BuildArgs, CacheOpts, KeyArgs, KeyOpts, RestoreArgs, SaveArgs, parse_build_args};
use crate::client::Client;
use crate::detect::{self, BuildPath, Builder, EngineFacts};
use crate::engine::Engine;
use crate::push::{self, PushRequest};
use crate::report::{Log, Phase, Summary};
use crate::restore::{self, Lookup};
use crate::reuse::StepCounts;
use crate::{buildkit, classic, context};

/// The key inputs, read and validated.
struct KeyInput {
    /// The Dockerfile's path.
    dockerfile: PathBuf,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    keys: CacheKeys,
}

/// The Dockerfile `-f` names, else `CONTEXT/Dockerfile`.
fn dockerfile_path(context_dir: Option<&Path>, opts: &KeyOpts) -> PathBuf {
    match (&opts.file, context_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(ctx)) => ctx.join("Dockerfile"),
        (None, None) => PathBuf::from("Dockerfile"),
    }
}

/// Reads the Dockerfile and computes its cache key and instruction-prefix hashes.
fn compute_keys(
    dockerfile: &Path,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
    platform: &Platform,
) -> anyhow::Result<CacheKeys> {
    let text = std::fs::read_to_string(dockerfile).with_context(|| {
        format!(
            "failed to read the Dockerfile `{}`; pass its path with -f",
            dockerfile.display()
        )
    })?;
    key::compute(&text, build_args, target, platform)
        .with_context(|| format!("in `{}`", dockerfile.display()))
}

/// The key inputs, keyed for `platform` (the host's before the engine is asked, so bad input fails
/// before the engine is touched; [`KeyInput::rekey`] then keys for the engine's).
fn key_input(
    context_dir: Option<&Path>,
    opts: &KeyOpts,
    platform: &Platform,
) -> anyhow::Result<KeyInput> {
    let dockerfile = dockerfile_path(context_dir, opts);
    let build_args = parse_build_args(&opts.build_args, |k| std::env::var(k).ok())?;
    let keys = compute_keys(&dockerfile, &build_args, opts.target.as_deref(), platform)?;
    Ok(KeyInput {
        dockerfile,
        build_args,
        target: opts.target.clone(),
        keys,
    })
}

impl KeyInput {
    /// Recomputes the keys for the platform of `engine`.
    async fn rekey(&mut self, engine: &Engine) -> anyhow::Result<()> {
        let facts = engine.facts().await?;
        self.keys = compute_keys(
            &self.dockerfile,
            &self.build_args,
            self.target.as_deref(),
            &facts.platform,
        )?;
        Ok(())
    }
}

/// Where entries are stored and looked up.
struct Place {
    namespace: Namespace,
    fallbacks: Vec<Namespace>,
    client: Client,
}

fn place(context_dir: &Path, opts: &CacheOpts) -> anyhow::Result<Place> {
    let namespace = match &opts.namespace {
        Some(ns) => ns.parse::<Namespace>()?,
        None => default_namespace(context_dir),
    };
    let fallbacks = parse_fallbacks(&namespace, &opts.fallbacks)?;
    let client = opts.server.client()?;
    Ok(Place {
        namespace,
        fallbacks,
        client,
    })
}

/// `--fallback` namespaces, parsed, without `namespace` itself and without repeats.
pub fn parse_fallbacks(namespace: &Namespace, raw: &[String]) -> anyhow::Result<Vec<Namespace>> {
    let mut fallbacks = Vec::new();
    for f in raw {
        let ns: Namespace = f.parse()?;
        if &ns != namespace && !fallbacks.contains(&ns) {
            fallbacks.push(ns);
        }
    }
    Ok(fallbacks)
}

/// The namespace when `--namespace` is not given: the git branch of `dir`, else `default`.
pub fn default_namespace(dir: &Path) -> Namespace {
    git_branch(dir)
        .and_then(|b| Namespace::sanitize(&b))
        .unwrap_or_else(|| Namespace::sanitize("default").expect("`default` is a valid namespace"))
}

/// The context's git branch (`None` outside git or on a detached HEAD). `rev-parse` fails in a
/// repository without commits, where `symbolic-ref` still names the branch.
fn git_branch(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty() && text != "HEAD").then_some(text)
    };
    git(&["rev-parse", "--abbrev-ref", "HEAD"])
        .or_else(|| git(&["symbolic-ref", "--short", "HEAD"]))
}

fn lookup<'a>(namespace: &Namespace, fallbacks: &[Namespace], keys: &'a CacheKeys) -> Lookup<'a> {
    let mut namespaces = vec![namespace.clone()];
    namespaces.extend(fallbacks.iter().cloned());
    Lookup {
        namespaces,
        key: &keys.key,
        prefixes: &keys.prefixes,
    }
}

fn new_summary(keys: &CacheKeys, namespace: &Namespace) -> Summary {
    Summary {
        cache: "miss".into(),
        key: keys.key.to_string(),
        namespace: namespace.to_string(),
        ..Summary::default()
    }
}

/// One image to build through the cache: what `layercache build` takes, parsed; also what
/// `layercache steps` builds each service with.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (inside the context or not).
    pub dockerfile: PathBuf,
    /// `--build-arg` values: part of the key and passed to the engine.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (default: the last one).
    pub target: Option<String>,
    /// Names for the built image; the first is given to the build, the others added after.
    pub tags: Vec<String>,
    /// Namespace to store under and look up first.
    pub namespace: Namespace,
    /// Namespaces looked up after `namespace`, in order.
    pub fallbacks: Vec<Namespace>,
    /// Pull newer base images.
    pub pull: bool,
    /// No restore and no engine layer cache (the result is still pushed unless `no_push`).
    pub no_cache: bool,
    /// Do not push the result.
    pub no_push: bool,
    /// `--builder`: which builder (and so which cache path) to use.
    pub builder: Builder,
}

/// The hash of the request's first two instructions (`None` for a one-instruction or unreadable
/// Dockerfile). Builds with the same value would each create their own copy of those steps if run
/// at the same time (the legacy builder does not wait for a step another build is running), and
/// two cached chains for one prefix make the engine reuse only one of them on the next worker: such
/// builds must run one after the other.
pub fn shared_start(req: &BuildRequest) -> Option<Digest> {
    compute_keys(
        &req.dockerfile,
        &req.build_args,
        req.target.as_deref(),
        &Platform::host(),
    )
    .ok()?
    .prefixes
    .get(1)
    .copied()
}

/// The core of `layercache build`: detect the engine and choose the path ([`crate::detect`]), key
/// → classic path (lookup and restore, `docker build` naming the restored images as `cachefrom`,
/// push the new layers) or BuildKit path (registry cache import and export on the server) → count
/// the steps the engine ran and reused → report the outcome to the server (`POST /v1/builds`, best
/// effort, skipped when the server had a problem earlier in the run).
///
/// Server problems (down, refused token, failed restore or push) never fail it: they become
/// warnings in the returned summary and the build goes on uncached, without a push. Errors are
/// bad input (Dockerfile, context, a builder the engine cannot run) and failures of the engine or
/// the build itself. Every log line, the build output included, goes to `log`.
pub async fn build_through_cache(
    engine: &Engine,
    client: &Client,
    req: &BuildRequest,
    log: &Log,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let phase = Phase::start("key");
    let facts = engine.facts().await?;
    let (path, note) = detect::choose(req.builder, &facts)?;
    let keys = compute_keys(
        &req.dockerfile,
        &req.build_args,
        req.target.as_deref(),
        &facts.platform,
    )?;
    let mut summary = new_summary(&keys, &req.namespace);
    summary.engine = facts.describe();
    summary.builder = path.builder().into();
    summary.path = Some(path);
    log.line(&format!("engine {}: {path}", facts.describe()));
    if let Some(note) = note {
        log.line(&note);
    }

    let mut read_only = false;
    let steps = match path {
        BuildPath::ClassicCachefrom => {
            phase.end(&mut summary);
            classic_path(engine, client, req, &keys, &facts, &mut summary, log).await?
        }
        BuildPath::BuildkitRegistry => {
            phase.end(&mut summary);
            log.line(&format!("key {} (namespace {})", keys.key, req.namespace));
            let outcome = buildkit::through_registry(client, req, &keys, &mut summary, log).await?;
            let (image_id, _) = engine.inspect(&outcome.image_id).await?;
            summary.image_id = Some(image_id.to_string());
            read_only = outcome.read_only;
            outcome.steps
        }
    };
    account(&mut summary, steps, log);
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.server_error.is_some() {
        log.line("not reporting the build: the cache server had a problem earlier");
    } else if read_only {
        log.line("not reporting the build: the server takes build reports from write tokens only");
    } else {
        let report = build_report(&summary, &req.namespace, &keys.key);
        let sent = match &report {
            Some(report) => client.report_build(report).await.map(drop),
            None => Ok(()),
        };
        if let Err(e) = sent {
            summary.warn(
                log,
                format!("reporting the build to the cache server failed: {e}"),
            );
        }
    }
    Ok(summary)
}

/// Check the Dockerfile suits the classic builder, pack the context, restore, build with the
/// restored images as `cachefrom`, push.
async fn classic_path(
    engine: &Engine,
    client: &Client,
    req: &BuildRequest,
    keys: &CacheKeys,
    facts: &EngineFacts,
    summary: &mut Summary,
    log: &Log,
) -> anyhow::Result<StepCounts> {
    let text = std::fs::read_to_string(&req.dockerfile).with_context(|| {
        format!(
            "failed to read the Dockerfile `{}`",
            req.dockerfile.display()
        )
    })?;
    classic::check_dockerfile(&text)?;
    let packed = {
        let (ctx, df) = (req.context.clone(), req.dockerfile.clone());
        tokio::task::spawn_blocking(move || context::pack(&ctx, &df))
            .await
            .context("the build-context task panicked")??
    };
    log.line(&format!(
        "key {} (namespace {}), context {} files, {} bytes",
        keys.key,
        req.namespace,
        packed.files,
        packed.tar.len()
    ));
    let restored = if req.no_cache {
        log.line("no-cache: not restoring from the cache");
        vec![]
    } else {
        let lookup = lookup(&req.namespace, &req.fallbacks, keys);
        restore::restore(engine, client, lookup, summary, log).await
    };

    let phase = Phase::start("build");
    let built = classic::build(engine, req, packed, &restored, log).await?;
    engine
        .tag(
            &built.image_id.to_string(),
            req.tags.get(1..).unwrap_or_default(),
        )
        .await?;
    summary.image_id = Some(built.image_id.to_string());
    phase.end(summary);

    if req.no_push {
        log.line("no-push: not pushing to the cache");
    } else if summary.server_error.is_some() {
        log.line("not pushing: the cache server had a problem earlier");
    } else {
        let phase = Phase::start("push");
        let push_req = PushRequest {
            namespace: &req.namespace,
            key: &keys.key,
            prefixes: &keys.prefixes,
            image: built.image_id.to_string(),
            stages: built.stages.clone(),
            containerd_store: facts.containerd_store,
        };
        if let Err(e) = push::push(engine, client, push_req, summary, log).await {
            summary.server_problem(log, format!("pushing to the cache failed: {e:#}"));
        }
        phase.end(summary);
    }
    Ok(built.steps)
}

/// Puts the step counts in the summary; a cache hit after which the engine reused no step is a
/// miss (so the dashboard's hit rate and time saved stay honest), with a warning saying so.
fn account(summary: &mut Summary, steps: StepCounts, log: &Log) {
    summary.steps_run = steps.run;
    summary.steps_reused = steps.reused;
    log.line(&format!(
        "build steps: {} run, {} reused from the cache",
        steps.run, steps.reused
    ));
    if summary.cache != "miss" && steps.reused == 0 && steps.run > 0 {
        let from = summary.restored_from.clone().unwrap_or_default();
        summary.warn(
            log,
            format!(
                "the cache hit ({} {from}) was restored, but the build reused no step: \
                 counted as a miss",
                summary.cache
            ),
        );
        summary.cache = "miss".into();
    }
}

/// The `POST /v1/builds` body for a finished build: its cache result and seconds per phase.
/// `None` when the summary's cache result is not one the server knows (a bug, not worth a failure).
fn build_report(summary: &Summary, namespace: &Namespace, key: &CacheKey) -> Option<BuildReport> {
    let cache = match summary.cache.as_str() {
        "exact" => BuildCache::Exact,
        "fallback" => BuildCache::Fallback,
        "prefix" => BuildCache::Prefix,
        "miss" => BuildCache::Miss,
        _ => return None,
    };
    let phase = |name: &str| summary.phases.get(name).copied().unwrap_or(0.0);
    Some(BuildReport {
        namespace: namespace.clone(),
        key: key.clone(),
        cache,
        seconds: BuildSeconds {
            lookup: phase("lookup"),
            restore: phase("restore"),
            build: phase("build"),
            push: phase("push"),
            total: summary.seconds,
        },
        image_id: summary.image_id.as_deref().and_then(|id| id.parse().ok()),
    })
}

/// `layercache build`: flags → [`BuildRequest`] → [`build_through_cache`] → summary.
pub async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    // Bad input (Dockerfile, build args, namespace) fails here, before the engine is touched.
    let input = key_input(Some(&args.context), &args.key, &Platform::host())?;
    let place = place(&args.context, &args.cache)?;
    let req = BuildRequest {
        context: args.context.clone(),
        dockerfile: input.dockerfile,
        build_args: input.build_args,
        target: input.target,
        tags: args.tags.clone(),
        namespace: place.namespace,
        fallbacks: place.fallbacks,
        pull: args.pull,
        no_cache: args.no_cache,
        no_push: args.no_push,
        builder: args.builder,
    };
    let engine = Engine::connect().await?;
    let summary = build_through_cache(&engine, &place.client, &req, &Log::stderr()).await?;
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut input = key_input(Some(&args.context), &args.key, &Platform::host())?;
    let place = place(&args.context, &args.cache)?;
    let engine = Engine::connect().await?;
    input.rekey(&engine).await?;
    let mut summary = new_summary(&input.keys, &place.namespace);
    let lookup = lookup(&place.namespace, &place.fallbacks, &input.keys);
    restore::restore(&engine, &place.client, lookup, &mut summary, &Log::stderr()).await;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache save`: unlike `build`, a push failure fails the command.
pub async fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut input = key_input(Some(&args.context), &args.key, &Platform::host())?;
    let place = place(&args.context, &args.cache)?;
    let engine = Engine::connect().await?;
    input.rekey(&engine).await?;
    let mut summary = new_summary(&input.keys, &place.namespace);
    let (image_id, _) = engine.inspect(&args.image).await?;
    summary.image_id = Some(image_id.to_string());
    let phase = Phase::start("push");
    let req = PushRequest {
        namespace: &place.namespace,
        key: &input.keys.key,
        prefixes: &input.keys.prefixes,
        image: args.image.clone(),
        stages: vec![],
        containerd_store: engine.facts().await?.containerd_store,
    };
    push::push(&engine, &place.client, req, &mut summary, &Log::stderr())
        .await
        .context("pushing to the cache failed")?;
    phase.end(&mut summary);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache key`.
pub fn key(args: KeyArgs) -> anyhow::Result<ExitCode> {
    let input = key_input(None, &args.key, &Platform::host())?;
    let keys = &input.keys;
    if args.json {
        let stages: Vec<serde_json::Value> = keys
            .stages
            .iter()
            .map(
                |s| serde_json::json!({"index": s.index, "name": s.name, "key": s.key.to_string()}),
            )
            .collect();
        let prefixes: Vec<String> = keys.prefixes.iter().map(Digest::to_string).collect();
        let v = serde_json::json!({
            "key": keys.key.to_string(),
            "prefixes": prefixes,
            "instructions": keys.instructions,
            "stages": stages,
        });
        println!("{v}");
    } else {
        println!("key {}", keys.key);
        for (p, instr) in keys.prefixes.iter().zip(&keys.instructions) {
            println!("{p}  {instr}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Log {
        Log::to(|_| {})
    }

    /// Regression: on Engine 26.1's classic store the restored entry went unused (no `cachefrom`)
    /// and the run still reported an `exact` hit, so the dashboard showed hits for full rebuilds.
    #[test]
    fn a_hit_after_which_the_build_reused_no_step_is_reported_as_a_miss() {
        let mut s = Summary {
            cache: "exact".into(),
            restored_from: Some("acme/web/sha256:abc".into()),
            ..Summary::default()
        };
        account(&mut s, StepCounts { run: 4, reused: 0 }, &quiet());
        assert_eq!(s.cache, "miss");
        assert_eq!((s.steps_run, s.steps_reused), (4, 0));
        assert!(s.warnings[0].contains("reused no step"), "{:?}", s.warnings);
        let ns: Namespace = "acme/web".parse().unwrap();
        let key: CacheKey = "sha256:abc".parse().unwrap();
        assert_eq!(build_report(&s, &ns, &key).unwrap().cache, BuildCache::Miss);

        // A hit that reused steps stays a hit; a miss stays a miss without a warning.
        let mut hit = Summary {
            cache: "fallback".into(),
            ..Summary::default()
        };
        account(&mut hit, StepCounts { run: 1, reused: 3 }, &quiet());
        assert_eq!(hit.cache, "fallback");
        let mut miss = Summary {
            cache: "miss".into(),
            ..Summary::default()
        };
        account(&mut miss, StepCounts { run: 4, reused: 0 }, &quiet());
        assert!(miss.warnings.is_empty());
    }

    #[test]
    fn the_build_report_carries_the_cache_result_and_seconds_per_phase() {
        let ns: Namespace = "acme/web".parse().unwrap();
        let key: CacheKey = "sha256:abc".parse().unwrap();
        let image = Digest::of(b"config");
        let mut summary = Summary {
            cache: "prefix".into(),
            image_id: Some(image.to_string()),
            seconds: 9.5,
            ..Summary::default()
        };
        for (name, secs) in [
            ("key", 0.1),
            ("lookup", 0.2),
            ("restore", 3.0),
            ("build", 5.0),
            ("push", 1.0),
        ] {
            summary.phases.insert(name.into(), secs);
        }
        let report = build_report(&summary, &ns, &key).unwrap();
        let body = serde_json::to_value(&report).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "namespace": "acme/web",
                "key": "sha256:abc",
                "cache": "prefix",
                "seconds": {"lookup": 0.2, "restore": 3.0, "build": 5.0, "push": 1.0, "total": 9.5},
                "image_id": image.to_string(),
            })
        );

        // A miss without a push or an image: the phases it skipped are 0, no image_id.
        let miss = Summary {
            cache: "miss".into(),
            seconds: 2.0,
            ..Summary::default()
        };
        let report = build_report(&miss, &ns, &key).unwrap();
        assert_eq!(report.cache, BuildCache::Miss);
        assert_eq!(
            report.seconds,
            BuildSeconds {
                total: 2.0,
                ..BuildSeconds::default()
            }
        );
        assert_eq!(report.image_id, None);
        assert!(
            build_report(
                &Summary {
                    cache: "weird".into(),
                    ..Summary::default()
                },
                &ns,
                &key
            )
            .is_none()
        );
    }
}
