//! Restore: look the key up and `docker load` the entry, streaming the server's tarball straight
//! into the engine (no temp file), leaving out layers the engine already has.
//!
//! Nothing here fails the run: a server that is down or answers garbage, or a load that breaks,
//! becomes a warning and the build goes on uncached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use bollard::query_parameters::ImportImageOptionsBuilder;
use futures::StreamExt;
use layercache_shared::api::{LookupRequest, LookupResponse};
use layercache_shared::{CacheKey, Digest, Namespace};

use crate::client::Client;
use crate::engine::{self, Engine};
use crate::report::{Log, Phase, Progress, Summary};

/// What to look up.
pub struct Lookup<'a> {
    /// Namespaces, best first.
    pub namespaces: Vec<Namespace>,
    pub key: &'a CacheKey,
    pub prefixes: &'a [Digest],
}

/// Looks up and restores; fills `summary.cache`, `restored_from`, `bytes_downloaded`. Returns the
/// IDs of the entry's images now on the engine (empty after a miss or a failed load): the classic
/// builder of Engine 23+ reuses them only when the build names them as `cachefrom`.
pub async fn restore(
    engine: &Engine,
    client: &Client,
    lookup: Lookup<'_>,
    summary: &mut Summary,
    log: &Log,
) -> Vec<Digest> {
    let mut restored = Vec::new();
    summary.cache = "miss".into();
    let req = LookupRequest {
        namespaces: lookup.namespaces,
        key: lookup.key.clone(),
        prefixes: lookup.prefixes.to_vec(),
    };
    let phase = Phase::start("lookup");
    let found = client.lookup(&req).await;
    phase.end(summary);
    let phase = Phase::start("restore");
    match found {
        Err(e) => summary.server_problem(log, format!("{e}; building without the cache")),
        Ok(None) => log.line(&format!(
            "cache miss for {} in {}",
            req.key,
            names(&req.namespaces)
        )),
        Ok(Some(hit)) => {
            summary.cache = hit.matched.as_str().into();
            summary.restored_from =
                Some(format!("{}/{}", hit.manifest.namespace, hit.manifest.key));
            log.line(&format!(
                "cache {} hit: {} {}{}",
                hit.matched.as_str(),
                hit.manifest.namespace,
                hit.manifest.key,
                hit.shared_instructions
                    .map(|n| format!(" ({n} shared instructions)"))
                    .unwrap_or_default()
            ));
            match load(engine, client, &hit, summary, log).await {
                Ok(loaded) => {
                    // The classic store keeps the entry's IDs; the containerd store gives loaded
                    // images new IDs (manifest digests), which the load output names.
                    let candidates = hit.manifest.images.iter().map(|i| i.id.to_string());
                    for reference in candidates.chain(loaded) {
                        if let Ok((id, _)) = engine.inspect(&reference).await
                            && !restored.contains(&id)
                        {
                            restored.push(id);
                        }
                    }
                }
                Err(e) => summary.warn(
                    log,
                    format!("restoring the cache failed: {e:#}; building without it"),
                ),
            }
        }
    }
    phase.end(summary);
    restored
}

fn names(ns: &[Namespace]) -> String {
    ns.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// [`load_once`], again (after a jittered wait, as the client's retry policy allows) when the
/// download broke on the way: the next try asks again without the layers the engine has by then.
async fn load(
    engine: &Engine,
    client: &Client,
    hit: &LookupResponse,
    summary: &mut Summary,
    log: &Log,
) -> anyhow::Result<Vec<String>> {
    let policy = client.retry_policy();
    let mut attempt = 1;
    loop {
        let (result, broke) = load_once(engine, client, hit, summary, log).await;
        let wait = policy.next_wait(attempt, None);
        match (result, wait) {
            (Err(e), Some(wait)) if broke => {
                log.line(&format!(
                    "the cache download broke ({e:#}); downloading again in {:.1} s (attempt {} \
                     of {})",
                    wait.as_secs_f64(),
                    attempt + 1,
                    policy.retries + 1
                ));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            (result, _) => return result,
        }
    }
}

/// Downloads the entry (minus what the engine has) into `docker load`; returns the images the
/// load says it loaded (`Loaded image: NAME`, `Loaded image ID: ID`), and whether the download
/// itself broke (a failure worth a retry, unlike a load the engine refused).
async fn load_once(
    engine: &Engine,
    client: &Client,
    hit: &LookupResponse,
    summary: &mut Summary,
    log: &Log,
) -> (anyhow::Result<Vec<String>>, bool) {
    let broke = Arc::new(AtomicBool::new(false));
    let result = load_into(engine, client, hit, summary, log, &broke).await;
    (result, broke.load(Ordering::Relaxed))
}

async fn load_into(
    engine: &Engine,
    client: &Client,
    hit: &LookupResponse,
    summary: &mut Summary,
    log: &Log,
    broke: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<String>> {
    let local = engine.local_images().await?;
    let images = &hit.manifest.images;
    if images.iter().all(|i| local.contains_key(&i.id)) {
        log.line("every image of the entry is already on this engine; nothing to download");
        return Ok(vec![]);
    }
    let chains = engine.local_chains(&local).await?;
    let mut skip: Vec<Digest> = engine::skip_set(images, &chains).into_iter().collect();
    skip.sort();
    let resp = client
        .get_image(&hit.manifest.namespace, &hit.manifest.key, &skip)
        .await?;
    let b = Arc::clone(broke);
    let progress = Arc::new(Progress::new(
        log,
        "downloading and loading",
        resp.content_length(),
    ));
    let counted = Arc::new(AtomicU64::new(0));
    let (p, c) = (Arc::clone(&progress), Arc::clone(&counted));
    let body = resp.bytes_stream().map(move |chunk| {
        match &chunk {
            Ok(bytes) => {
                c.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                p.inc(bytes.len() as u64);
            }
            Err(_) => b.store(true, Ordering::Relaxed),
        }
        chunk
    });
    let opts = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut out = engine.docker.import_image_stream(opts, body, None);
    let mut result = Ok(());
    let mut loaded = Vec::new();
    while let Some(item) = out.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        log.line(line);
                        if let Some(name) = line
                            .strip_prefix("Loaded image ID: ")
                            .or_else(|| line.strip_prefix("Loaded image: "))
                        {
                            loaded.push(name.trim().to_string());
                        }
                    }
                }
            }
            Err(e) => {
                result = Err(e).context("docker load of the cache tarball failed");
                break;
            }
        }
    }
    drop(out);
    let downloaded = counted.load(Ordering::Relaxed);
    summary.bytes_downloaded += downloaded;
    if let Ok(progress) = Arc::try_unwrap(progress) {
        progress.finish(downloaded);
    }
    result.map(|()| loaded)
}
