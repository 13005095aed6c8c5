//! Taking uploads in: the size-limited request body reader shared by all PUTs, the tarball ingest
//! of `PUT /v1/images/{ns}/{key}`, and the commit of an entry from already uploaded blobs.
//!
//! Ingest streams the body through `archive::read_archive` on a blocking thread; each layer goes
//! to a temp file as it streams by. Only once the whole archive verified are configs written, layer
//! files renamed into place (or dropped when already stored), and the entry committed in one
//! transaction. Any failure before that drops every temp file and commits nothing.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, HttpBody};
use futures::StreamExt;
use layercache_shared::api::{CommitImage, CommitRequest, PutReport};
use layercache_shared::archive::{self, ArchiveError, BlobSink, Limits};
use layercache_shared::{CacheKey, Digest, Namespace, parents};
use tokio::io::AsyncBufRead;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::auth::Access;
use crate::error::{ServerError, is_storage_full};
use crate::store::Store;
use crate::store::blobs::{BlobStore, BlobWriter};
use crate::store::pins::PinGuard;
use crate::store::quota::Quota;
use crate::store::sqlite::{NewEntry, NewImage, counter};

/// Copy buffer for ingest and blob uploads: big reads keep syscalls and hashing calls few.
const COPY_BUFFER: usize = 256 << 10;

/// Counts a request body's bytes as they are read, against the upload limit.
#[derive(Debug)]
pub struct UploadMeter {
    /// Body bytes read so far.
    received: AtomicU64,
    /// `max_upload_bytes`.
    limit: u64,
    /// Set when the body outgrew its space reservation and no more could be had (see
    /// [`crate::store::quota`]): the error to answer.
    no_room: Mutex<Option<ServerError>>,
}

impl UploadMeter {
    /// Body bytes read so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Whether the body went over the limit (the read was then failed).
    pub fn exceeded(&self) -> bool {
        self.received() > self.limit
    }
}

/// A request body as an async reader that fails once more than `limit` bytes arrived.
///
/// Space under the quota is reserved for the body's declared length (`Content-Length`) before any
/// of it is read, a [`ServerError::QuotaFull`] (507) when it cannot fit; the reservation grows as
/// bytes arrive past it and is released when the reader is dropped (the upload stored or failed).
pub fn upload_reader(
    body: Body,
    limit: u64,
    quota: &Arc<Quota>,
) -> Result<(impl AsyncBufRead + Send + Unpin + 'static, Arc<UploadMeter>), ServerError> {
    let declared = HttpBody::size_hint(&body).exact().unwrap_or(0);
    let mut reservation = quota.reserve(declared.min(limit))?;
    let meter = Arc::new(UploadMeter {
        received: AtomicU64::new(0),
        limit,
        no_room: Mutex::new(None),
    });
    let m = Arc::clone(&meter);
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(io::Error::other)?;
        let total =
            m.received.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > m.limit {
            return Err(io::Error::other(format!(
                "upload exceeds the server's limit of {} bytes",
                m.limit
            )));
        }
        if let Err(e) = reservation.grow_to(total) {
            let text = e.to_string();
            *m.no_room.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(io::Error::other(text));
        }
        Ok(chunk)
    });
    Ok((StreamReader::new(stream), meter))
}

/// Turns the outcome of an upload into the error to answer: a body over the limit is a 413
/// whatever the reading code made of it.
pub fn upload_error(e: ServerError, meter: &UploadMeter) -> ServerError {
    if meter.exceeded() {
        return ServerError::TooLarge { limit: meter.limit };
    }
    match meter
        .no_room
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        Some(no_room) => no_room,
        None => e,
    }
}

