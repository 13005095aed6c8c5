//! Blob upload sessions shared by every replica on one index and blob store: `POST
//! .../blobs/uploads/` opens one, each `PATCH` appends a chunk, `GET` reports the offset, `PUT
//! ?digest=` stores the blob, `DELETE` cancels, and each of these may reach any replica.
//!
//! - The session is a row of the index ([`UploadSession`]): repository, bytes received, the list
//!   of chunks, the SHA-256 state after the last chunk, when it was last active.
//! - Each chunk is a staging object of the blob store (`uploads/<session>/<chunk>`, see
//!   [`crate::store::blobs`]), written by the replica that received the `PATCH` and hashed as it
//!   arrives, resuming the session's SHA-256 state ([`ChunkHash`]); only once the object is
//!   stored is the chunk appended to the row, and only if the row still holds the offset the
//!   chunk continues (optimistic: the loser of two concurrent `PATCH`es gets 416 and its object
//!   is deleted). An acknowledged chunk is so in the store and the index: the replica that took
//!   it may die, the client continues on another.
//! - `PUT` claims the row (one claimer wins), then stores the blob through the ordinary
//!   verify-then-commit path. A session of one chunk (how `docker push` sends a layer) is not
//!   read again: its digest is the saved hash state's, and the store moves the staging object
//!   into place ([`crate::store::blobs::BlobStore::adopt_staged`]: a rename, or a server-side
//!   copy). Otherwise the chunks (and the `PUT`'s own body) are copied into a new upload, hashed
//!   on the way. The staging objects go, then the row.
//! - [`run_expiry`] (every replica runs it) deletes rows idle longer than `--upload-timeout`;
//!   the database hands each expired row to one replica, which deletes its staging objects.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercache_shared::Digest;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

use crate::error::ServerError;
use crate::store::Store;
use crate::store::blobs::{BlobError, BlobWriter, StagedWrite};
pub use crate::store::meta::{StagedChunk, UploadSession};

/// Default for how long a session may sit idle before it is dropped.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// SHA-256 over a session's bytes, saved in the index after each chunk and resumed by the
/// replica that receives the next one (the `sha2` crate's serializable state: the chaining
/// value, the block count and the partial block).
#[derive(Clone, Default)]
pub struct ChunkHash(Sha256);

