//! Push: store a built image, its parent chain and the final images of earlier build stages as an
//! entry, uploading only the blobs the server lacks.
//!
//! 1. Collect the images (parents first) and their diff_ids and config digests.
//! 2. Ask the server which blobs it lacks; none → commit right away.
//! 3. Otherwise `docker save` all images in one stream and read it with the shared archive reader,
//!    uploading while it streams. A legacy save names layers by v1 ids, so a layer's diff_id is
//!    known only once its bytes went by; what the runner does know up front is how many distinct
//!    layers the save holds and which of them the server lacks. So for each layer:
//!    - once every missing layer went by, the rest are only hashed (the reader verifies them);
//!    - while every layer still to come is missing (a first push), it is uploaded as it is read,
//!      with `POST /v1/blobs`, and the server's digest is checked against the reader's;
//!    - otherwise it is spooled to a temp file and, once hashed, uploaded if the server lacks it
//!      (a few at a time) while the save streams the next ones.
//!
//!    The configs follow once the archive is verified. Then commit.
//!
//! Nothing is committed unless the archive checked out and every upload succeeded, so the server
//! never holds a partial entry (blobs uploaded before a failure stay unreferenced until GC).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use layercache_shared::api::{BlobStored, CommitImage, CommitRequest, MissingResponse};
use layercache_shared::archive::{ArchiveError, BlobSink, Limits, ParsedImage, read_archive};
use layercache_shared::{CacheKey, Digest, Namespace};
use tempfile::TempDir;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::client::UPLOAD_CHUNK;
use crate::client::{Client, ClientError};
use crate::engine::{Engine, LocalImage};
use crate::report::{Log, Progress, Summary};