/// Writes `reader` to `writer` with a large buffer, returning the bytes copied.
pub fn copy_large(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Writes each layer of a streaming archive to an uncommitted temp blob.
struct TempSink {
    /// Where the temp files go.
    blobs: Arc<dyn BlobStore>,
}

impl BlobSink for TempSink {
    type Handle = Box<dyn BlobWriter>;

    /// Writes the layer, then parks the writer: until the archive is verified, every layer waits
    /// as a closed temp file, so memory and open files stay at one layer in flight.
    fn store(&mut self, content: &mut dyn Read) -> io::Result<Self::Handle> {
        let mut w = self.blobs.begin_write()?;
        copy_large(content, &mut w)?;
        w.park()?;
        Ok(w)
    }
}

/// What an ingest or commit changed, beyond the report the client gets.
struct Outcome {
    report: PutReport,
    /// Bytes of blobs the request carried that were already stored.
    deduplicated: u64,
}

/// `PUT /v1/images/{ns}/{key}`: ingests a `docker save` tarball body and commits it as the entry.
pub async fn ingest_tarball(
    store: Arc<Store>,
    namespace: Namespace,
    key: CacheKey,
    prefixes: Vec<Digest>,
    body: Body,
    limit: u64,
) -> Result<PutReport, ServerError> {
    let (reader, meter) = upload_reader(body, limit, &store.quota)?;
    let bridge = SyncIoBridge::new(reader);
    // Counters are updated on the blocking thread itself: it runs to the end even when the client
    // disconnects and this handler's future is dropped.
    store
        .bulk(move |s| {
            let result = ingest_blocking(s, bridge, namespace, key, prefixes, limit)
                .map_err(|e| upload_error(e, &meter));
            let received = meter.received();
            let (dedup, failed) = match &result {
                Ok(o) => (o.deduplicated, 0),
                Err(_) => (0, 1),
            };
            s.db.add_counters(&[
                (counter::BYTES_RECEIVED, received),
                (counter::BYTES_DEDUPLICATED, dedup),
                (counter::UPLOADS_FAILED, failed),
            ])?;
            if let Err(e) = &result {
                s.db.count_upload_failure(e.status_and_code().1)?;
            }
            let mut report = result?.report;
            report.bytes_received = received;
            Ok(report)
        })
        .await
}

/// An archive error, as 507 when the disk filled up under it, and as 413 when the layers inflate
/// past the upload limit.
fn archive_error(e: ArchiveError) -> ServerError {
    if let ArchiveError::ContentTooLarge { limit } = e {
        return ServerError::TooLarge { limit };
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && is_storage_full(io)
        {
            return ServerError::StorageFull {
                action: "storing an uploaded layer".into(),
                source: io::Error::new(io.kind(), io.to_string()),
            };
        }
        cur = err.source();
    }
    ServerError::BadArchive {
        source: Box::new(e),
    }
}

fn ingest_blocking(
    store: &Store,
    reader: impl Read,
    namespace: Namespace,
    key: CacheKey,
    prefixes: Vec<Digest>,
    max_upload_bytes: u64,
) -> Result<Outcome, ServerError> {
    let mut sink = TempSink {
        blobs: Arc::clone(&store.blobs),
    };
    // Layers count inflated: a gzip layer that expands past the upload limit is a 413 too.
    let limits = Limits {
        max_content_bytes: max_upload_bytes,
        ..Limits::default()
    };
    let parsed = archive::read_archive(reader, &mut sink, &limits).map_err(archive_error)?;

    let layer_sizes: HashMap<Digest, u64> =
        parsed.layers.iter().map(|(d, b)| (*d, b.size)).collect();
    let mut images = Vec::with_capacity(parsed.images.len());
    for img in &parsed.images {
        let config = parsed.configs.get(&img.id).ok_or_else(|| {
            ServerError::Internal(format!(
                "the archive reader returned no config for image {}",
                img.id
            ))
        })?;
        let mut layers = Vec::with_capacity(img.diff_ids.len());
        for d in &img.diff_ids {
            let size = layer_sizes.get(d).copied().ok_or_else(|| {
                ServerError::Internal(format!(
                    "the archive reader returned no layer {d} of image {}",
                    img.id
                ))
            })?;
            layers.push((*d, size));
        }
        images.push(NewImage {
            id: img.id,
            parent: img.parent,
            tags: img.tags.clone(),
            config_size: config.len() as u64,
            layers,
        });
    }

    let mut layers_new = 0;
    let mut bytes_new = 0;
    let mut deduplicated = 0;
    // Pinned before any file is renamed or found already stored, until the entry references them:
    // the collector must not delete a blob this commit counts on.
    let _pins = store
        .pins
        .pin(parsed.configs.keys().chain(parsed.layers.keys()).copied());
    for (id, config) in &parsed.configs {
        let mut w = store
            .blobs
            .begin_write()
            .map_err(|e| ServerError::io("creating temp file in", &store.tmp_dir, e))?;
        w.write_all(config)
            .map_err(|e| ServerError::io("writing config to", &store.tmp_dir, e))?;
        let c = w.commit(id)?;
        if c.newly_stored {
            bytes_new += c.size;
        } else {
            deduplicated += c.size;
        }
    }
    let layers_total = parsed.layers.len() as u64;
    for (diff_id, blob) in parsed.layers {
        let c = blob.handle.commit(&diff_id)?;
        if c.newly_stored {
            layers_new += 1;
            bytes_new += c.size;
        } else {
            deduplicated += c.size;
        }
    }

    let entry = NewEntry {
        namespace,
        key,
        images,
        prefixes,
    };
    store.db.commit_entry(&entry)?;
    store.gc_wake.notify_one();
    tracing::info!(
        namespace = %entry.namespace, key = %entry.key, images = entry.images.len(),
        layers_total, layers_new, bytes_new, "entry committed from tarball"
    );
    Ok(Outcome {
        report: PutReport {
            layers_total,
            layers_new,
            bytes_received: 0,
            bytes_new,
        },
        deduplicated,
    })
}

/// A blob upload that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobUpload {
    /// What the content hashed to (the digest asked for, when one was).
    pub digest: Digest,
    /// Bytes of the blob.
    pub size: u64,
    /// False when the blob was already stored (this copy was deduplicated).
    pub new: bool,
}

