//! Access tokens in the SQLite index (`tokens` table): create, list, revoke, and the look-up the
//! auth middleware runs on every request. Only the sha256 of a token is stored; see [`crate::auth`]
//! for roles, namespace patterns and the policy.

use std::collections::HashSet;

use layercache_shared::Digest;
use rusqlite::{OptionalExtension, Row, params};

use super::sqlite::{Db, now, sql_u64, u64_at};
use crate::auth::{NamespacePattern, Role};

/// How long `last_used` may lag behind: a token used in bursts costs one write per minute, not
/// one write per request.
pub const LAST_USED_RESOLUTION_SECS: u64 = 60;

/// A token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Row id; `token revoke ID` accepts it.
    pub id: i64,
    /// Optional human name, unique among live tokens; `token revoke NAME` accepts it.
    pub name: Option<String>,
    /// What the token may do.
    pub role: Role,
    /// Which namespaces it may do it in.
    pub namespaces: Vec<NamespacePattern>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch, at [`LAST_USED_RESOLUTION_SECS`] resolution; `None` if never used.
    pub last_used: Option<u64>,
    /// When it was revoked; a revoked token is refused and does not count towards "auth is on".
    pub revoked: Option<u64>,
}

/// Which token `token revoke` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By row id (the argument was all digits).
    Id(i64),
    /// By name.
    Name(String),
}

impl TokenSelector {
    /// An all-digit argument is an id (names may not be all digits), anything else a name.
    pub fn parse(arg: &str) -> TokenSelector {
        match arg.parse::<i64>() {
            Ok(id) => TokenSelector::Id(id),
            Err(_) => TokenSelector::Name(arg.to_string()),
        }
    }
}

/// Whether `last_used` should be rewritten at `now`.
pub fn should_touch(last_used: Option<u64>, now: u64) -> bool {
    last_used.is_none_or(|t| now >= t.saturating_add(LAST_USED_RESOLUTION_SECS))
}

fn record_at(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let conv = |idx, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(e),
        )
    };
    let role: Role = r
        .get::<_, String>(2)?
        .parse()
        .map_err(|e: crate::error::ServerError| conv(2, e.to_string()))?;
    let patterns: Vec<String> =
        serde_json::from_str(&r.get::<_, String>(3)?).map_err(|e| conv(3, e.to_string()))?;
    let namespaces = patterns
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, crate::error::ServerError>>()
        .map_err(|e| conv(3, e.to_string()))?;
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role,
        namespaces,
        created: u64_at(r, 4)?,
        last_used: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
        revoked: r.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
    })
}

const COLUMNS: &str = "id, name, role, namespaces, created, last_used, revoked";

