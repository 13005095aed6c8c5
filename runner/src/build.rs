//! The commands that work on a build context: `build`, `restore`, `save` and `key`.
//!
//! Each first computes the cache key from the Dockerfile, build args and target (bad input fails
//! here, before the engine or the server is touched), then runs its halves.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use layercache_shared::key::{self, CacheKeys};
use layercache_shared::{Digest, Namespace};

use crate::cli::{BuildArgs, CacheOpts, KeyArgs, KeyOpts, RestoreArgs, SaveArgs, parse_build_args};
use crate::client::Client;
use crate::context;
use crate::engine::{self, Engine, StageTracker};
use crate::push::{self, PushRequest};
use crate::report::{Phase, Summary};
use crate::restore::{self, Lookup};

/// The key inputs, read and validated.
struct KeyInput {
    /// The Dockerfile's path.
    dockerfile: PathBuf,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    keys: CacheKeys,
}

fn key_input(context_dir: Option<&Path>, opts: &KeyOpts) -> anyhow::Result<KeyInput> {
    let dockerfile = match (&opts.file, context_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(ctx)) => ctx.join("Dockerfile"),
        (None, None) => PathBuf::from("Dockerfile"),
    };
    let text = std::fs::read_to_string(&dockerfile).with_context(|| {
        format!(
            "failed to read the Dockerfile `{}`; pass its path with -f",
            dockerfile.display()
        )
    })?;
    let build_args = parse_build_args(&opts.build_args, |k| std::env::var(k).ok())?;
    let keys = key::compute(&text, &build_args, opts.target.as_deref())
        .with_context(|| format!("in `{}`", dockerfile.display()))?;
    Ok(KeyInput {
        dockerfile,
        build_args,
        target: opts.target.clone(),
        keys,
    })
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
        None => git_branch(context_dir)
            .and_then(|b| Namespace::sanitize(&b))
            .unwrap_or_else(|| {
                Namespace::sanitize("default").expect("`default` is a valid namespace")
            }),
    };
    let mut fallbacks = Vec::new();
    for f in &opts.fallbacks {
        let ns: Namespace = f.parse()?;
        if ns != namespace && !fallbacks.contains(&ns) {
            fallbacks.push(ns);
        }
    }
    let client = Client::new(&opts.server.server)?;
    Ok(Place {
        namespace,
        fallbacks,
        client,
    })
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

fn lookup<'a>(place: &Place, keys: &'a CacheKeys) -> Lookup<'a> {
    let mut namespaces = vec![place.namespace.clone()];
    namespaces.extend(place.fallbacks.iter().cloned());
    Lookup {
        namespaces,
        key: &keys.key,
        prefixes: &keys.prefixes,
    }
}

fn new_summary(keys: &CacheKeys, place: &Place) -> Summary {
    Summary {
        cache: "miss".into(),
        key: keys.key.to_string(),
        namespace: place.namespace.to_string(),
        ..Summary::default()
    }
}

/// `layercache build`.
pub async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let phase = Phase::start("key");
    let input = key_input(Some(&args.context), &args.key)?;
    let place = place(&args.context, &args.cache)?;
    let mut summary = new_summary(&input.keys, &place);
    let packed = {
        let (ctx, df) = (args.context.clone(), input.dockerfile.clone());
        tokio::task::spawn_blocking(move || context::pack(&ctx, &df))
            .await
            .context("the build-context task panicked")??
    };
    phase.end(&mut summary);
    eprintln!(
        "key {} (namespace {}), context {} files, {} bytes",
        input.keys.key,
        place.namespace,
        packed.files,
        packed.tar.len()
    );
    let engine = Engine::connect().await?;

    if args.no_cache {
        eprintln!("--no-cache: not restoring from the cache");
    } else {
        restore::restore(
            &engine,
            &place.client,
            lookup(&place, &input.keys),
            &mut summary,
        )
        .await;
    }

    let phase = Phase::start("build");
    let build_args: HashMap<String, String> = input.build_args.clone().into_iter().collect();
    let mut opts = BuildImageOptionsBuilder::default()
        .dockerfile(&packed.dockerfile)
        .rm(true)
        .forcerm(true)
        .nocache(args.no_cache)
        .buildargs(&build_args);
    if let Some(tag) = args.tags.first() {
        opts = opts.t(tag);
    }
    if let Some(target) = &input.target {
        opts = opts.target(target);
    }
    if args.pull {
        opts = opts.pull("1");
    }
    let mut stream = engine.docker.build_image(
        opts.build(),
        None,
        Some(bollard::body_full(packed.tar.into())),
    );
    let mut tracker = StageTracker::default();
    let mut aux_id = None;
    while let Some(item) = stream.next().await {
        let info = item.context("docker build failed")?;
        engine::check_build_error(info.error_detail)?;
        if let Some(text) = info.stream {
            for line in text.lines() {
                tracker.line(line);
                if !line.trim().is_empty() {
                    eprintln!("{line}");
                }
            }
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            aux_id = Some(aux);
        }
    }
    drop(stream);
    let built = aux_id
        .or_else(|| tracker.built.clone())
        .context("docker build ended without naming the built image")?;
    let (image_id, _) = engine.inspect(&built).await?;
    engine
        .tag(
            &image_id.to_string(),
            args.tags.get(1..).unwrap_or_default(),
        )
        .await?;
    summary.image_id = Some(image_id.to_string());
    phase.end(&mut summary);

    if args.no_push {
        eprintln!("--no-push: not pushing to the cache");
    } else if summary.server_error.is_some() {
        eprintln!("not pushing: the cache server had a problem earlier");
    } else {
        let phase = Phase::start("push");
        let req = PushRequest {
            namespace: &place.namespace,
            key: &input.keys.key,
            prefixes: &input.keys.prefixes,
            image: image_id.to_string(),
            stages: tracker.earlier_stages().to_vec(),
        };
        if let Err(e) = push::push(&engine, &place.client, req, &mut summary).await {
            summary.server_problem(format!("pushing to the cache failed: {e:#}"));
        }
        phase.end(&mut summary);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = key_input(Some(&args.context), &args.key)?;
    let place = place(&args.context, &args.cache)?;
    let mut summary = new_summary(&input.keys, &place);
    let engine = Engine::connect().await?;
    restore::restore(
        &engine,
        &place.client,
        lookup(&place, &input.keys),
        &mut summary,
    )
    .await;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache save`: unlike `build`, a push failure fails the command.
pub async fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = key_input(Some(&args.context), &args.key)?;
    let place = place(&args.context, &args.cache)?;
    let mut summary = new_summary(&input.keys, &place);
    let engine = Engine::connect().await?;
    let (image_id, _) = engine.inspect(&args.image).await?;
    summary.image_id = Some(image_id.to_string());
    let phase = Phase::start("push");
    let req = PushRequest {
        namespace: &place.namespace,
        key: &input.keys.key,
        prefixes: &input.keys.prefixes,
        image: args.image.clone(),
        stages: vec![],
    };
    push::push(&engine, &place.client, req, &mut summary)
        .await
        .context("pushing to the cache failed")?;
    phase.end(&mut summary);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `layercache key`.
pub fn key(args: KeyArgs) -> anyhow::Result<ExitCode> {
    let input = key_input(None, &args.key)?;
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