impl ChunkHash {
    /// The state to save.
    pub fn save(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    /// The state `saved` by [`ChunkHash::save`]; an error when it is not one (a damaged row).
    pub fn resume(saved: &[u8]) -> Result<ChunkHash, ServerError> {
        let bad = || {
            ServerError::Db(crate::store::meta::MetaError::Corrupt(format!(
                "an upload session's hash state ({} bytes) is not a SHA-256 state",
                saved.len()
            )))
        };
        let state = SerializedState::<Sha256>::try_from(saved).map_err(|_| bad())?;
        Sha256::deserialize(&state)
            .map(ChunkHash)
            .map_err(|_| bad())
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything hashed so far.
    pub fn digest(&self) -> Digest {
        let out = self.0.clone().finalize();
        Digest::from_hex(&hex::encode(out)).expect("64 hex digits are a digest")
    }
}

/// A chunk being received: its staging object and the session's hash, both fed every byte.
struct ChunkState {
    /// The staging object; `None` once taken by [`ChunkWriter::finish`].
    staged: Option<Box<dyn StagedWrite>>,
    /// The session's hash, resumed before the chunk.
    hash: ChunkHash,
    /// Bytes of this chunk.
    written: u64,
}

/// Receives one chunk ([`crate::receive::receive`] takes a [`BlobWriter`]): clones share the
/// chunk, so the handler keeps one to finish it after `receive` is done writing.
#[derive(Clone)]
pub struct ChunkWriter(Arc<Mutex<ChunkState>>);

impl ChunkWriter {
    /// A chunk written to `staged`, continuing `hash`.
    pub fn new(staged: Box<dyn StagedWrite>, hash: ChunkHash) -> ChunkWriter {
        ChunkWriter(Arc::new(Mutex::new(ChunkState {
            staged: Some(staged),
            hash,
            written: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChunkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the staging object (blocking: the bucket may be remote); the chunk's size and the
    /// hash after it.
    pub fn finish(&self) -> io::Result<(u64, ChunkHash)> {
        let mut s = self.lock();
        let staged = s
            .staged
            .take()
            .ok_or_else(|| io::Error::other("the chunk was already finished"))?;
        let size = staged.finish()?;
        Ok((size, s.hash.clone()))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.lock();
        let staged = s
            .staged
            .as_mut()
            .ok_or_else(|| io::Error::other("the chunk was already finished"))?;
        let n = staged.write(buf)?;
        s.hash.update(&buf[..n]);
        s.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.lock().staged.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter for ChunkWriter {
    fn written(&self) -> u64 {
        self.lock().written
    }

    fn digest(&self) -> Digest {
        self.lock().hash.digest()
    }

    /// A chunk is not a blob: it is finished with [`ChunkWriter::finish`] and appended to its
    /// session. Never called (`receive` only writes).
    fn commit(
        self: Box<Self>,
        expected: &Digest,
    ) -> Result<crate::store::blobs::Committed, BlobError> {
        Err(BlobError::Io {
            action: "committing a chunk of an upload session as blob",
            path: expected.to_string().into(),
            source: io::Error::other("chunks are appended to their session, not committed"),
        })
    }
}

/// Deletes the staging objects of `session`, logging a failure (idle expiry cannot retry a
/// session whose row is gone; such objects stay until removed by hand).
pub fn delete_staged(store: &Store, session: &str) {
    if let Err(e) = store.blobs.delete_staged_session(session) {
        tracing::warn!(session, error = %e, "deleting the chunks of an upload session failed");
    }
}

/// One expiry pass at `now` (seconds): deletes the sessions idle for `timeout` or longer with
/// their staging objects; how many. Safe on several replicas at once: the database gives each
/// expired row to one of them.
pub fn expire(store: &Store, timeout: Duration, now: u64) -> Result<usize, ServerError> {
    let cutoff = now.saturating_sub(timeout.as_secs());
    let ids = store.db.expire_uploads(cutoff)?;
    for id in &ids {
        delete_staged(store, id);
    }
    Ok(ids.len())
}

/// Drops idle sessions every minute (or every `timeout`, if shorter) until the server stops.
pub async fn run_expiry(store: Arc<Store>, timeout: Duration) {
    let period = timeout
        .min(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = crate::store::sqlite::now();
        match store.blocking(move |s| expire(s, timeout, now)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                "dropped blob upload sessions idle for {}s",
                timeout.as_secs()
            ),
            Err(e) => tracing::warn!(error = %e, "expiring blob upload sessions failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_resumed_from_its_saved_state_continues_it() {
        let mut h = ChunkHash::default();
        h.update(b"hello ");
        let mut resumed = ChunkHash::resume(&h.save()).unwrap();
        resumed.update(b"world");
        assert_eq!(resumed.digest(), Digest::of(b"hello world"));
        assert_eq!(ChunkHash::default().digest(), Digest::of(b""));
        assert!(ChunkHash::resume(b"short").is_err());
    }

    #[test]
    fn idle_sessions_expire_with_their_staging_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .db
            .open_upload("s1", "a/b", &ChunkHash::default().save(), 100)
            .unwrap();
        let mut w = store.blobs.stage("s1/c1").unwrap();
        w.write_all(b"partial").unwrap();
        assert_eq!(w.finish().unwrap(), 7);
        let timeout = Duration::from_secs(60);
        assert_eq!(expire(&store, timeout, 159).unwrap(), 0);
        assert!(store.blobs.open_staged("s1/c1").unwrap().is_some());
        assert_eq!(expire(&store, timeout, 161).unwrap(), 1);
        assert!(store.db.upload_session("s1").unwrap().is_none());
        assert!(store.blobs.open_staged("s1/c1").unwrap().is_none());
        assert_eq!(expire(&store, timeout, 161).unwrap(), 0, "expired once");
    }
}
