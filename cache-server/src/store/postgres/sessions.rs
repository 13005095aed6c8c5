//! Registry upload sessions on PostgreSQL (as SQLite's `sessions`, whose docs describe the rows
//! and the optimistic append).
//!
//! Each call is one statement, atomic on its own, so none takes the write lock: sessions of
//! different uploads never wait for each other or for the collector. A statement retried on a
//! fresh connection (see the module docs of `postgres`) may find its first try applied: an append
//! then sees its own chunk already listed, and reports success rather than a conflict.

use postgres::Row;

use super::{Fail, PgDb, R, sql_u64, u64_at};
use crate::store::meta::MetaResult;
use crate::store::sqlite::{
    APPEND_SQL, SESSION_COLUMNS, StagedChunk, UploadSession, decode_chunks, encode_chunk,
};

fn session_row(r: &Row) -> R<UploadSession> {
    let chunks: String = r.try_get(3)?;
    Ok(UploadSession {
        id: r.try_get(0)?,
        repo: r.try_get(1)?,
        received: u64_at(r, 2)?,
        chunks: decode_chunks(&chunks)
            .ok_or_else(|| Fail::Corrupt(format!("upload chunk list `{chunks}`")))?,
        hash_state: r.try_get(4)?,
        last_active: u64_at(r, 5)?,
        closing: r.try_get::<_, i64>(6)? != 0,
    })
}

impl PgDb {
    pub(crate) fn open_upload(
        &self,
        id: &str,
        repo: &str,
        hash_state: &[u8],
        now: u64,
    ) -> MetaResult<()> {
        self.run(|c| {
            c.execute(
                "INSERT INTO upload_sessions (id, repo, received, chunks, hash_state, created,
                                              last_active, closing)
                 VALUES ($1, $2, 0, '', $3, $4, $4, 0)",
                &[&id, &repo, &hash_state, &sql_u64(now)],
            )?;
            Ok(())
        })
    }

    pub(crate) fn upload_session(&self, id: &str) -> MetaResult<Option<UploadSession>> {
        self.run(|c| {
            c.query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE id = $1"),
                &[&id],
            )?
            .map(|r| session_row(&r))
            .transpose()
        })
    }

    pub(crate) fn append_upload_chunk(
        &self,
        id: &str,
        offset: u64,
        chunk: &StagedChunk,
        hash_state: &[u8],
        now: u64,
    ) -> MetaResult<bool> {
        let sql = APPEND_SQL.replace('?', "$");
        let encoded = encode_chunk(chunk);
        self.run(|c| {
            let n = c.execute(
                sql.as_str(),
                &[
                    &id,
                    &sql_u64(offset),
                    &encoded,
                    &sql_u64(chunk.size),
                    &hash_state,
                    &sql_u64(now),
                ],
            )?;
            if n == 1 {
                return Ok(true);
            }
            // A retry whose first try was applied finds its own chunk listed.
            let listed = c
                .query_opt("SELECT chunks FROM upload_sessions WHERE id = $1", &[&id])?
                .map(|r| r.try_get::<_, String>(0))
                .transpose()?
                .and_then(|text| decode_chunks(&text))
                .is_some_and(|chunks| chunks.iter().any(|c| c.name == chunk.name));
            Ok(listed)
        })
    }

    pub(crate) fn touch_upload(&self, id: &str, repo: &str, now: u64) -> MetaResult<Option<u64>> {
        self.run(|c| {
            c.query_opt(
                "UPDATE upload_sessions SET last_active = $3
                 WHERE id = $1 AND repo = $2 AND closing = 0 RETURNING received",
                &[&id, &repo, &sql_u64(now)],
            )?
            .map(|r| u64_at(&r, 0))
            .transpose()
        })
    }

    pub(crate) fn claim_upload(
        &self,
        id: &str,
        repo: &str,
        now: u64,
    ) -> MetaResult<Option<UploadSession>> {
        self.run(|c| {
            c.query_opt(
                &format!(
                    "UPDATE upload_sessions SET closing = 1, last_active = $3
                     WHERE id = $1 AND repo = $2 AND closing = 0 RETURNING {SESSION_COLUMNS}"
                ),
                &[&id, &repo, &sql_u64(now)],
            )?
            .map(|r| session_row(&r))
            .transpose()
        })
    }

    pub(crate) fn drop_upload(&self, id: &str) -> MetaResult<bool> {
        self.run(|c| Ok(c.execute("DELETE FROM upload_sessions WHERE id = $1", &[&id])? == 1))
    }

    pub(crate) fn expire_uploads(&self, cutoff: u64) -> MetaResult<Vec<String>> {
        self.run(|c| {
            c.query(
                "DELETE FROM upload_sessions WHERE last_active < $1 RETURNING id",
                &[&sql_u64(cutoff)],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }
}
