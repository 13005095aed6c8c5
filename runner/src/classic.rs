//! The classic-builder path: a build through the Engine API (`version=1`) with the deterministic
//! context tar, naming every restored image as `cachefrom`.
//!
//! Engine 20.10 reuses loaded images through their `Parent` links alone, but Engine 23+ (either
//! image store) reuses them only when the build names them in `cachefrom`; naming every image of
//! the restored entry (each stage's chain) makes every engine reuse every unchanged step.

use std::collections::HashMap;

use anyhow::{Context, bail};
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};
use futures::StreamExt;
use layercache_shared::Digest;
use layercache_shared::classic::refusals;
use layercache_shared::dockerfile;

use crate::build::BuildRequest;
use crate::context::PackedContext;
use crate::engine::{self, Engine, StageTracker};
use crate::report::Log;
use crate::reuse::{ClassicCounter, StepCounts};

/// What a classic build produced.
pub struct ClassicOutcome {
    /// The built image.
    pub image_id: Digest,
    /// Final images (short IDs) of the stages before the last, for the push.
    pub stages: Vec<String>,
    /// Steps run and reused, from the build output.
    pub steps: StepCounts,
}

/// Fails, naming each line, when the Dockerfile uses syntax the classic builder refuses: better
/// before the restore than from the engine halfway through the build.
pub fn check_dockerfile(text: &str) -> anyhow::Result<()> {
    let Ok(df) = dockerfile::parse(text) else {
        return Ok(()); // the key computation already reported parse errors
    };
    let found = refusals(&df);
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    bail!(
        "the classic builder cannot build this Dockerfile, it needs BuildKit for: {}; build with \
         --builder buildkit on an engine with the containerd image store (Engine 23+)",
        lines.join(", ")
    )
}

/// Builds `packed` with the classic builder, `cache_from` as its cache sources.
pub async fn build(
    engine: &Engine,
    req: &BuildRequest,
    packed: PackedContext,
    cache_from: &[Digest],
    log: &Log,
) -> anyhow::Result<ClassicOutcome> {
    let build_args: HashMap<String, String> = req.build_args.clone().into_iter().collect();
    let cache_from: Vec<String> = cache_from.iter().map(Digest::to_string).collect();
    let mut opts = BuildImageOptionsBuilder::default()
        .dockerfile(&packed.dockerfile)
        .rm(true)
        .forcerm(true)
        .nocache(req.no_cache)
        .buildargs(&build_args)
        .version(BuilderVersion::BuilderV1);
    if !cache_from.is_empty() {
        opts = opts.cachefrom(&cache_from);
    }
    if let Some(tag) = req.tags.first() {
        opts = opts.t(tag);
    }
    if let Some(target) = &req.target {
        opts = opts.target(target);
    }
    if req.pull {
        opts = opts.pull("1");
    }
    let mut stream = engine.docker.build_image(
        opts.build(),
        None,
        Some(bollard::body_full(packed.tar.into())),
    );
    let mut tracker = StageTracker::default();
    let mut counter = ClassicCounter::default();
    let mut aux_id = None;
    while let Some(item) = stream.next().await {
        let info = item.context("docker build failed")?;
        engine::check_build_error(info.error_detail)?;
        if let Some(text) = info.stream {
            for line in text.lines() {
                tracker.line(line);
                counter.line(line);
                if !line.trim().is_empty() {
                    log.line(line);
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
    Ok(ClassicOutcome {
        image_id,
        stages: tracker.earlier_stages().to_vec(),
        steps: counter.finish(),
    })
}