/// `PUT /v1/blobs/{digest}` (`expected` is the digest, refused on a mismatch) and `POST /v1/blobs`
/// (`expected` is `None`: the content is stored under whatever it hashes to, for a client that
/// uploads while it reads and learns the digest only at the end).
pub async fn upload_blob(
    store: Arc<Store>,
    expected: Option<Digest>,
    body: Body,
    limit: u64,
) -> Result<BlobUpload, ServerError> {
    // Held from before the file is found or renamed until its row is (re)inserted. An upload
    // without a digest pins once its content is hashed, still before the rename.
    // Taken on a blocking thread: with replicas, a pin writes a lease to the shared index.
    let pin = match expected {
        Some(d) => Some(store.blocking(move |s| s.pins.pin([d])).await?),
        None => None,
    };
    // The body is read on the runtime; only the writes take a blocking thread, and the temp file
    // is opened with the first (see `receive`).
    let got = crate::receive::receive(&store, body, None, limit).await;
    // Held until the blob's row is in: until then the collector counts it as reserved.
    let reservation = got.reservation;
    let stored = store
        .blocking(move |s| {
            let result = got.result.and_then(|()| {
                let w = crate::receive::writer_or_new(s, got.writer)?;
                finish_blob(s, w, expected, pin)
            });
            count_upload(s, &result, got.received)?;
            result
        })
        .await;
    drop(reservation);
    stored
}

/// Adds a blob upload's outcome to the counters: bytes received, bytes already stored, failures
/// by error code.
pub fn count_upload(
    store: &Store,
    result: &Result<BlobUpload, ServerError>,
    received: u64,
) -> Result<(), ServerError> {
    let (dedup, failed) = match result {
        Ok(up) if !up.new => (up.size, 0),
        Ok(_) => (0, 0),
        Err(_) => (0, 1),
    };
    store.db.add_counters(&[
        (counter::BYTES_RECEIVED, received),
        (counter::BYTES_DEDUPLICATED, dedup),
        (counter::UPLOADS_FAILED, failed),
    ])?;
    if let Err(e) = result {
        store.db.count_upload_failure(e.status_and_code().1)?;
    }
    Ok(())
}

