//! Push: store a built image, its parent chain and the final images of earlier build stages as an
//! entry, uploading only the blobs the server lacks.
//!
//! 1. Collect the images (parents first) and their diff_ids and config digests.
//! 2. Ask the server which blobs it lacks; none → commit right away.
//! 3. Otherwise `docker save` all images in one stream, read it with the shared archive reader
//!    (layers spooled to a temp dir), upload the missing blobs a few at a time, then commit.
//!
//! Nothing is committed when any upload fails, so the server never holds a partial entry.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use layercache_shared::api::{CommitImage, CommitRequest};
use layercache_shared::archive::{BlobSink, Limits, read_archive};
use layercache_shared::{CacheKey, Digest, Namespace};
use tempfile::TempPath;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use crate::client::{Client, ClientError};
use crate::engine::{Engine, LocalImage};
use crate::report::{Log, Progress, Summary};

/// Blob uploads in flight at once.
const PARALLEL_UPLOADS: usize = 3;

/// What to push and where.
pub struct PushRequest<'a> {
    pub namespace: &'a Namespace,
    pub key: &'a CacheKey,
    pub prefixes: &'a [Digest],
    /// The built image (tag or ID).
    pub image: String,
    /// Final images (short IDs) of earlier build stages, stored too so their steps are cached.
    pub stages: Vec<String>,
}

/// One image to store.
struct Collected {
    id: Digest,
    parent: Option<Digest>,
    tags: Vec<String>,
    layers: Vec<Digest>,
}

/// The images of `roots` and their parent chains, parents before children, each once.
fn chains(roots: &[Digest], local: &HashMap<Digest, LocalImage>) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    let mut seen = HashSet::new();
    for root in roots {
        let mut chain = vec![*root];
        let mut cur = *root;
        while let Some(parent) = local.get(&cur).and_then(|i| i.parent) {
            if chain.contains(&parent) {
                break;
            }
            chain.push(parent);
            cur = parent;
        }
        for id in chain.into_iter().rev() {
            if seen.insert(id) {
                out.push(id);
            }
        }
    }
    out
}

