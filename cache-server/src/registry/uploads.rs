//! Blob upload sessions: `POST .../blobs/uploads/` opens one, `PATCH` appends chunks, `PUT ?digest=`
//! verifies and stores the blob, `DELETE` cancels.
//!
//! A session is a [`BlobWriter`] (temp file, hashed as it is written) kept between requests, so a
//! chunked upload is hashed once, as it arrives, and stored with the same verify-then-rename write
//! as every other blob. Sessions live in this process: one idle for longer than the timeout is
//! dropped by [`Uploads::expire`], which deletes its temp file; a client pausing between chunks
//! for less than that resumes where it stopped (`GET` tells it the offset).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::registry::path::RepoName;
use crate::store::blobs::BlobWriter;

/// Default for how long a session may sit idle before it is dropped.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// One upload in progress.
pub struct Session {
    /// The repository the blob goes into.
    pub repo: RepoName,
    /// The content so far; `None` only while a request is appending on a blocking thread, or
    /// after a failed append that left the temp file in an unknown state.
    pub writer: Option<Box<dyn BlobWriter>>,
    /// When a request last touched the session.
    pub last_active: Instant,
}

impl Session {
    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.written())
    }
}

/// A session shared between the requests that use it; the async mutex serialises them (a chunk
/// must not be appended while another is).
pub type SessionRef = Arc<tokio::sync::Mutex<Session>>;

/// The open sessions by id.
#[derive(Default)]
pub struct Uploads {
    /// A std `Mutex`: held for a map lookup or update only.
    sessions: Mutex<HashMap<String, SessionRef>>,
}

impl Uploads {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionRef>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `repo` writing to `writer`; returns its id.
    pub fn open(&self, repo: RepoName, writer: Box<dyn BlobWriter>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let session = Session {
            repo,
            writer: Some(writer),
            last_active: Instant::now(),
        };
        self.map()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        id
    }

    /// The session `id`, if open.
    pub fn get(&self, id: &str) -> Option<SessionRef> {
        self.map().get(id).cloned()
    }

    /// Closes session `id` (its temp file goes when the last holder drops it).
    pub fn close(&self, id: &str) -> Option<SessionRef> {
        self.map().remove(id)
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops sessions idle for `timeout` or longer at `now`; returns how many. A session a request
    /// is using right now is never idle, so it is skipped.
    pub fn expire(&self, timeout: Duration, now: Instant) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, s| match s.try_lock() {
            Ok(s) => now.saturating_duration_since(s.last_active) < timeout,
            Err(_) => true,
        });
        before - map.len()
    }
}

/// Drops idle sessions every minute (or every `timeout`, if shorter) until the server stops.
pub async fn run_expiry(uploads: Arc<Uploads>, timeout: Duration) {
    let period = timeout
        .min(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let n = uploads.expire(timeout, Instant::now());
        if n > 0 {
            tracing::info!(
                sessions = n,
                "dropped blob upload sessions idle for {}s",
                timeout.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blobs::{BlobStore, FsBlobStore};

    #[test]
    fn idle_sessions_expire_and_their_temp_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let store = FsBlobStore::new(&dir.path().join("blobs"), &tmp).unwrap();
        let uploads = Uploads::default();
        let mut w = store.begin_write().unwrap();
        std::io::Write::write_all(&mut w, b"partial").unwrap();
        let id = uploads.open("a/b".parse().unwrap(), w);
        let start = Instant::now();
        assert_eq!(uploads.expire(Duration::from_secs(60), start), 0);
        let s = uploads.get(&id).unwrap();
        assert_eq!(s.try_lock().unwrap().offset(), 7);
        drop(s);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
        let later = start + Duration::from_secs(61);
        assert_eq!(uploads.expire(Duration::from_secs(60), later), 1);
        assert!(uploads.get(&id).is_none());
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
