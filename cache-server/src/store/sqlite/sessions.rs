//! Registry upload sessions as rows (`upload_sessions`), so that every replica on one index sees
//! every session: the one that receives a chunk appends it, any other reports the offset or
//! finishes the upload (see `crate::registry::uploads`).
//!
//! A row holds where the upload stands (`received` bytes), the staging objects that hold those
//! bytes in order (`chunks`, see [`StagedChunk`]), the SHA-256 state after the last chunk (so the
//! digest of the whole upload is known without reading it back) and its times. Appends are
//! optimistic: a chunk is recorded only if the row still has the offset the chunk was sent for,
//! so two replicas appending to one session at once cannot both succeed at the same offset.
//! Finishing or cancelling first *claims* the row (`closing = 1`): from then on nothing appends,
//! and the claimer deletes the staging objects, then the row. A claimer that dies leaves the row
//! to idle expiry, which deletes it with its staging objects.

use rusqlite::{OptionalExtension, Row, params};

use super::{Db, sql_u64, u64_at};

/// One chunk of an upload: a staging object of the blob store and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedChunk {
    /// The staging object's name, `<session id>/<chunk uuid>` (unique per write, so two
    /// replicas racing for one offset never write the same object).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An upload session as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// The id in the session's URL.
    pub id: String,
    /// The repository the blob goes into.
    pub repo: String,
    /// Bytes received so far (the sum of the chunks' sizes).
    pub received: u64,
    /// The chunks, in upload order.
    pub chunks: Vec<StagedChunk>,
    /// The serialized SHA-256 state after the last chunk.
    pub hash_state: Vec<u8>,
    /// When a request last touched the session (seconds since the epoch).
    pub last_active: u64,
    /// Whether a `PUT` or `DELETE` claimed it: it takes no more chunks.
    pub closing: bool,
}

/// The stored form of the chunk list: `name:size` separated by spaces (names are uuids).
pub(crate) fn encode_chunk(c: &StagedChunk) -> String {
    format!("{}:{}", c.name, c.size)
}

/// Reads the chunk list back; `None` when it is not in the stored form.
pub(crate) fn decode_chunks(text: &str) -> Option<Vec<StagedChunk>> {
    text.split_whitespace()
        .map(|part| {
            let (name, size) = part.rsplit_once(':')?;
            Some(StagedChunk {
                name: name.to_string(),
                size: size.parse().ok()?,
            })
        })
        .collect()
}

/// The columns [`session_row`] reads, in order.
pub(crate) const SESSION_COLUMNS: &str =
    "id, repo, received, chunks, hash_state, last_active, closing";

/// The SQL that appends a chunk (`?1` id, `?2` expected offset, `?3` encoded chunk, `?4` size,
/// `?5` hash state, `?6` now); the same text in both dialects but for the placeholders.
pub(crate) const APPEND_SQL: &str = "UPDATE upload_sessions
     SET received = received + ?4,
         chunks = CASE WHEN chunks = '' THEN ?3 ELSE chunks || ' ' || ?3 END,
         hash_state = ?5, last_active = ?6
     WHERE id = ?1 AND received = ?2 AND closing = 0";

fn session_row(r: &Row<'_>) -> rusqlite::Result<UploadSession> {
    let chunks: String = r.get(3)?;
    Ok(UploadSession {
        id: r.get(0)?,
        repo: r.get(1)?,
        received: u64_at(r, 2)?,
        chunks: decode_chunks(&chunks).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("upload chunk list `{chunks}`").into(),
            )
        })?,
        hash_state: r.get(4)?,
        last_active: u64_at(r, 5)?,
        closing: r.get::<_, i64>(6)? != 0,
    })
}

impl Db {
    /// Records a new, empty session `id` for `repo` whose hash state is `hash_state`.
    pub fn open_upload(
        &self,
        id: &str,
        repo: &str,
        hash_state: &[u8],
        now: u64,
    ) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT INTO upload_sessions (id, repo, received, chunks, hash_state, created,
                                          last_active, closing)
             VALUES (?1, ?2, 0, '', ?3, ?4, ?4, 0)",
            params![id, repo, hash_state, sql_u64(now)],
        )?;
        Ok(())
    }

    /// Session `id`, claimed or not; `None` when there is none.
    pub fn upload_session(&self, id: &str) -> rusqlite::Result<Option<UploadSession>> {
        self.conn()
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE id = ?1"
            ))?
            .query_row([id], session_row)
            .optional()
    }

    /// Appends `chunk` to session `id` if the session still holds exactly `offset` bytes and is
    /// not claimed, with `hash_state` the state after it. False otherwise: another request
    /// appended first (or the session is gone or closing), and `chunk` is not part of it.
    pub fn append_upload_chunk(
        &self,
        id: &str,
        offset: u64,
        chunk: &StagedChunk,
        hash_state: &[u8],
        now: u64,
    ) -> rusqlite::Result<bool> {
        Ok(self.conn().execute(
            APPEND_SQL,
            params![
                id,
                sql_u64(offset),
                encode_chunk(chunk),
                sql_u64(chunk.size),
                hash_state,
                sql_u64(now)
            ],
        )? == 1)
    }

    /// Marks session `id` of `repo` active at `now`; its offset, or `None` when it is not open
    /// (absent, another repository's, or claimed).
    pub fn touch_upload(&self, id: &str, repo: &str, now: u64) -> rusqlite::Result<Option<u64>> {
        self.conn()
            .prepare_cached(
                "UPDATE upload_sessions SET last_active = ?3
                 WHERE id = ?1 AND repo = ?2 AND closing = 0 RETURNING received",
            )?
            .query_row(params![id, repo, sql_u64(now)], |r| u64_at(r, 0))
            .optional()
    }

    /// Claims open session `id` of `repo` for finishing or cancelling: afterwards no chunk is
    /// appended and no other claim succeeds. The session as claimed; `None` when it is not open.
    pub fn claim_upload(
        &self,
        id: &str,
        repo: &str,
        now: u64,
    ) -> rusqlite::Result<Option<UploadSession>> {
        self.conn()
            .prepare_cached(&format!(
                "UPDATE upload_sessions SET closing = 1, last_active = ?3
                 WHERE id = ?1 AND repo = ?2 AND closing = 0 RETURNING {SESSION_COLUMNS}"
            ))?
            .query_row(params![id, repo, sql_u64(now)], session_row)
            .optional()
    }

    /// Deletes session `id` (its claimer is done with the staging objects). False when absent.
    pub fn drop_upload(&self, id: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM upload_sessions WHERE id = ?1", [id])?
            == 1)
    }

    /// Deletes the sessions last active before `cutoff` and returns their ids: the caller
    /// deletes their staging objects. Of two replicas expiring at once, each session goes to
    /// exactly one.
    pub fn expire_uploads(&self, cutoff: u64) -> rusqlite::Result<Vec<String>> {
        self.conn()
            .prepare_cached("DELETE FROM upload_sessions WHERE last_active < ?1 RETURNING id")?
            .query_map([sql_u64(cutoff)], |r| r.get(0))?
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip() {
        let chunks = vec![
            StagedChunk {
                name: "s/a".into(),
                size: 3,
            },
            StagedChunk {
                name: "s/b".into(),
                size: 0,
            },
        ];
        let text = chunks
            .iter()
            .map(encode_chunk)
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(decode_chunks(&text).unwrap(), chunks);
        assert_eq!(decode_chunks("").unwrap(), vec![]);
        assert!(decode_chunks("nosize").is_none());
    }
}
