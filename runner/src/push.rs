//! Push: store a built image, its parent chain and the final images of earlier build stages as an
//! entry, uploading only the blobs the server lacks.
//!
//! 1. Collect the images (parents first) and their diff_ids and config digests.
//! 2. Ask the server which blobs it lacks; none → commit right away.
//! 3. Otherwise `docker save` all images in one stream and read it with the shared archive reader.
//!    Pipelined: each layer is hashed while it is spooled to a temp file and, if the server lacks
//!    it, starts uploading (a few at a time) while the save streams the next ones; the configs
//!    follow once the archive is verified. Then commit.
//!
//! Nothing is committed unless the archive checked out and every upload succeeded, so the server
//! never holds a partial entry (blobs uploaded before a failure stay unreferenced until GC).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use layercache_shared::api::{CommitImage, CommitRequest};
use layercache_shared::archive::{ArchiveError, BlobSink, Limits, read_archive};
use layercache_shared::{CacheKey, Digest, Namespace};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use crate::client::{Client, ClientError};
use crate::engine::{Engine, LocalImage};
use crate::report::{Log, Progress, Summary};

/// Blob uploads in flight at once.
const PARALLEL_UPLOADS: usize = 3;
/// Bytes read from a spool file per chunk of an upload body.
const UPLOAD_CHUNK: usize = 256 << 10;
/// Bytes copied per read while spooling a layer.
const COPY_BUF: usize = 256 << 10;

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
        let missing_set: HashSet<Digest> = missing.iter().copied().collect();
        let (uploaded, bytes) = save_and_upload(engine, client, &names, &missing_set, log).await?;
        if let Some(absent) = missing.iter().find(|d| !uploaded.contains(d)) {
            bail!(
                "the server lacks blob {absent}, which `docker save` did not produce; \
                 the image changed during the push, run it again"
            );
        }
        summary.bytes_uploaded = bytes;
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

/// `docker save` of `names` streamed through the archive reader while the blobs in `missing` are
/// uploaded: each layer starts uploading as soon as it is spooled and hashed, while the save goes on
/// with the next ones; configs follow once the archive is verified. Returns the digests uploaded
/// and their bytes.
///
/// An error of either side ends both: a failed upload makes the reader stop at its next layer, a
/// bad archive cancels the uploads in flight. Blobs already uploaded then stay on the server as
/// unreferenced blobs (nothing is committed). The spool directory is removed once both are done.
async fn save_and_upload(
    engine: &Engine,
    client: &Client,
    names: &[String],
    missing: &HashSet<Digest>,
    log: &Log,
) -> anyhow::Result<(HashSet<Digest>, u64)> {
    let spool = Arc::new(
        tempfile::tempdir().context("failed to create a temp dir for the layers to upload")?,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Progress::new(log, "saving and uploading", None);
    let reader = export(engine, names, Arc::clone(&spool), tx);
    let uploads = upload_spooled(client, rx, missing, &progress);
    let ((), (uploaded, bytes)) = tokio::try_join!(reader, uploads)?;
    progress.finish(bytes);
    Ok((uploaded, bytes))
}

/// A blob ready to upload, sent by the reader thread to the uploader.
#[derive(Debug)]
enum Ready {
    /// A layer spooled to `path`: its diff_id and size.
    Layer {
        digest: Digest,
        size: u64,
        path: PathBuf,
    },
    /// An image config, sent once the archive is verified.
    Config { digest: Digest, data: Bytes },
}

impl Ready {
    fn digest(&self) -> Digest {
        match self {
            Ready::Layer { digest, .. } | Ready::Config { digest, .. } => *digest,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Ready::Layer { size, .. } => *size,
            Ready::Config { data, .. } => data.len() as u64,
        }
    }

    /// Deletes a layer's spool file (uploaded, not needed, or a repeat); errors are harmless, the
    /// spool directory goes at the end anyway.
    fn discard(&self) {
        if let Ready::Layer { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn send(&self, client: &Client) -> Result<(), ClientError> {
        match self {
            Ready::Layer { digest, size, path } => {
                let file =
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|source| ClientError::File {
                            digest: *digest,
                            source,
                        })?;
                let body =
                    reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, UPLOAD_CHUNK));
                client.put_blob(*digest, *size, body).await
            }
            Ready::Config { digest, data } => {
                let len = data.len() as u64;
                client
                    .put_blob(*digest, len, reqwest::Body::from(data.clone()))
                    .await
            }
        }
    }
}

