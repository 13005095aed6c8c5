//! Reading a blob upload's body without holding a blocking thread while the client sends it.
//!
//! [`receive`] awaits body frames on the async runtime and hands every [`FLUSH_BYTES`] of them to
//! a short blocking step that hashes and writes them to the upload's temp file. A client that
//! stalls costs a socket and the bytes it sent so far, not a thread: before, each upload held a
//! `spawn_blocking` thread for its whole transfer, and a few hundred stalled uploads took the
//! whole pool, leaving none for auth and lookups.
//!
//! Space under the quota is reserved for the body's declared length (`Content-Length`) before a
//! byte of it is read, and grows as bytes arrive past it: a 507 when it cannot fit (bazel-remote
//! reserves before writing). The caller holds the [`Reservation`] until the blob is stored.
//!
//! A new upload gets its temp file (and the writer's 1 MiB buffer) only with its first write, so
//! an upload that stalls before sending [`FLUSH_BYTES`] holds neither a file nor that buffer.

use std::io::{self, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures::StreamExt;

use crate::error::ServerError;
use crate::store::Store;
use crate::store::blobs::BlobWriter;
use crate::store::quota::Reservation;

/// Bytes gathered before a blocking write: large enough to keep thread hand-offs rare (one per
/// 256 KiB), small enough that a thousand uploads in flight stay within a few hundred MiB.
pub const FLUSH_BYTES: usize = 256 << 10;

/// What [`receive`] did.
pub struct Received {
    /// The writer, holding everything that arrived; `None` when none was given and nothing was
    /// written yet (see [`writer_or_new`]), or when a write step panicked.
    pub writer: Option<Box<dyn BlobWriter>>,
    /// Body bytes read from the client.
    pub received: u64,
    /// Whether the whole body arrived and was written: [`ServerError::UploadBroken`] when the
    /// client disconnected or stalled past the body timeout, [`ServerError::TooLarge`] past
    /// `limit`, an I/O error when the temp file could not be written.
    pub result: Result<(), ServerError>,
    /// The space held for what arrived; keep it until the blob is stored (`None` when even the
    /// declared length could not be reserved: `result` is then that 507).
    pub reservation: Option<Reservation>,
}

/// Appends `body` to `writer` (a new temp file, opened with the first write, when `None`),
/// refusing bodies over `limit` bytes. What arrived before a broken body is written too (a
/// registry client resumes a chunk from where it stopped).
pub async fn receive(
    store: &Arc<Store>,
    body: Body,
    mut writer: Option<Box<dyn BlobWriter>>,
    limit: u64,
) -> Received {
    let declared = axum::body::HttpBody::size_hint(&body).exact().unwrap_or(0);
    let mut reservation = match store.quota.reserve(declared.min(limit)) {
        Ok(r) => r,
        Err(e) => {
            return Received {
                writer,
                received: 0,
                result: Err(e),
                reservation: None,
            };
        }
    };
    let mut stream = body.into_data_stream();
    let mut opened = writer.is_some();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0usize;
    let mut received = 0u64;
    let mut result = Ok(());
    loop {
        let end = match stream.next().await {
            None => true,
            Some(Err(e)) => {
                result = Err(ServerError::UploadBroken {
                    source: io::Error::other(e),
                });
                true
            }
            Some(Ok(frame)) => {
                received += frame.len() as u64;
                if received > limit {
                    result = Err(ServerError::TooLarge { limit });
                    break;
                }
                if let Err(e) = reservation.grow_to(received) {
                    result = Err(e);
                    break;
                }
                pending_len += frame.len();
                pending.push(frame);
                false
            }
        };
        if (end || pending_len >= FLUSH_BYTES) && !pending.is_empty() {
            if opened && writer.is_none() {
                break; // a write step panicked
            }
            opened = true;
            let (w, written) = write_out(store, writer.take(), std::mem::take(&mut pending)).await;
            writer = w;
            pending_len = 0;
            if let Err(e) = written {
                result = Err(e);
                break;
            }
        }
        if end {
            break;
        }
    }
    Received {
        writer,
        received,
        result,
        reservation: Some(reservation),
    }
}

/// `w`, or a new temp file in the store.
pub fn writer_or_new(
    store: &Store,
    w: Option<Box<dyn BlobWriter>>,
) -> Result<Box<dyn BlobWriter>, ServerError> {
    match w {
        Some(w) => Ok(w),
        None => store
            .blobs
            .begin_write()
            .map_err(|e| ServerError::io("creating temp file in", &store.tmp_dir, e)),
    }
}

/// Writes `chunks` to `w` (opened here when `None`) on a bulk thread ([`crate::bulk`]; hashing
/// happens in the writer); gives the writer back.
async fn write_out(
    store: &Arc<Store>,
    w: Option<Box<dyn BlobWriter>>,
    chunks: Vec<Bytes>,
) -> (Option<Box<dyn BlobWriter>>, Result<(), ServerError>) {
    let tmp = store.tmp_dir.clone();
    let st = Arc::clone(store);
    let step = crate::bulk::spawn(move || {
        let mut w = match writer_or_new(&st, w) {
            Ok(w) => w,
            Err(e) => return (None, Err(e)),
        };
        let r = chunks
            .iter()
            .try_for_each(|c| w.write_all(c))
            .map_err(|e| ServerError::io("writing upload to", tmp, e));
        (Some(w), r)
    });
    match step.await {
        Ok(done) => done,
        Err(e) => (None, Err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Arc::new(store))
    }

    fn chunked(parts: Vec<Result<Vec<u8>, io::Error>>) -> Body {
        Body::from_stream(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn a_body_arrives_in_order_across_flushes() {
        let (_dir, store) = store();
        let big = vec![7u8; FLUSH_BYTES + 10];
        let mut want = big.clone();
        want.extend_from_slice(b"tail");
        let body = chunked(vec![Ok(big), Ok(b"tail".to_vec())]);
        let r = receive(&store, body, None, u64::MAX).await;
        r.result.unwrap();
        assert_eq!(r.received, want.len() as u64);
        let w = r.writer.unwrap();
        assert_eq!(w.written(), want.len() as u64);
        assert_eq!(w.digest(), layercache_shared::Digest::of(&want));
    }

    #[tokio::test]
    async fn over_the_limit_is_too_large_and_a_broken_body_keeps_what_came() {
        let (_dir, store) = store();
        let r = receive(&store, chunked(vec![Ok(vec![1; 10])]), None, 9).await;
        assert!(matches!(r.result, Err(ServerError::TooLarge { limit: 9 })));
        assert!(r.writer.is_none(), "nothing written, no temp file");
        let w = Some(store.blobs.begin_write().unwrap());
        let body = chunked(vec![Ok(vec![1; 10]), Err(io::Error::other("gone"))]);
        let r = receive(&store, body, w, u64::MAX).await;
        assert!(matches!(r.result, Err(ServerError::UploadBroken { .. })));
        assert_eq!(r.writer.unwrap().written(), 10);
    }
}