/// Blob uploads in flight at once.
const PARALLEL_UPLOADS: usize = 3;
/// Chunks of a streamed layer buffered between the reader and its upload.
const STREAM_DEPTH: usize = 8;
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
    /// The engine keeps images in containerd: image IDs are manifest digests, not config digests,
    /// so the configs to store are known only from the `docker save` (which then always runs).
    pub containerd_store: bool,
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
    if !req.containerd_store {
        wanted.extend(images.iter().map(|i| i.id));
    }
    let MissingResponse {
        missing,
        streamed_uploads,
    } = client.missing(wanted).await?;
    let missing_layers = missing.iter().filter(|d| layer_set.contains(d)).count() as u64;
    log.line(&format!(
        "pushing {} images ({} layers); the server lacks {} blobs",
        images.len(),
        layer_set.len(),
        missing.len()
    ));

    // On the containerd store: manifest digest (the engine's ID) → config digest (the stored ID).
    let mut config_of: HashMap<Digest, Digest> = HashMap::new();
    if !missing.is_empty() || req.containerd_store {
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
        if !streamed_uploads {
            log.line(
                "the cache server takes no streamed uploads (it predates POST /v1/blobs): \
                 layers are spooled before they are uploaded; upgrade it for faster pushes",
            );
        }
        let expected = Expected::new(
            layer_set.iter().copied().collect(),
            missing_set.clone(),
            streamed_uploads,
        );
        let (uploaded, bytes, parsed) = save_and_upload(
            engine,
            client,
            &names,
            &missing_set,
            expected,
            req.containerd_store,
            log,
        )
        .await?;
        for p in parsed {
            for m in p.manifests {
                config_of.insert(m, p.id);
            }
        }
        if let Some(absent) = missing.iter().find(|d| !uploaded.contains(d)) {
            bail!(
                "the server lacks blob {absent}, which `docker save` did not produce; \
                 the image changed during the push, run it again"
            );
        }
        summary.bytes_uploaded = bytes;
    }

    if req.containerd_store {
        for image in &mut images {
            image.id = *config_of.get(&image.id).with_context(|| {
                format!(
                    "the `docker save` of the images to push has no manifest {}; push again",
                    image.id
                )
            })?;
            // A parent outside the push is left out below; unknown ones map to nothing.
            image.parent = image.parent.and_then(|p| config_of.get(&p).copied());
        }
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
/// uploaded as [`Expected`] plans each layer, while the save goes on with the next ones; configs
/// follow once the archive is verified. Returns the digests uploaded and their bytes.
///
/// An error of either side ends both: a failed upload makes the reader stop at its next layer, a
/// bad archive cancels the uploads in flight. Blobs already uploaded then stay on the server as
/// unreferenced blobs (nothing is committed). The spool directory is removed once both are done.
///
/// `all_configs`: upload every config, whether `missing` names it or not (on the containerd store
/// the configs' digests are known only from the save). Also returns the images the save held.
async fn save_and_upload(
    engine: &Engine,
    client: &Client,
    names: &[String],
    missing: &HashSet<Digest>,
    expected: Expected,
    all_configs: bool,
    log: &Log,
) -> anyhow::Result<(HashSet<Digest>, u64, Vec<ParsedImage>)> {
    let spool = Arc::new(
        tempfile::tempdir().context("failed to create a temp dir for the layers to upload")?,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = PushSink {
        expected,
        dir: Arc::clone(&spool),
        count: 0,
        buf: vec![0; COPY_BUF],
        tx,
        client: client.clone(),
        rt: Handle::current(),
    };
    let progress = Progress::new(log, "saving and uploading", None);
    let reader = export(engine, names, sink);
    let uploads = upload_ready(client, rx, missing, all_configs, &progress);
    let (parsed, (uploaded, bytes)) = tokio::try_join!(reader, uploads)?;
    progress.finish(bytes);
    Ok((uploaded, bytes, parsed))
}

/// A blob ready to upload (or uploading), sent by the reader thread to the uploader.
#[derive(Debug)]
enum Ready {
    /// A layer spooled to `path`: its diff_id and size.
    Layer {
        digest: Digest,
        size: u64,
        path: PathBuf,
    },
    /// A layer uploaded while it was read: the reader's diff_id and size, the upload, and the
    /// copy spooled beside it, which a retry sends when the streamed upload broke.
    Streamed {
        digest: Digest,
        size: u64,
        upload: JoinHandle<Result<BlobStored, ClientError>>,
        path: PathBuf,
    },
    /// An image config, sent once the archive is verified.
    Config { digest: Digest, data: Bytes },
}

impl Ready {
    fn digest(&self) -> Digest {
        match self {
            Ready::Layer { digest, .. }
            | Ready::Streamed { digest, .. }
            | Ready::Config { digest, .. } => *digest,
        }
    }

    /// Deletes a layer's spool file (not needed, or a repeat); errors are harmless, the spool
    /// directory goes at the end anyway.
    fn discard(&self) {
        if let Ready::Layer { path, .. } | Ready::Streamed { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Uploads the blob (or waits for its streamed upload); returns its digest and size.
    async fn upload(self, client: &Client) -> anyhow::Result<(Digest, u64)> {
        match self {
            Ready::Layer { digest, size, path } => {
                // The spool file stays until the upload is done: a retry reads it again.
                let sent = client.put_file(digest, size, &path).await;
                let _ = std::fs::remove_file(&path);
                sent?;
                Ok((digest, size))
            }
            Ready::Streamed {
                digest,
                size,
                upload,
                path,
            } => {
                let streamed = upload.await.context("a layer upload panicked");
                let stored = match streamed {
                    Ok(Err(e)) if e.is_transient() => {
                        // A stream cannot be replayed: the spooled copy goes up instead.
                        eprintln!(
                            "the streamed upload of layer {digest} broke ({e}); sending it again"
                        );
                        let sent = client.put_file(digest, size, &path).await;
                        let _ = std::fs::remove_file(&path);
                        sent?;
                        return Ok((digest, size));
                    }
                    other => {
                        let _ = std::fs::remove_file(&path);
                        other??
                    }
                };
                if (stored.digest, stored.size) != (digest, size) {
                    bail!(
                        "the server stored the layer streamed to it as {} ({} bytes), but it \
                         hashed to {digest} ({size} bytes) here: the upload was corrupted on the \
                         way; push again",
                        stored.digest,
                        stored.size
                    );
                }
                Ok((digest, size))
            }
            Ready::Config { digest, data } => {
                let len = data.len() as u64;
                client
                    .put_blob(digest, len, reqwest::Body::from(data))
                    .await?;
                Ok((digest, len))
            }
        }
    }
}

/// Uploads what arrives on `rx` and the server lacks (each digest once), [`PARALLEL_UPLOADS`] at a
/// time, until the reader closes the channel, and waits for the uploads the reader streamed.
/// Returns the digests uploaded and their bytes; the first failed upload ends it with its error.
async fn upload_ready(
    client: &Client,
    mut rx: mpsc::UnboundedReceiver<Ready>,
    missing: &HashSet<Digest>,
    all_configs: bool,
    progress: &Progress,
) -> anyhow::Result<(HashSet<Digest>, u64)> {
    let mut taken: HashSet<Digest> = HashSet::new();
    futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .filter_map(|ready| {
            let digest = ready.digest();
            // A streamed layer is on its way already: wait for it whatever it is.
            let streamed = matches!(ready, Ready::Streamed { .. });
            let config = all_configs && matches!(ready, Ready::Config { .. });
            let wanted =
                ((missing.contains(&digest) || config) && taken.insert(digest)) || streamed;
            if !wanted {
                ready.discard();
            }
            futures::future::ready(wanted.then_some(ready))
        })
        .map(|ready| async move {
            let (digest, size) = ready.upload(client).await?;
            progress.inc(size);
            Ok::<_, anyhow::Error>((digest, size))
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

/// What the layers still to come in the save are, as far as the runner knows before their bytes.
#[derive(Debug)]
struct Expected {
    /// Distinct layers (diff_ids) not seen yet. An upper bound of what the sink still gets before
    /// the archive ends: layers of at most [`Limits::inline_threshold`] reach the sink only after
    /// the whole archive was read.
    layers_left: HashSet<Digest>,
    /// Of those, the ones the server lacks.
    missing_left: HashSet<Digest>,
    /// Whether the server takes `POST /v1/blobs`; without it nothing streams.
    can_stream: bool,
}

/// What to do with the next layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Every missing layer went by: only hash it.
    Skip,
    /// Every layer still to come is missing: upload it while reading it.
    Stream,
    /// It may or may not be missing: spool it, decide once it is hashed.
    Spool,
}

impl Expected {
    /// `layers`: every distinct layer of the images saved; `missing`: those the server lacks;
    /// `can_stream`: whether the server takes `POST /v1/blobs`.
    fn new(layers: HashSet<Digest>, missing: HashSet<Digest>, can_stream: bool) -> Self {
        Expected {
            missing_left: missing.intersection(&layers).copied().collect(),
            layers_left: layers,
            can_stream,
        }
    }

    fn plan(&self) -> Plan {
        if self.missing_left.is_empty() {
            Plan::Skip
        } else if self.can_stream && self.missing_left.len() >= self.layers_left.len() {
            Plan::Stream
        } else {
            Plan::Spool
        }
    }

    /// Content with this digest went by (a layer, a repeat, or something else the sink got).
    fn went_by(&mut self, digest: Digest) {
        self.layers_left.remove(&digest);
        self.missing_left.remove(&digest);
    }
}

/// The archive reader's sink while pushing: skips, streams or spools each layer as [`Expected`]
/// plans it, and hands what is to be uploaded to the uploader as soon as the reader has hashed it
/// ([`BlobSink::stored`]). Spool files belong to the uploader from then on (it deletes them). No
/// fsync: the files live only until uploaded.
struct PushSink {
    expected: Expected,
    dir: Arc<TempDir>,
    /// Numbers the spool files.
    count: u64,
    /// Reused copy buffer.
    buf: Vec<u8>,
    tx: mpsc::UnboundedSender<Ready>,
    client: Client,
    /// The runtime the streamed uploads run on (the sink runs on a blocking thread).
    rt: Handle,
}

/// A layer the sink took, until the reader names its digest.
#[derive(Debug)]
enum Taken {
    Skipped,
    /// Spooled to this file (`None` once handed over).
    Spooled(Option<PathBuf>),
    /// Uploading, with its spooled copy (`None` once handed over).
    Streaming(Option<(JoinHandle<Result<BlobStored, ClientError>>, PathBuf)>),
}

impl PushSink {
    fn spool(&mut self, content: &mut dyn Read) -> io::Result<Taken> {
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
        Ok(Taken::Spooled(Some(path)))
    }

    /// Uploads `content` as it is read, and spools a copy: a streamed body cannot be sent twice,
    /// so when the upload breaks (or a busy server turns it away) the uploader sends the copy.
    /// A read error aborts the upload (the server keeps nothing of it) and is passed on as it is.
    fn stream(&mut self, content: &mut dyn Read) -> io::Result<Taken> {
        self.count += 1;
        let path = self.dir.path().join(format!("layer-{}", self.count));
        let mut copy = std::fs::File::create(&path)?;
        let (chunks, rx) = mpsc::channel::<io::Result<Bytes>>(STREAM_DEPTH);
        let body = reqwest::Body::wrap_stream(ReceiverStream::new(rx));
        let client = self.client.clone();
        let upload = self.rt.spawn(async move { client.post_blob(body).await });
        // Until the request ends early; the copy goes on to the end of the layer.
        let mut streaming = true;
        loop {
            let mut chunk = BytesMut::zeroed(UPLOAD_CHUNK);
            let read = read_up_to(content, &mut chunk).and_then(|n| {
                copy.write_all(&chunk[..n])?;
                Ok(n)
            });
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    let _ = chunks.blocking_send(Err(io::Error::other("the layer read failed")));
                    upload.abort();
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            if streaming && chunks.blocking_send(Ok(chunk.freeze())).is_err() {
                streaming = false;
            }
        }
        Ok(Taken::Streaming(Some((upload, path))))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(content: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match content.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl BlobSink for PushSink {
    type Handle = Taken;

    fn store(&mut self, content: &mut dyn Read) -> io::Result<Taken> {
        if self.tx.is_closed() {
            return Err(io::Error::other(
                "the blob uploads stopped (their error says why)",
            ));
        }
        match self.expected.plan() {
            // The reader drains and hashes what the sink leaves unread.
            Plan::Skip => Ok(Taken::Skipped),
            Plan::Stream => self.stream(content),
            Plan::Spool => self.spool(content),
        }
    }

    fn stored(&mut self, handle: &mut Taken, digest: Digest, size: u64) {
        self.expected.went_by(digest);
        let ready = match handle {
            Taken::Skipped => None,
            Taken::Spooled(path) => path.take().map(|path| Ready::Layer { digest, size, path }),
            Taken::Streaming(upload) => upload.take().map(|(upload, path)| Ready::Streamed {
                digest,
                size,
                upload,
                path,
            }),
        };
        if let Some(ready) = ready {
            // A closed channel means an upload failed: the next `store` reports it.
            let _ = self.tx.send(ready);
        }
    }
}

/// `docker save` of `names`, read and verified through `sink`, which passes each layer to the
/// uploader as soon as it is hashed; the configs follow once the archive checked out.
async fn export(
    engine: &Engine,
    names: &[String],
    mut sink: PushSink,
) -> anyhow::Result<Vec<ParsedImage>> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stream = engine.docker.export_images(&refs).map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
    tokio::task::spawn_blocking(move || {
        let parsed = read_archive(reader, &mut sink, &Limits::default())?;
        for (digest, data) in parsed.configs {
            // A closed channel means an upload failed; its error is the one reported.
            let _ = sink.tx.send(Ready::Config { digest, data });
        }
        Ok::<_, ArchiveError>(parsed.images)
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
    fn a_first_push_streams_every_layer() {
        let layers: Vec<Digest> = ["a", "b", "c"].iter().map(|s| d(s)).collect();
        let all: HashSet<Digest> = layers.iter().copied().collect();
        let mut e = Expected::new(all.clone(), all, true);
        for l in &layers {
            assert_eq!(e.plan(), Plan::Stream);
            e.went_by(*l);
        }
        assert_eq!(e.plan(), Plan::Skip);
    }

    #[test]
    fn a_server_without_streamed_uploads_gets_spooled_layers() {
        let all: HashSet<Digest> = [d("a"), d("b")].into();
        let mut e = Expected::new(all.clone(), all, false);
        assert_eq!(e.plan(), Plan::Spool);
        e.went_by(d("a"));
        assert_eq!(e.plan(), Plan::Spool);
        e.went_by(d("b"));
        assert_eq!(e.plan(), Plan::Skip);
    }

    #[test]
    fn layers_that_may_be_stored_are_spooled_and_the_rest_skipped_once_all_missing_went_by() {
        let (a, b, c, n) = (d("a"), d("b"), d("c"), d("new"));
        // The server also lacks a config, which is no layer.
        let mut e = Expected::new([a, b, c, n].into(), [n, d("config")].into(), true);
        assert_eq!(e.plan(), Plan::Spool);
        e.went_by(a);
        e.went_by(a); // a repeat counts once
        e.went_by(d("not a layer"));
        assert_eq!(e.plan(), Plan::Spool, "3 layers to come, 1 of them missing");
        e.went_by(n);
        assert_eq!(e.plan(), Plan::Skip);
        e.went_by(b);
        e.went_by(c);
        assert_eq!(e.plan(), Plan::Skip);

        // The missing layer comes last: once only it can be left, it streams.
        let mut e = Expected::new([a, b, n].into(), [n].into(), true);
        e.went_by(a);
        assert_eq!(e.plan(), Plan::Spool);
        e.went_by(b);
        assert_eq!(e.plan(), Plan::Stream);
    }

    #[test]
    fn small_layers_arriving_late_never_make_a_stored_layer_stream() {
        // `s` (small, missing) reaches the sink only after the archive; `big` is stored already.
        // While `big` goes by, 2 layers may come and 1 is missing: spool, not stream.
        let (s, big) = (d("small"), d("big"));
        let mut e = Expected::new([s, big].into(), [s].into(), true);
        assert_eq!(e.plan(), Plan::Spool);
        e.went_by(big);
        assert_eq!(e.plan(), Plan::Stream);
        e.went_by(s);
        assert_eq!(e.plan(), Plan::Skip);
    }

    fn sink(
        rt: &tokio::runtime::Runtime,
        expected: Expected,
    ) -> (PushSink, mpsc::UnboundedReceiver<Ready>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = PushSink {
            expected,
            dir: Arc::new(tempfile::tempdir().unwrap()),
            count: 0,
            buf: vec![0; 7],
            tx,
            // Nothing listens on port 1: a streamed upload fails to connect; one quick retry.
            client: Client::new("http://127.0.0.1:1", None).unwrap().with_retry(
                crate::retry::RetryPolicy {
                    retries: 1,
                    base: std::time::Duration::from_millis(1),
                    ..Default::default()
                },
            ),
            rt: rt.handle().clone(),
        };
        (sink, rx)
    }

    #[test]
    fn the_sink_hands_each_spooled_layer_over_once_and_stops_when_uploads_stopped() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let data = b"layer content longer than the buffer";
        let stored = d("stored");
        let (mut sink, mut rx) = sink(
            &rt,
            Expected::new(
                [Digest::of(data), stored].into(),
                [Digest::of(data)].into(),
                true,
            ),
        );
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

        // Every missing layer went by: the next is not even read.
        let mut skipped = sink.store(&mut &b"more"[..]).unwrap();
        assert!(matches!(skipped, Taken::Skipped));
        sink.stored(&mut skipped, stored, 4);
        assert!(rx.try_recv().is_err(), "a skipped layer is not uploaded");

        drop(rx);
        assert!(sink.store(&mut &data[..]).is_err());
    }

    /// A streamed upload that breaks does not stop the reading: the layer's spooled copy is
    /// handed over with it, and the uploader sends that copy (here to a dead server, so the final
    /// error names the server after the retries).
    #[test]
    fn a_streamed_upload_that_breaks_is_sent_again_from_its_spooled_copy() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (mut sink, mut rx) = sink(
            &rt,
            Expected::new([d("layer")].into(), [d("layer")].into(), true),
        );
        // More than the chunks buffered between reader and upload, so the reader waits on it.
        let data = vec![7u8; (STREAM_DEPTH + 4) * UPLOAD_CHUNK];
        let mut handle = sink.store(&mut &data[..]).unwrap();
        let digest = Digest::of(&data);
        sink.stored(&mut handle, digest, data.len() as u64);
        let Ok(ready) = rx.try_recv() else {
            panic!("expected the streamed layer");
        };
        let Ready::Streamed { path, .. } = &ready else {
            panic!("expected a streamed layer, got {ready:?}");
        };
        let path = path.clone();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            data,
            "the spooled copy is whole"
        );
        let client = sink.client.clone();
        let err = rt.block_on(ready.upload(&client)).unwrap_err().to_string();
        assert!(
            err.contains("cannot reach the cache server") && err.contains("after 2 attempts"),
            "{err}"
        );
        assert!(!path.exists(), "the copy is removed after the last attempt");
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