impl Db {
    /// Stores a new token by its hash. Fails with a constraint error when a live token already
    /// has `name`.
    pub fn insert_token(
        &self,
        hash: &str,
        name: Option<&str>,
        role: Role,
        namespaces: &[NamespacePattern],
    ) -> rusqlite::Result<TokenRecord> {
        let patterns: Vec<&str> = namespaces.iter().map(|p| p.as_str()).collect();
        let patterns = serde_json::to_string(&patterns).unwrap_or_else(|_| "[]".into());
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tokens (name, hash, role, namespaces, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, hash, role.as_str(), patterns, sql_u64(now())],
        )?;
        let id = conn.last_insert_rowid();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
            [id],
            record_at,
        )
    }

    /// Every token, revoked ones included, oldest first.
    pub fn list_tokens(&self) -> rusqlite::Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY id"))?;
        stmt.query_map([], record_at)?.collect()
    }

    /// Marks the live token `which` revoked; `None` when there is no such live token.
    pub fn revoke_token(&self, which: &TokenSelector) -> rusqlite::Result<Option<TokenRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found = match which {
            TokenSelector::Id(id) => tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1 AND revoked IS NULL"),
                    [id],
                    record_at,
                )
                .optional()?,
            TokenSelector::Name(name) => tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM tokens WHERE name = ?1 AND revoked IS NULL"),
                    [name],
                    record_at,
                )
                .optional()?,
        };
        let Some(mut rec) = found else {
            return Ok(None);
        };
        let at = now();
        tx.execute(
            "UPDATE tokens SET revoked = ?2 WHERE id = ?1",
            params![rec.id, sql_u64(at)],
        )?;
        tx.commit()?;
        rec.revoked = Some(at);
        Ok(Some(rec))
    }

    /// How many tokens are not revoked; auth is on when this is above zero. Read through a reader
    /// (every request of an open server asks): it never waits for a write or a slow read.
    pub fn live_token_count(&self) -> rusqlite::Result<u64> {
        self.read()?.query_row(
            "SELECT COUNT(*) FROM tokens WHERE revoked IS NULL",
            [],
            |r| u64_at(r, 0),
        )
    }

    /// The live token whose hash is `hash`, marking it used (at most once per
    /// [`LAST_USED_RESOLUTION_SECS`]).
    /// The lookup reads through a reader; only the (rare) touch takes the writer.
    pub fn use_token(&self, hash: &str) -> rusqlite::Result<Option<TokenRecord>> {
        let rec = self
            .read()?
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tokens WHERE hash = ?1 AND revoked IS NULL"
            ))?
            .query_row([hash], record_at)
            .optional()?;
        if let Some(rec) = &rec {
            let now = now();
            if should_touch(rec.last_used, now) {
                self.conn().execute(
                    "UPDATE tokens SET last_used = ?2 WHERE id = ?1",
                    params![rec.id, sql_u64(now)],
                )?;
            }
        }
        Ok(rec)
    }

    /// Namespaces of the entries that reference blob `digest` (as an image config or a layer).
    /// Records that token `token_id` uploaded blob `digest` in full.
    pub fn record_blob_upload(&self, digest: &Digest, token_id: i64) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO blob_uploads (digest, token_id, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (digest, token_id) DO UPDATE SET at = excluded.at",
            )?
            .execute(params![digest.to_string(), token_id, sql_u64(now())])?;
        Ok(())
    }

    /// Which of `digests` a caller may name in a commit or learn are stored: blobs of an entry
    /// or registry repository in a namespace `readable` accepts, and blobs token `uploader`
    /// uploaded itself. Deduplication stores content once for everyone, but knowing a digest
    /// must not make another tenant's content yours.
    pub fn visible_blobs(
        &self,
        digests: &[Digest],
        uploader: Option<i64>,
        readable: impl Fn(&str) -> bool,
    ) -> rusqlite::Result<HashSet<Digest>> {
        let mut out = HashSet::new();
        for d in digests {
            if out.contains(d) {
                continue;
            }
            let mine = match uploader {
                Some(id) => self
                    .read()?
                    .prepare_cached(
                        "SELECT 1 FROM blob_uploads WHERE digest = ?1 AND token_id = ?2",
                    )?
                    .query_row(params![d.to_string(), id], |_| Ok(()))
                    .optional()?
                    .is_some(),
                None => false,
            };
            if mine
                || self
                    .blob_namespaces(&d.to_string())?
                    .iter()
                    .any(|ns| readable(ns))
            {
                out.insert(*d);
            }
        }
        Ok(out)
    }

    pub fn blob_namespaces(&self, digest: &str) -> rusqlite::Result<Vec<String>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(
            "SELECT e.namespace FROM entries e JOIN entry_images ei ON ei.entry_id = e.id
             WHERE ei.image_id = ?1
             UNION
             SELECT e.namespace FROM image_layers il
             JOIN entry_images ei ON ei.image_id = il.image_id
             JOIN entries e ON e.id = ei.entry_id
             WHERE il.diff_id = ?1
             UNION
             SELECT repo FROM repo_blobs WHERE digest = ?1",
        )?;
        stmt.query_map([digest], |r| r.get(0))?.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_is_rewritten_at_most_once_a_minute() {
        assert!(should_touch(None, 1000));
        assert!(!should_touch(Some(1000), 1000));
        assert!(!should_touch(Some(1000), 1059));
        assert!(should_touch(Some(1000), 1060));
    }

    #[test]
    fn selectors_treat_digits_as_ids() {
        assert_eq!(TokenSelector::parse("12"), TokenSelector::Id(12));
        assert_eq!(
            TokenSelector::parse("ci-main"),
            TokenSelector::Name("ci-main".into())
        );
    }
}
