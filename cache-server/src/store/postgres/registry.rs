//! The registry protocol's rows on PostgreSQL (as SQLite's `registry`, whose docs describe the
//! tables and the liveness rules the collector applies).

use std::collections::BTreeMap;

use layercache_shared::Digest;
use layercache_shared::api::TagSummary;
use layercache_shared::oci::Reference;
use postgres::{GenericClient, Row, Transaction};

use super::insights::count_event;
use super::{PgDb, R, add_counter_tx, digest_at, exists, opt_digest_at, sql_u64, u64_at};
use crate::store::meta::MetaResult;
use crate::store::sqlite::{
    ActivityKind, Cursor, GraphManifest, MAX_PAGE, ManifestRow, NewManifest, Page, Referrer,
    RegistryGraph, counter, now,
};

fn ref_parts(r: &Reference) -> (Digest, bool) {
    match r {
        Reference::Blob(d) => (*d, false),
        Reference::Manifest(d) => (*d, true),
    }
}

fn manifest_row(r: &Row, first: usize) -> R<ManifestRow> {
    Ok(ManifestRow {
        id: r.try_get(first)?,
        digest: digest_at(r, first + 1)?,
        media_type: r.try_get(first + 2)?,
        size: u64_at(r, first + 3)?,
    })
}

impl PgDb {
    pub(crate) fn link_blob(&self, repo: &str, digest: &Digest) -> MetaResult<bool> {
        let d = digest.to_string();
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE blobs SET created = GREATEST(created, $2) WHERE digest = $1",
                &[&d, &sql_u64(now())],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO repo_blobs (repo, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&repo, &d],
            )?;
            Ok(true)
        })
    }

    pub(crate) fn repo_blob_size(&self, repo: &str, digest: &Digest) -> MetaResult<Option<u64>> {
        let d = digest.to_string();
        self.run(|c| {
            c.query_opt(
                "SELECT b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
                 WHERE rb.repo = $1 AND rb.digest = $2",
                &[&repo, &d],
            )?
            .map(|r| u64_at(&r, 0))
            .transpose()
        })
    }

    pub(crate) fn unlink_blob(&self, repo: &str, digest: &Digest) -> MetaResult<bool> {
        let d = digest.to_string();
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2",
                &[&repo, &d],
            )? > 0)
        })
    }

    pub(crate) fn blob_repos(&self, digest: &Digest) -> MetaResult<Vec<String>> {
        let d = digest.to_string();
        self.run(|c| {
            Ok(c.query(
                "SELECT repo FROM repo_blobs WHERE digest = $1 ORDER BY repo",
                &[&d],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }

    pub(crate) fn put_manifest(
        &self,
        m: &NewManifest,
        tag: Option<&str>,
    ) -> MetaResult<Result<i64, Vec<Digest>>> {
        self.write(|tx| {
            let missing = missing_refs(tx, &m.repo, &m.refs)?;
            if !missing.is_empty() {
                return Ok(Err(missing));
            }
            let t = sql_u64(now());
            let id: i64 = tx
                .query_one(
                    "INSERT INTO manifests (repo, digest, media_type, size, artifact_type, subject,
                                            annotations, created, last_used)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (repo, digest) DO UPDATE SET
                        media_type = excluded.media_type, created = excluded.created,
                        last_used = excluded.last_used
                     RETURNING id",
                    &[
                        &m.repo,
                        &m.digest.to_string(),
                        &m.media_type,
                        &sql_u64(m.size),
                        &m.artifact_type,
                        &m.subject.map(|s| s.to_string()),
                        &m.annotations,
                        &t,
                    ],
                )?
                .try_get(0)?;
            tx.execute("DELETE FROM manifest_refs WHERE manifest_id = $1", &[&id])?;
            let ins = tx.prepare(
                "INSERT INTO manifest_refs (manifest_id, digest, is_manifest) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            for r in &m.refs {
                let (d, is_manifest) = ref_parts(r);
                tx.execute(&ins, &[&id, &d.to_string(), &is_manifest])?;
            }
            tx.execute(
                "INSERT INTO repo_blobs (repo, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&m.repo, &m.digest.to_string()],
            )?;
            if let Some(tag) = tag {
                tx.execute(
                    "INSERT INTO tags (repo, tag, manifest_id, updated, last_used)
                     VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (repo, tag) DO UPDATE SET
                        manifest_id = excluded.manifest_id, updated = excluded.updated,
                        last_used = excluded.last_used",
                    &[&m.repo, &tag, &id, &t],
                )?;
            }
            Ok(Ok(id))
        })
    }

    pub(crate) fn resolve_tag(&self, repo: &str, tag: &str) -> MetaResult<Option<ManifestRow>> {
        self.write(|tx| {
            let t = now();
            let found = tx
                .query_opt(
                    "SELECT t.id, m.id, m.digest, m.media_type, m.size FROM tags t
                     JOIN manifests m ON m.id = t.manifest_id WHERE t.repo = $1 AND t.tag = $2",
                    &[&repo, &tag],
                )?
                .map(|r| Ok::<_, super::Fail>((r.try_get::<_, i64>(0)?, manifest_row(&r, 1)?)))
                .transpose()?;
            match &found {
                Some((tag_id, m)) => {
                    tx.execute(
                        "UPDATE tags SET hits = hits + 1, last_used = $2 WHERE id = $1",
                        &[tag_id, &sql_u64(t)],
                    )?;
                    touch_manifest(tx, m.id, t)?;
                    add_counter_tx(tx, counter::HITS, 1)?;
                    count_event(tx, repo, ActivityKind::Get, t)?;
                }
                None => {
                    add_counter_tx(tx, counter::MISSES, 1)?;
                    count_event(tx, repo, ActivityKind::Miss, t)?;
                }
            }
            Ok(found.map(|(_, m)| m))
        })
    }

    pub(crate) fn manifest_by_digest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> MetaResult<Option<ManifestRow>> {
        let d = digest.to_string();
        self.write(|tx| {
            let found = tx
                .query_opt(
                    "SELECT id, digest, media_type, size FROM manifests
                     WHERE repo = $1 AND digest = $2",
                    &[&repo, &d],
                )?
                .map(|r| manifest_row(&r, 0))
                .transpose()?;
            if let Some(m) = &found {
                touch_manifest(tx, m.id, now())?;
            }
            Ok(found)
        })
    }

    pub(crate) fn delete_manifest(&self, repo: &str, digest: &Digest) -> MetaResult<bool> {
        let d = digest.to_string();
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM manifests WHERE repo = $1 AND digest = $2",
                &[&repo, &d],
            )?;
            tx.execute(
                "DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2",
                &[&repo, &d],
            )?;
            Ok(n > 0)
        })
    }

    pub(crate) fn delete_tag(&self, repo: &str, tag: &str) -> MetaResult<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM tags WHERE repo = $1 AND tag = $2",
                &[&repo, &tag],
            )? > 0)
        })
    }

    pub(crate) fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: u64,
    ) -> MetaResult<Option<Vec<String>>> {
        self.read(|tx| {
            let tags: Vec<String> = tx
                .query(
                    "SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3",
                    &[&repo, &last.unwrap_or(""), &sql_u64(n)],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if !tags.is_empty() {
                return Ok(Some(tags));
            }
            let found = exists(
                tx,
                "SELECT 1 FROM manifests WHERE repo = $1
                 UNION ALL SELECT 1 FROM repo_blobs WHERE repo = $1 LIMIT 1",
                &[&repo],
            )?;
            Ok(found.then_some(tags))
        })
    }

    pub(crate) fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> MetaResult<Vec<Referrer>> {
        let s = subject.to_string();
        self.run(|c| {
            c.query(
                "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                 WHERE repo = $1 AND subject = $2 AND ($3::TEXT IS NULL OR artifact_type = $3)
                 ORDER BY digest",
                &[&repo, &s, &artifact_type],
            )?
            .iter()
            .map(|r| {
                Ok(Referrer {
                    digest: digest_at(r, 0)?,
                    media_type: r.try_get(1)?,
                    size: u64_at(r, 2)?,
                    artifact_type: r.try_get(3)?,
                    annotations: r.try_get(4)?,
                })
            })
            .collect()
        })
    }

    pub(crate) fn repositories(&self, last: Option<&str>) -> MetaResult<Vec<String>> {
        self.run(|c| {
            Ok(c.query(
                "SELECT DISTINCT repo FROM manifests WHERE repo > $1 ORDER BY repo LIMIT 10000",
                &[&last.unwrap_or("")],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }

    pub(crate) fn registry_graph(&self) -> MetaResult<RegistryGraph> {
        self.read(|tx| {
            let mut by_id: BTreeMap<i64, GraphManifest> = BTreeMap::new();
            for r in tx.query(
                "SELECT id, repo, digest, created, subject FROM manifests",
                &[],
            )? {
                let mut m = GraphManifest {
                    id: r.try_get(0)?,
                    repo: r.try_get(1)?,
                    digest: digest_at(&r, 2)?,
                    created: u64_at(&r, 3)?,
                    subject: opt_digest_at(&r, 4)?,
                    blobs: Vec::new(),
                    children: Vec::new(),
                };
                m.blobs.push(m.digest);
                by_id.insert(m.id, m);
            }
            for r in tx.query(
                "SELECT manifest_id, digest, is_manifest FROM manifest_refs",
                &[],
            )? {
                let d = digest_at(&r, 1)?;
                if let Some(m) = by_id.get_mut(&r.try_get::<_, i64>(0)?) {
                    if r.try_get::<_, bool>(2)? {
                        m.children.push(d);
                    } else {
                        m.blobs.push(d);
                    }
                }
            }
            let tags = tx
                .query("SELECT id, manifest_id, last_used FROM tags", &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, u64_at(r, 2)?)))
                .collect::<R<_>>()?;
            Ok(RegistryGraph {
                manifests: by_id.into_values().collect(),
                tags,
            })
        })
    }

    pub(crate) fn evict_tag(&self, id: i64, last_used: u64) -> MetaResult<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM tags WHERE id = $1 AND last_used = $2",
                &[&id, &sql_u64(last_used)],
            )?;
            if n > 0 {
                add_counter_tx(tx, counter::EVICTED_ENTRIES, 1)?;
            }
            Ok(n > 0)
        })
    }

    pub(crate) fn delete_dead_manifests(
        &self,
        ids: &[i64],
        created_before: u64,
    ) -> MetaResult<u64> {
        self.write(|tx| {
            let del = tx.prepare(
                "DELETE FROM manifests AS m WHERE id = $1 AND created < $2
                 AND NOT EXISTS (SELECT 1 FROM tags WHERE manifest_id = $1)
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests p
                                 ON p.id = r.manifest_id
                                 WHERE r.digest = m.digest AND r.is_manifest
                                 AND p.repo = m.repo AND p.id <> m.id)
                 RETURNING repo, digest",
            )?;
            let mut gone = 0;
            for id in ids {
                if let Some(r) = tx.query_opt(&del, &[id, &sql_u64(created_before)])? {
                    let (repo, digest): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                    tx.execute(
                        "DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2",
                        &[&repo, &digest],
                    )?;
                    gone += 1;
                }
            }
            Ok(gone)
        })
    }

    pub(crate) fn list_tags(
        &self,
        repo: Option<&str>,
        after: Option<&Cursor>,
        limit: u64,
    ) -> MetaResult<Page<TagSummary>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (repo_after, tag_after) = after
            .map(|c| (c.namespace.as_str(), c.key.as_str()))
            .unwrap_or(("", ""));
        let mut items: Vec<TagSummary> = self.run(|c| {
            // Two statements rather than `$1 IS NULL OR repo = $1`, which defeats the index.
            let rows = match repo {
                Some(repo) => {
                    // A cursor of another repository (or none) starts at its first tag.
                    let tag_after = if repo_after == repo { tag_after } else { "" };
                    c.query(
                        &format!(
                            "SELECT {TAG_COLUMNS} FROM tags t JOIN manifests m ON m.id = t.manifest_id
                             WHERE t.repo = $1 AND t.tag > $2 ORDER BY t.tag LIMIT $3"
                        ),
                        &[&repo, &tag_after, &sql_u64(limit + 1)],
                    )?
                }
                None => c.query(
                    &format!(
                        "SELECT {TAG_COLUMNS} FROM tags t JOIN manifests m ON m.id = t.manifest_id
                         WHERE (t.repo, t.tag) > ($1, $2) ORDER BY t.repo, t.tag LIMIT $3"
                    ),
                    &[&repo_after, &tag_after, &sql_u64(limit + 1)],
                )?,
            };
            rows.iter()
                .map(|r| {
                    Ok(TagSummary {
                        repository: r.try_get(0)?,
                        tag: r.try_get(1)?,
                        digest: digest_at(r, 2)?,
                        media_type: r.try_get(3)?,
                        updated: u64_at(r, 4)?,
                        last_used: u64_at(r, 5)?,
                        hits: u64_at(r, 6)?,
                        total_size: u64_at(r, 7)?,
                    })
                })
                .collect()
        })?;
        let next = if items.len() as u64 > limit {
            items.truncate(limit as usize);
            items.last().map(|t| Cursor {
                namespace: t.repository.clone(),
                key: t.tag.clone(),
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    pub(crate) fn registry_counts(&self) -> MetaResult<(u64, u64)> {
        self.run(|c| {
            let r = c.query_one(
                "SELECT (SELECT COUNT(*) FROM tags), (SELECT COUNT(*) FROM manifests)",
                &[],
            )?;
            Ok((u64_at(&r, 0)?, u64_at(&r, 1)?))
        })
    }
}

fn touch_manifest(tx: &mut Transaction<'_>, id: i64, t: u64) -> R<()> {
    tx.execute(
        "UPDATE manifests SET last_used = $2 WHERE id = $1",
        &[&id, &sql_u64(t)],
    )?;
    Ok(())
}

/// The references of a manifest about to be stored in `repo` that the repository lacks.
fn missing_refs(c: &mut impl GenericClient, repo: &str, refs: &[Reference]) -> R<Vec<Digest>> {
    let mut missing = Vec::new();
    for r in refs {
        let (d, is_manifest) = ref_parts(r);
        let sql = if is_manifest {
            "SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2"
        } else {
            "SELECT 1 FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
             WHERE rb.repo = $1 AND rb.digest = $2"
        };
        if !exists(c, sql, &[&repo, &d.to_string()])? {
            missing.push(d);
        }
    }
    Ok(missing)
}

/// The columns of a [`TagSummary`], of `tags t JOIN manifests m` (as SQLite's): the size counts
/// the manifest, its blobs and its children's blobs.
const TAG_COLUMNS: &str = "t.repo, t.tag, m.digest, m.media_type, t.updated, t.last_used, t.hits,
    m.size + COALESCE((
        SELECT SUM(b.size) FROM blobs b WHERE b.digest IN (
            SELECT r.digest FROM manifest_refs r WHERE r.manifest_id = m.id
            UNION
            SELECT cr.digest FROM manifest_refs r
            JOIN manifests c ON c.repo = m.repo AND c.digest = r.digest
            JOIN manifest_refs cr ON cr.manifest_id = c.id
            WHERE r.manifest_id = m.id AND r.is_manifest
            UNION
            SELECT r.digest FROM manifest_refs r WHERE r.manifest_id = m.id
            AND r.is_manifest)), 0)::BIGINT";