/// Pushes; fills the upload fields of `summary`. Errors mean nothing was committed.
pub async fn push(
    engine: &Engine,
    client: &Client,
    req: PushRequest<'_>,
    summary: &mut Summary,
    log: &Log,
) -> anyhow::Result<()> {
    let local = engine.local_images().await?;
    let (final_id, _) = engine.inspect(&req.image).await?;
    let mut roots = Vec::new();
    for stage in &req.stages {
        let (id, _) = engine.inspect(stage).await?;
        roots.push(id);
    }
    roots.push(final_id);
    let mut images = Vec::new();
    for id in chains(&roots, &local) {
        let (_, layers) = engine.inspect(&id.to_string()).await?;
        let info = local.get(&id);
        images.push(Collected {
            id,
            parent: info.and_then(|i| i.parent),
            tags: info.map(|i| i.tags.clone()).unwrap_or_default(),
            layers,
        });
    }
    let mut layer_set: Vec<Digest> = Vec::new();
    for image in &images {
        for l in &image.layers {
            if !layer_set.contains(l) {
                layer_set.push(*l);
            }
        }
    }
    let mut wanted = layer_set.clone();
    wanted.extend(images.iter().map(|i| i.id));
    let missing = client.missing(wanted).await?;
    let missing_layers = missing.iter().filter(|d| layer_set.contains(d)).count() as u64;
    log.line(&format!(
        "pushing {} images ({} layers); the server lacks {} blobs",
        images.len(),
        layer_set.len(),
        missing.len()
    ));

    if !missing.is_empty() {
        let final_tags = local
            .get(&final_id)
            .map(|i| i.tags.clone())
            .unwrap_or_default();
        let mut names: Vec<String> = images
            .iter()
            .filter(|i| i.id != final_id || final_tags.is_empty())
            .map(|i| i.id.to_string())
            .collect();
        names.extend(final_tags);
        let spool = tempfile::tempdir().context("failed to create a temp dir for the layers")?;
        let parsed = export(engine, &names, spool.path().to_path_buf()).await?;
        let mut uploads = Vec::new();
        for digest in &missing {
            if let Some(blob) = parsed.layers.get(digest) {
                uploads.push(Upload::File {
                    digest: *digest,
                    size: blob.size,
                    path: blob.handle.to_path_buf(),
                });
            } else if let Some(config) = parsed.configs.get(digest) {
                uploads.push(Upload::Bytes {
                    digest: *digest,
                    data: config.clone(),
                });
            } else {
                bail!(
                    "the server lacks blob {digest}, which `docker save` did not produce; \
                     the image changed during the push, run it again"
                );
            }
        }
        let total: u64 = uploads.iter().map(Upload::size).sum();
        let progress = Progress::new(log, "uploading", Some(total));
        let results: Vec<u64> = futures::stream::iter(uploads.into_iter().map(|u| {
            let client = client.clone();
            let progress = &progress;
            async move {
                let size = u.size();
                u.send(&client).await?;
                progress.inc(size);
                Ok::<u64, anyhow::Error>(size)
            }
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect()
        .await?;
        summary.bytes_uploaded = results.iter().sum();
        progress.finish(summary.bytes_uploaded);
        drop(parsed);
    }

    let image_set: HashSet<Digest> = images.iter().map(|i| i.id).collect();
    let commit = CommitRequest {
        images: images
            .iter()
            .map(|i| CommitImage {
                id: i.id,
                parent: i.parent.filter(|p| image_set.contains(p)),
                tags: i.tags.clone(),
            })
            .collect(),
        prefixes: req.prefixes.to_vec(),
    };
    match client.commit(req.namespace, req.key, &commit).await {
        Ok(report) => log.line(&format!(
            "committed {}/{}: {} layers, {} new",
            req.namespace, req.key, report.layers_total, report.layers_new
        )),
        Err(ClientError::Refused { code, missing, .. }) if code == "missing_blobs" => {
            return Err(anyhow!(
                "the server refused the commit: it still lacks {} blobs ({}); push again",
                missing.len(),
                missing
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(e) => return Err(e.into()),
    }
    summary.layers_uploaded = missing_layers;
    summary.layers_reused = layer_set.len() as u64 - missing_layers;
    summary.pushed = true;
    Ok(())
}

/// A blob to upload.
enum Upload {
    File {
        digest: Digest,
        size: u64,
        path: PathBuf,
    },
    Bytes {
        digest: Digest,
        data: Bytes,
    },
}

impl Upload {
    fn size(&self) -> u64 {
        match self {
            Upload::File { size, .. } => *size,
            Upload::Bytes { data, .. } => data.len() as u64,
        }
    }

    async fn send(self, client: &Client) -> Result<(), ClientError> {
        match self {
            Upload::File { digest, size, path } => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| ClientError::File { digest, source })?;
                let body = reqwest::Body::wrap_stream(ReaderStream::new(file));
                client.put_blob(digest, size, body).await
            }
            Upload::Bytes { digest, data } => {
                let len = data.len() as u64;
                client
                    .put_blob(digest, len, reqwest::Body::from(data))
                    .await
            }
        }
    }
}

/// Spools each layer to its own temp file in a directory; dropping the handle deletes it.
struct SpoolSink {
    dir: PathBuf,
}

impl BlobSink for SpoolSink {
    type Handle = TempPath;
    fn store(&mut self, content: &mut dyn Read) -> io::Result<TempPath> {
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        io::copy(content, &mut file)?;
        file.as_file().sync_data()?;
        Ok(file.into_temp_path())
    }
}

/// `docker save` of `names`, parsed and verified, layers spooled under `dir`.
async fn export(
    engine: &Engine,
    names: &[String],
    dir: PathBuf,
) -> anyhow::Result<layercache_shared::archive::ParsedArchive<TempPath>> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stream = engine.docker.export_images(&refs).map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
    tokio::task::spawn_blocking(move || {
        let mut sink = SpoolSink { dir };
        read_archive(reader, &mut sink, &Limits::default())
    })
    .await
    .context("the docker save reader panicked")?
    .context("failed to read the `docker save` output of the images to push")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn img(id: Digest, parent: Option<Digest>) -> (Digest, LocalImage) {
        (
            id,
            LocalImage {
                parent,
                tags: vec![],
            },
        )
    }

    #[test]
    fn chains_put_parents_first_and_share_common_ancestors_once() {
        let (a, b, c, s) = (d("a"), d("b"), d("c"), d("s"));
        let local: HashMap<Digest, LocalImage> = [
            img(a, None),
            img(b, Some(a)),
            img(c, Some(b)),
            img(s, Some(a)),
        ]
        .into();
        assert_eq!(chains(&[s, c], &local), [a, s, b, c]);
        assert_eq!(chains(&[a], &local), [a]);
    }
}
