//! Phase 2, continued: the registry's rows (repository links, manifests with their references,
//! tags) and the tokens with who uploaded which blob. Same rules as [`super::rows`]: one
//! transaction per page, rows the target holds (by natural key) skipped, children linked to the
//! id their parent has in the target.

use std::collections::HashMap;

use rusqlite::params;

use super::MigrateError;
use super::progress::Progress;
use super::rows::Tally;
use super::source::{PAGE, Source};
use crate::store::postgres::PgDb;

/// Repository links, manifests (with their references), then tags.
pub fn copy(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    repo_blobs(src, db, tally)?;
    manifests(src, db, tally)?;
    tags(src, db, tally)
}

fn repo_blobs(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    let mut progress = Progress::new("repository blobs", None);
    let mut after = (String::new(), String::new());
    let mut st = src.conn.prepare(
        "SELECT repo, digest FROM repo_blobs WHERE (repo, digest) > (?1, ?2)
         ORDER BY repo, digest LIMIT ?3",
    )?;
    loop {
        let page: Vec<(String, String)> = st
            .query_map(params![after.0, after.1, PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        let written = db.write(|tx| {
            let ins = tx.prepare(
                "INSERT INTO repo_blobs (repo, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )?;
            let mut n = 0;
            for (repo, digest) in &page {
                n += tx.execute(&ins, &[repo, digest])?;
            }
            Ok(n)
        })?;
        tally.add("repo_blobs", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
    }
    progress.finish();
    Ok(())
}

/// A manifest row and its references.
struct Manifest {
    id: i64,
    repo: String,
    digest: String,
    media_type: String,
    size: i64,
    artifact_type: Option<String>,
    subject: Option<String>,
    annotations: Option<String>,
    created: i64,
    last_used: i64,
    /// (digest, is_manifest).
    refs: Vec<(String, bool)>,
}

fn manifests(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    let mut progress = Progress::new("manifests", None);
    let mut st = src.conn.prepare(
        "SELECT id, repo, digest, media_type, size, artifact_type, subject, annotations, created,
                last_used
         FROM manifests WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut refs = src
        .conn
        .prepare("SELECT digest, is_manifest FROM manifest_refs WHERE manifest_id = ?1")?;
    let mut after = 0;
    loop {
        let mut page: Vec<Manifest> = st
            .query_map(params![after, PAGE / 5], |r| {
                Ok(Manifest {
                    id: r.get(0)?,
                    repo: r.get(1)?,
                    digest: r.get(2)?,
                    media_type: r.get(3)?,
                    size: r.get(4)?,
                    artifact_type: r.get(5)?,
                    subject: r.get(6)?,
                    annotations: r.get(7)?,
                    created: r.get(8)?,
                    last_used: r.get(9)?,
                    refs: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for m in &mut page {
            m.refs = refs
                .query_map([m.id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
                .collect::<Result<_, _>>()?;
        }
        let written = db.write(|tx| {
            let mut n = 0;
            for m in &page {
                let present = tx
                    .query_opt(
                        "SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2",
                        &[&m.repo, &m.digest],
                    )?
                    .is_some();
                if present {
                    continue;
                }
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO manifests (repo, digest, media_type, size, artifact_type,
                                                subject, annotations, created, last_used)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                        &[
                            &m.repo,
                            &m.digest,
                            &m.media_type,
                            &m.size,
                            &m.artifact_type,
                            &m.subject,
                            &m.annotations,
                            &m.created,
                            &m.last_used,
                        ],
                    )?
                    .try_get(0)?;
                for (digest, is_manifest) in &m.refs {
                    tx.execute(
                        "INSERT INTO manifest_refs (manifest_id, digest, is_manifest)
                         VALUES ($1, $2, $3)",
                        &[&id, digest, is_manifest],
                    )?;
                }
                n += 1;
            }
            Ok(n)
        })?;
        tally.add("manifests", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
    }
    progress.finish();
    Ok(())
}

fn tags(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    let mut progress = Progress::new("tags", None);
    let mut st = src.conn.prepare(
        "SELECT t.id, t.repo, t.tag, m.digest, t.updated, t.last_used, t.hits
         FROM tags t JOIN manifests m ON m.id = t.manifest_id
         WHERE t.id > ?1 ORDER BY t.id LIMIT ?2",
    )?;
    let mut after = 0;
    type Tag = (i64, String, String, String, i64, i64, i64);
    loop {
        let page: Vec<Tag> = st
            .query_map(params![after, PAGE], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.0;
        let written = db.write(|tx| {
            // The tag points at the manifest of the same repository and digest in the target.
            let ins = tx.prepare(
                "INSERT INTO tags (repo, tag, manifest_id, updated, last_used, hits)
                 SELECT $1, $2, m.id, $4, $5, $6 FROM manifests m
                 WHERE m.repo = $1 AND m.digest = $3
                 ON CONFLICT (repo, tag) DO NOTHING",
            )?;
            let mut n = 0;
            for (_, repo, tag, digest, updated, last_used, hits) in &page {
                n += tx.execute(&ins, &[repo, tag, digest, updated, last_used, hits])?;
            }
            Ok(n)
        })?;
        tally.add("tags", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
    }
    progress.finish();
    Ok(())
}

/// A token row (its hash, never a secret: the source has none).
struct Token {
    id: i64,
    name: Option<String>,
    hash: String,
    role: String,
    namespaces: String,
    created: i64,
    last_used: Option<i64>,
    revoked: Option<i64>,
}

/// Tokens, in one transaction (there are few); each keeps its id unless the target gave it to
/// another. Returns the source id → target id map [`blob_uploads`] needs.
pub fn tokens(
    src: &Source,
    db: &PgDb,
    tally: &mut Tally,
) -> Result<HashMap<i64, i64>, MigrateError> {
    let list: Vec<Token> = src
        .conn
        .prepare(
            "SELECT id, name, hash, role, namespaces, created, last_used, revoked
             FROM tokens ORDER BY id",
        )?
        .query_map([], |r| {
            Ok(Token {
                id: r.get(0)?,
                name: r.get(1)?,
                hash: r.get(2)?,
                role: r.get(3)?,
                namespaces: r.get(4)?,
                created: r.get(5)?,
                last_used: r.get(6)?,
                revoked: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let outcome = db.write(|tx| {
        let mut ids = HashMap::new();
        let mut written = 0;
        for t in &list {
            if let Some(r) = tx.query_opt("SELECT id FROM tokens WHERE hash = $1", &[&t.hash])? {
                ids.insert(t.id, r.try_get(0)?);
                continue;
            }
            if let (Some(name), None) = (&t.name, t.revoked) {
                let taken = tx.query_opt(
                    "SELECT 1 FROM tokens WHERE name = $1 AND revoked IS NULL",
                    &[name],
                )?;
                if taken.is_some() {
                    return Ok(Err(name.clone()));
                }
            }
            let id_free = tx
                .query_opt("SELECT 1 FROM tokens WHERE id = $1", &[&t.id])?
                .is_none();
            let values = "$2, $3, $4, $5, $6, $7, $8";
            let sql = if id_free {
                format!(
                    "INSERT INTO tokens (id, name, hash, role, namespaces, created, last_used,
                                         revoked)
                     VALUES ($1, {values}) RETURNING id"
                )
            } else {
                // $1 unused but typed: the same parameters either way.
                format!(
                    "INSERT INTO tokens (name, hash, role, namespaces, created, last_used, revoked)
                     SELECT {values} WHERE $1::BIGINT IS NOT NULL RETURNING id"
                )
            };
            let id: i64 = tx
                .query_one(
                    &sql,
                    &[
                        &t.id,
                        &t.name,
                        &t.hash,
                        &t.role,
                        &t.namespaces,
                        &t.created,
                        &t.last_used,
                        &t.revoked,
                    ],
                )?
                .try_get(0)?;
            ids.insert(t.id, id);
            written += 1;
        }
        // Ids given explicitly do not move the identity: the next token must not collide.
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('tokens', 'id'),
                           GREATEST((SELECT MAX(id) FROM tokens), 1))",
            &[],
        )?;
        Ok(Ok((ids, written)))
    })?;
    let (ids, written) = outcome.map_err(MigrateError::TokenNameTaken)?;
    tally.add("tokens", written, list.len() as u64 - written);
    Ok(ids)
}

/// Which token uploaded which blob, with token ids as the target has them.
pub fn blob_uploads(
    src: &Source,
    db: &PgDb,
    tokens: &HashMap<i64, i64>,
    tally: &mut Tally,
) -> Result<(), MigrateError> {
    let mut progress = Progress::new("blob uploads", None);
    let mut st = src.conn.prepare(
        "SELECT digest, token_id, at FROM blob_uploads WHERE (digest, token_id) > (?1, ?2)
         ORDER BY digest, token_id LIMIT ?3",
    )?;
    let mut after = (String::new(), i64::MIN);
    loop {
        let page: Vec<(String, i64, i64)> = st
            .query_map(params![after.0, after.1, PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = (last.0.clone(), last.1);
        let written = db.write(|tx| {
            let ins = tx.prepare(
                "INSERT INTO blob_uploads (digest, token_id, at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut n = 0;
            for (digest, token, at) in &page {
                // A row of a token since deleted keeps its id (it can match no live token).
                let token = tokens.get(token).unwrap_or(token);
                n += tx.execute(&ins, &[digest, token, at])?;
            }
            Ok(n)
        })?;
        tally.add("blob_uploads", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
    }
    progress.finish();
    Ok(())
}