/// Appends all of `body` to the upload `w`.
pub fn append(store: &Store, body: &mut dyn BufRead, w: &mut dyn Write) -> Result<(), ServerError> {
    loop {
        let buf = body
            .fill_buf()
            .map_err(|source| ServerError::UploadBroken { source })?;
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.len();
        w.write_all(buf)
            .map_err(|e| ServerError::io("writing upload to", &store.tmp_dir, e))?;
        body.consume(n);
    }
}

/// Stores the content of upload `w` as `expected` (refused on a mismatch), or under its own
/// digest when `None`, and records its row. `pin` is the caller's pin on `expected`, taken before
/// anything looked at the blob; without one, the digest is pinned here, still before the rename.
pub fn finish_blob(
    store: &Store,
    w: Box<dyn BlobWriter>,
    expected: Option<Digest>,
    pin: Option<PinGuard>,
) -> Result<BlobUpload, ServerError> {
    let digest = expected.unwrap_or_else(|| w.digest());
    let pin = match pin {
        Some(pin) => pin,
        None => store.pins.pin([digest])?,
    };
    let c = w.commit(&digest)?;
    let row_new = store.db.insert_blob(&digest, c.size)?;
    drop(pin);
    store.gc_wake.notify_one();
    Ok(BlobUpload {
        digest,
        size: c.size,
        new: c.newly_stored || row_new,
    })
}

/// Reads config blob `id` and returns its `rootfs.diff_ids`, within the tarball reader's
/// [`Limits`] (size, values, layers): a config is the same document whichever way it arrives.
fn config_layers(store: &Store, id: &Digest) -> Result<Vec<Digest>, ServerError> {
    let limits = Limits::default();
    let bad = |reason: String| ServerError::BadConfig {
        digest: *id,
        reason,
    };
    let file = store
        .blobs
        .open(id)
        .map_err(|e| ServerError::io("opening config blob", id.to_string(), e))?
        .ok_or_else(|| ServerError::MissingBlobs { missing: vec![*id] })?;
    if file.size() > limits.max_json_bytes {
        return Err(bad(format!(
            "it is larger than {} bytes",
            limits.max_json_bytes
        )));
    }
    let json = file
        .chunk(0, file.size() as usize)
        .map_err(|e| ServerError::io("reading config blob", id.to_string(), e))?;
    archive::config_diff_ids("config", &json, &limits).map_err(|e| bad(e.to_string()))
}

