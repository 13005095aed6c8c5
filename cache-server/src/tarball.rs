//! Streaming response bodies made of inline bytes and stored blob ranges: a tarball assembled from
//! a [`TarPlan`], or one blob (or a range of it).
//!
//! An async task reads blob files in [`CHUNK`]-sized pieces, each in a short blocking step
//! ([`crate::store::blobs::BlobRead::chunk`]), into a bounded channel that the response body
//! drains; the bound keeps memory per response at a few MiB however slow the client is, and a
//! client that stops reading parks the task, not a thread.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use layercache_shared::Digest;
use layercache_shared::archive::{Piece, TarPlan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::store::Store;
use crate::store::pins::PinGuard;
use crate::store::sqlite::counter;

/// Bytes per chunk read from a blob file and sent as one body frame.
pub const CHUNK: usize = 1 << 20;

/// Chunks buffered between the reading thread and the socket.
const CHANNEL_DEPTH: usize = 4;

/// A run of response bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal bytes (tar headers, JSON metadata, padding).
    Inline(Bytes),
    /// `len` bytes of a stored blob starting at `offset`.
    Blob {
        digest: Digest,
        /// The blob's full size as recorded; a file of another length is corrupt and not served.
        size: u64,
        offset: u64,
        len: u64,
    },
}

/// The segments of a tarball plan, consecutive inline pieces merged into one frame.
pub fn segments_of(plan: &TarPlan) -> Vec<Segment> {
    let mut out = Vec::with_capacity(plan.pieces.len());
    let mut inline = BytesMut::new();
    for piece in &plan.pieces {
        match piece {
            Piece::Inline(b) => inline.extend_from_slice(b),
            Piece::Blob { digest, size } => {
                if !inline.is_empty() {
                    out.push(Segment::Inline(inline.split().freeze()));
                }
                if *size > 0 {
                    out.push(Segment::Blob {
                        digest: *digest,
                        size: *size,
                        offset: 0,
                        len: *size,
                    });
                }
            }
        }
    }
    if !inline.is_empty() {
        out.push(Segment::Inline(inline.freeze()));
    }
    out
}

/// A response body streaming `segments`; the bytes sent are added to `bytes_served` when done.
/// `pins` (the blobs of the segments) are held until the last byte is read, so the collector
/// cannot delete a blob under the transfer.
///
/// A blob that is missing, or whose file is not exactly its recorded size, aborts the body, so the
/// client sees a broken transfer rather than a silently corrupt tarball. Only the size is checked
/// per GET: re-hashing every blob on every restore would cost a full read of each layer before the
/// first byte is sent; content corruption of the same length is found by `layercache-server
/// verify`, and the runner's `docker load` checks layer digests itself.
pub fn stream_segments(store: Arc<Store>, segments: Vec<Segment>, pins: PinGuard) -> Body {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    // An async task, not a blocking thread: a reader that stops reading parks this task on
    // `send`, which costs no thread (a blocking producer held one per slow client).
    tokio::spawn(async move {
        let sent = produce(&store, segments, &tx).await;
        drop(pins);
        let counted = store
            .blocking(move |s| Ok(s.db.add_counter(counter::BYTES_SERVED, sent)?))
            .await;
        if let Err(e) = counted {
            tracing::warn!(error = %e, "counting bytes served failed");
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

/// Sends every segment; returns the bytes handed to the body.
async fn produce(
    store: &Arc<Store>,
    segments: Vec<Segment>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> u64 {
    let mut sent = 0u64;
    for seg in segments {
        match seg {
            Segment::Inline(b) => {
                let n = b.len() as u64;
                if tx.send(Ok(b)).await.is_err() {
                    return sent;
                }
                sent += n;
            }
            Segment::Blob {
                digest,
                size,
                offset,
                len,
            } => match send_blob(store, digest, size, offset, len, tx).await {
                Ok((n, true)) => sent += n,
                Ok((n, false)) => return sent + n,
                Err(e) => {
                    tracing::error!(%digest, error = %e, "streaming a blob failed; aborting the response");
                    let _ = tx.send(Err(e)).await;
                    return sent;
                }
            },
        }
    }
    sent
}

/// Sends `len` bytes of `digest` from `offset`, reading each chunk in a short blocking step.
/// Returns bytes sent and whether the client is still listening.
async fn send_blob(
    store: &Arc<Store>,
    digest: Digest,
    size: u64,
    offset: u64,
    len: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<(u64, bool)> {
    let blobs = Arc::clone(&store.blobs);
    let mut blob = blocking(move || {
        let blob = blobs.open(&digest)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {digest} is not stored"),
            )
        })?;
        let on_disk = blob.size();
        if on_disk != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {digest} is {on_disk} bytes on disk, not the recorded {size}: it is \
                     corrupt (run `layercache-server verify`)"
                ),
            ));
        }
        Ok(blob)
    })
    .await?;
    let mut remaining = len;
    let mut sent = 0;
    while remaining > 0 {
        let n = remaining.min(CHUNK as u64) as usize;
        let at = offset + sent;
        let (b, chunk) = blocking(move || {
            let chunk = blob.chunk(at, n).map_err(|e| {
                io::Error::new(e.kind(), format!("reading blob {digest} at {at}: {e}"))
            });
            Ok((blob, chunk))
        })
        .await?;
        blob = b;
        if tx.send(Ok(chunk?)).await.is_err() {
            return Ok((sent, false));
        }
        sent += n as u64;
        remaining -= n as u64;
    }
    Ok((sent, true))
}

/// Runs `f` on a bulk thread ([`crate::bulk`]); a panic there is an I/O error of the transfer.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    crate::bulk::spawn(f)
        .await
        .map_err(|e| io::Error::other(format!("reading a blob failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_pieces_are_merged_and_empty_blobs_dropped() {
        let d = Digest::of(b"x");
        let plan = TarPlan {
            pieces: vec![
                Piece::Inline(Bytes::from_static(b"ab")),
                Piece::Inline(Bytes::from_static(b"cd")),
                Piece::Blob { digest: d, size: 5 },
                Piece::Blob {
                    digest: Digest::of(b""),
                    size: 0,
                },
                Piece::Inline(Bytes::from_static(b"ef")),
            ],
            total_len: 11,
        };
        assert_eq!(
            segments_of(&plan),
            vec![
                Segment::Inline(Bytes::from_static(b"abcd")),
                Segment::Blob {
                    digest: d,
                    size: 5,
                    offset: 0,
                    len: 5
                },
                Segment::Inline(Bytes::from_static(b"ef")),
            ]
        );
    }
}