/// Uploads what arrives on `rx` and the server lacks (each digest once), [`PARALLEL_UPLOADS`] at a
/// time, until the reader closes the channel; deletes each spool file once it is done with.
/// Returns the digests uploaded and their bytes; the first failed upload ends it with its error.
async fn upload_spooled(
    client: &Client,
    mut rx: mpsc::UnboundedReceiver<Ready>,
    missing: &HashSet<Digest>,
    progress: &Progress,
) -> anyhow::Result<(HashSet<Digest>, u64)> {
    let mut taken: HashSet<Digest> = HashSet::new();
    futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .filter_map(|ready| {
            let wanted = missing.contains(&ready.digest()) && taken.insert(ready.digest());
            if !wanted {
                ready.discard();
            }
            futures::future::ready(wanted.then_some(ready))
        })
        .map(|ready| async move {
            let result = ready.send(client).await;
            ready.discard();
            result?;
            progress.inc(ready.size());
            Ok::<_, anyhow::Error>((ready.digest(), ready.size()))
        })
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_fold(
            (HashSet::new(), 0u64),
            |(mut done, bytes), (digest, size)| {
                done.insert(digest);
                futures::future::ok((done, bytes + size))
            },
        )
        .await
}

/// Spools each layer to a file of the spool directory and hands it to the uploader as soon as the
/// archive reader has hashed it ([`BlobSink::stored`]). The uploader owns the files from then on (it
/// deletes them), so the handle the reader keeps is empty. No fsync: the files live only until
/// uploaded.
struct SpoolSink {
    dir: Arc<TempDir>,
    /// Numbers the spool files.
    count: u64,
    /// Reused copy buffer.
    buf: Vec<u8>,
    tx: mpsc::UnboundedSender<Ready>,
}

/// A spooled layer until the reader names its digest: then its path goes to the uploader.
struct Spooled(Option<PathBuf>);

impl BlobSink for SpoolSink {
    type Handle = Spooled;

    fn store(&mut self, content: &mut dyn Read) -> io::Result<Spooled> {
        if self.tx.is_closed() {
            return Err(io::Error::other(
                "the blob uploads stopped (their error says why)",
            ));
        }
        self.count += 1;
        let path = self.dir.path().join(format!("layer-{}", self.count));
        let mut out = std::fs::File::create(&path)?;
        loop {
            let n = match content.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.write_all(&self.buf[..n])?;
        }
        Ok(Spooled(Some(path)))
    }

    fn stored(&mut self, handle: &mut Spooled, digest: Digest, size: u64) {
        if let Some(path) = handle.0.take() {
            // A closed channel means an upload failed: the next `store` reports it.
            let _ = self.tx.send(Ready::Layer { digest, size, path });
        }
    }
}

/// `docker save` of `names`, read and verified, each layer passed to the uploader through `tx` as
/// soon as it is spooled under `dir`, the configs after the archive checked out.
async fn export(
    engine: &Engine,
    names: &[String],
    dir: Arc<TempDir>,
    tx: mpsc::UnboundedSender<Ready>,
) -> anyhow::Result<()> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stream = engine.docker.export_images(&refs).map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
    tokio::task::spawn_blocking(move || {
        let mut sink = SpoolSink {
            dir,
            count: 0,
            buf: vec![0; COPY_BUF],
            tx,
        };
        let parsed = read_archive(reader, &mut sink, &Limits::default())?;
        for (digest, data) in parsed.configs {
            // A closed channel means an upload failed; its error is the one reported.
            let _ = sink.tx.send(Ready::Config { digest, data });
        }
        Ok::<(), ArchiveError>(())
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
    fn the_sink_hands_each_spooled_layer_over_once_and_stops_when_uploads_stopped() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sink = SpoolSink {
            dir: Arc::clone(&dir),
            count: 0,
            buf: vec![0; 7],
            tx,
        };
        let data = b"layer content longer than the buffer";
        let mut handle = sink.store(&mut &data[..]).unwrap();
        assert!(
            rx.try_recv().is_err(),
            "nothing is sent before the digest is known"
        );
        sink.stored(&mut handle, Digest::of(data), data.len() as u64);
        sink.stored(&mut handle, Digest::of(data), data.len() as u64);
        let Ok(Ready::Layer { digest, size, path }) = rx.try_recv() else {
            panic!("expected one layer");
        };
        assert_eq!((digest, size), (Digest::of(data), data.len() as u64));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(rx.try_recv().is_err(), "handed over once");
        drop(rx);
        assert!(sink.store(&mut &data[..]).is_err());
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