/// Orders images so that each comes after its parent when the parent is among them, in linear
/// time (see [`layercache_shared::parents`]).
pub fn parents_first(images: Vec<CommitImage>) -> Result<Vec<CommitImage>, ServerError> {
    let ids: HashSet<Digest> = images.iter().map(|i| i.id).collect();
    if ids.len() != images.len() {
        return Err(ServerError::bad_request(
            "an image is listed twice in the commit request: list each image once",
        ));
    }
    let links: Vec<(Digest, Option<Digest>)> = images.iter().map(|i| (i.id, i.parent)).collect();
    let order = parents::parents_first(&parents::parent_indexes(&links)).map_err(|_| {
        ServerError::bad_request("the images' parent links form a cycle: fix the `parent` fields")
    })?;
    let mut slots: Vec<Option<CommitImage>> = images.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// `PUT /v1/images/{ns}/{key}/manifest`: commits an entry from blobs already on the server.
///
/// The commit may name only blobs `access` may see (its namespaces' content, or what it uploaded
/// itself, see [`Access::visible_blobs`]); others count as missing, exactly as if absent.
pub fn commit_blocking(
    store: &Store,
    access: &Access,
    namespace: Namespace,
    key: CacheKey,
    request: CommitRequest,
) -> Result<PutReport, ServerError> {
    if request.images.is_empty() {
        return Err(ServerError::bad_request(
            "the commit request lists no images: name at least one",
        ));
    }
    let images = parents_first(request.images)?;
    let config_ids: Vec<Digest> = images.iter().map(|i| i.id).collect();
    // Pins before the rows are looked up: a blob found here stays until the entry references it.
    let mut pins = store.pins.pin(config_ids.iter().copied())?;
    let visible = access.visible_blobs(&store.db, &config_ids)?;
    let mut config_sizes = store.db.blob_sizes(&config_ids)?;
    config_sizes.retain(|d, _| visible.contains(d));
    let mut missing: Vec<Digest> = config_ids
        .iter()
        .filter(|d| !config_sizes.contains_key(d))
        .copied()
        .collect();
    let mut diff_ids_of = HashMap::new();
    for img in &images {
        if config_sizes.contains_key(&img.id) {
            diff_ids_of.insert(img.id, config_layers(store, &img.id)?);
        }
    }
    let mut all_layers: Vec<Digest> = Vec::new();
    let mut seen = HashSet::new();
    for d in diff_ids_of.values().flatten() {
        if seen.insert(*d) {
            all_layers.push(*d);
        }
    }
    pins.extend(all_layers.iter().copied())?;
    let visible = access.visible_blobs(&store.db, &all_layers)?;
    let mut layer_sizes = store.db.blob_sizes(&all_layers)?;
    layer_sizes.retain(|d, _| visible.contains(d));
    missing.extend(all_layers.iter().filter(|d| !layer_sizes.contains_key(d)));
    if !missing.is_empty() {
        return Err(ServerError::MissingBlobs { missing });
    }
    let ids: HashSet<Digest> = config_ids.iter().copied().collect();
    for img in &images {
        if let Some(p) = img.parent
            && !ids.contains(&p)
            && !store.db.image_known(&p)?
        {
            return Err(ServerError::bad_request(format!(
                "image {} names parent {p}, which is neither in the request nor stored: \
                 include the parent image",
                img.id
            )));
        }
    }
    let new_images = images
        .into_iter()
        .map(|img| {
            let layers = diff_ids_of
                .remove(&img.id)
                .unwrap_or_default()
                .into_iter()
                .map(|d| (d, layer_sizes.get(&d).copied().unwrap_or(0)))
                .collect();
            NewImage {
                id: img.id,
                parent: img.parent,
                tags: img.tags,
                config_size: config_sizes.get(&img.id).copied().unwrap_or(0),
                layers,
            }
        })
        .collect();
    let entry = NewEntry {
        namespace,
        key,
        images: new_images,
        prefixes: request.prefixes,
    };
    store.db.commit_entry(&entry)?;
    drop(pins);
    store.gc_wake.notify_one();
    Ok(PutReport {
        layers_total: all_layers.len() as u64,
        layers_new: 0,
        bytes_received: 0,
        bytes_new: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, parent: Option<&str>) -> CommitImage {
        CommitImage {
            id: Digest::of(id.as_bytes()),
            parent: parent.map(|p| Digest::of(p.as_bytes())),
            tags: vec![],
        }
    }

    #[test]
    fn parents_come_first_and_outside_parents_are_ignored() {
        let out = parents_first(vec![
            img("c", Some("b")),
            img("b", Some("a")),
            img("a", Some("elsewhere")),
        ])
        .unwrap();
        let order: Vec<Digest> = out.iter().map(|i| i.id).collect();
        assert_eq!(
            order,
            vec![Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")]
        );
    }

    #[test]
    fn parent_cycles_and_duplicates_are_refused() {
        assert!(parents_first(vec![img("a", Some("b")), img("b", Some("a"))]).is_err());
        assert!(parents_first(vec![img("a", None), img("a", None)]).is_err());
    }

    #[test]
    fn copy_large_copies_everything() {
        let data = vec![7u8; COPY_BUFFER * 2 + 3];
        let mut out = Vec::new();
        assert_eq!(
            copy_large(&mut &data[..], &mut out).unwrap(),
            data.len() as u64
        );
        assert_eq!(out, data);
    }
}
