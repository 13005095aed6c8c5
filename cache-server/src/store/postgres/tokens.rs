//! Access tokens and blob visibility on PostgreSQL (as `store::tokens` for SQLite): only the
//! sha256 of a token is stored.

use std::collections::HashSet;

use layercache_shared::Digest;
use postgres::Row;

use super::{Fail, PgDb, R, exists, sql_u64, u64_at};
use crate::auth::{NamespacePattern, Role};
use crate::store::meta::MetaResult;
use crate::store::sqlite::now;
use crate::store::tokens::{TokenRecord, TokenSelector, should_touch};

const COLUMNS: &str = "id, name, role, namespaces, created, last_used, revoked";

fn record_at(r: &Row) -> R<TokenRecord> {
    let corrupt = |e: String| Fail::Corrupt(format!("tokens: {e}"));
    let role: Role = r
        .try_get::<_, &str>(2)?
        .parse()
        .map_err(|e: crate::error::ServerError| corrupt(e.to_string()))?;
    let patterns: Vec<String> =
        serde_json::from_str(r.try_get(3)?).map_err(|e| corrupt(e.to_string()))?;
    let namespaces = patterns
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, crate::error::ServerError>>()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role,
        namespaces,
        created: u64_at(r, 4)?,
        last_used: r.try_get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
        revoked: r.try_get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
    })
}

impl PgDb {
    pub(crate) fn insert_token(
        &self,
        hash: &str,
        name: Option<&str>,
        role: Role,
        namespaces: &[NamespacePattern],
    ) -> MetaResult<TokenRecord> {
        let patterns: Vec<&str> = namespaces.iter().map(|p| p.as_str()).collect();
        let patterns = serde_json::to_string(&patterns).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            let r = tx.query_one(
                &format!(
                    "INSERT INTO tokens (name, hash, role, namespaces, created)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
                ),
                &[&name, &hash, &role.as_str(), &patterns, &sql_u64(now())],
            )?;
            record_at(&r)
        })
    }

    pub(crate) fn list_tokens(&self) -> MetaResult<Vec<TokenRecord>> {
        self.run(|c| {
            c.query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY id"), &[])?
                .iter()
                .map(record_at)
                .collect()
        })
    }

    pub(crate) fn revoke_token(&self, which: &TokenSelector) -> MetaResult<Option<TokenRecord>> {
        let at = now();
        self.write(|tx| {
            let row = match which {
                TokenSelector::Id(id) => tx.query_opt(
                    &format!(
                        "UPDATE tokens SET revoked = $2 WHERE id = $1 AND revoked IS NULL
                         RETURNING {COLUMNS}"
                    ),
                    &[id, &sql_u64(at)],
                )?,
                TokenSelector::Name(name) => tx.query_opt(
                    &format!(
                        "UPDATE tokens SET revoked = $2 WHERE name = $1 AND revoked IS NULL
                         RETURNING {COLUMNS}"
                    ),
                    &[name, &sql_u64(at)],
                )?,
            };
            row.map(|r| record_at(&r)).transpose()
        })
    }

    pub(crate) fn live_token_count(&self) -> MetaResult<u64> {
        self.run(|c| {
            u64_at(
                &c.query_one("SELECT COUNT(*) FROM tokens WHERE revoked IS NULL", &[])?,
                0,
            )
        })
    }

    pub(crate) fn use_token(&self, hash: &str) -> MetaResult<Option<TokenRecord>> {
        let rec = self.run(|c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM tokens WHERE hash = $1 AND revoked IS NULL"),
                &[&hash],
            )?
            .map(|r| record_at(&r))
            .transpose()
        })?;
        if let Some(rec) = &rec {
            let now = now();
            if should_touch(rec.last_used, now) {
                // Not under the write lock: one column of one row, last writer wins.
                self.run(|c| {
                    c.execute(
                        "UPDATE tokens SET last_used = $2 WHERE id = $1",
                        &[&rec.id, &sql_u64(now)],
                    )?;
                    Ok(())
                })?;
            }
        }
        Ok(rec)
    }

    pub(crate) fn record_blob_upload(&self, digest: &Digest, token_id: i64) -> MetaResult<()> {
        let d = digest.to_string();
        self.run(|c| {
            c.execute(
                "INSERT INTO blob_uploads (digest, token_id, at) VALUES ($1, $2, $3)
                 ON CONFLICT (digest, token_id) DO UPDATE SET at = excluded.at",
                &[&d, &token_id, &sql_u64(now())],
            )?;
            Ok(())
        })
    }

    pub(crate) fn visible_blobs(
        &self,
        digests: &[Digest],
        uploader: Option<i64>,
        readable: &dyn Fn(&str) -> bool,
    ) -> MetaResult<HashSet<Digest>> {
        let mut out = HashSet::new();
        for d in digests {
            if out.contains(d) {
                continue;
            }
            let s = d.to_string();
            let mine = match uploader {
                Some(id) => self.run(|c| {
                    exists(
                        c,
                        "SELECT 1 FROM blob_uploads WHERE digest = $1 AND token_id = $2",
                        &[&s, &id],
                    )
                })?,
                None => false,
            };
            if mine || self.blob_namespaces(&s)?.iter().any(|ns| readable(ns)) {
                out.insert(*d);
            }
        }
        Ok(out)
    }

    pub(crate) fn blob_namespaces(&self, digest: &str) -> MetaResult<Vec<String>> {
        self.run(|c| {
            Ok(c.query(
                "SELECT e.namespace FROM entries e JOIN entry_images ei ON ei.entry_id = e.id
                 WHERE ei.image_id = $1
                 UNION
                 SELECT e.namespace FROM image_layers il
                 JOIN entry_images ei ON ei.image_id = il.image_id
                 JOIN entries e ON e.id = ei.entry_id
                 WHERE il.diff_id = $1
                 UNION
                 SELECT repo FROM repo_blobs WHERE digest = $1",
                &[&digest],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }
}
