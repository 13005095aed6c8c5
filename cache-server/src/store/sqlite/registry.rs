//! The registry protocol's rows (issue 10): which repository holds which blobs, manifests with the
//! blobs and child manifests they reference, and tags.
//!
//! Tables (migration "registry"):
//! - `repo_blobs (repo, digest)`: blobs uploaded into (or mounted into) a repository. Content is
//!   stored once in `blobs`; a link is what lets a repository read it, so deduplication never
//!   becomes a way to read another repository's data.
//! - `manifests (id, repo, digest, media_type, size, artifact_type, subject, annotations, created,
//!   last_used)`: the manifest bytes are a blob like any other (the row of `blobs` with the same
//!   digest).
//! - `manifest_refs (manifest_id, digest, is_manifest)`: what a manifest references, so the
//!   collector's "is this blob still used" is one indexed query.
//! - `tags (id, repo, tag, manifest_id, updated, last_used, hits)`: a tag is what the quota and
//!   time-to-live evict, like an entry of the v1 API.
//!
//! Liveness (applied by `gc`): a manifest lives while a tag reaches it (directly, as an index's
//! child, or as a referrer of a living manifest) or while it is younger than the upload grace
//! period; a blob lives while a v1 entry or any manifest row references it.

use std::collections::BTreeMap;

use layercache_shared::Digest;
use layercache_shared::api::TagSummary;
use layercache_shared::oci::Reference;
use rusqlite::{OptionalExtension, Transaction, params};

use super::insights::{ActivityKind, count_event};
use super::{Cursor, Db, MAX_PAGE, Page, add_counter_tx, counter, digest_at, now, sql_u64, u64_at};

/// A manifest about to be stored.
#[derive(Debug, Clone)]
pub struct NewManifest {
    /// Its repository.
    pub repo: String,
    /// The digest of its bytes (stored as a blob already).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Bytes of the manifest.
    pub size: u64,
    /// What the referrers API lists it as.
    pub artifact_type: Option<String>,
    /// The manifest it refers to (referrers API).
    pub subject: Option<Digest>,
    /// Its annotations, as JSON, for the referrers API.
    pub annotations: Option<String>,
    /// Blobs and manifests it references; each must be in the repository.
    pub refs: Vec<Reference>,
}

/// A stored manifest, as a GET answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// Row id.
    pub id: i64,
    /// Digest of its bytes.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Bytes.
    pub size: u64,
}

/// A manifest whose `subject` is the digest asked for (referrers API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    /// Annotations as JSON.
    pub annotations: Option<String>,
}

/// The registry's rows as the collector needs them.
#[derive(Debug, Clone, Default)]
pub struct RegistryGraph {
    /// Every manifest: id, repo, created, subject digest.
    pub manifests: Vec<GraphManifest>,
    /// Every tag: id, the manifest it names, last use.
    pub tags: Vec<(i64, i64, u64)>,
}

/// A manifest in [`RegistryGraph`].
#[derive(Debug, Clone)]
pub struct GraphManifest {
    pub id: i64,
    pub repo: String,
    pub digest: Digest,
    pub created: u64,
    pub subject: Option<Digest>,
    /// Blobs it references (its own bytes included).
    pub blobs: Vec<Digest>,
    /// Child manifests it references (same repository).
    pub children: Vec<Digest>,
}

fn ref_parts(r: &Reference) -> (Digest, bool) {
    match r {
        Reference::Blob(d) => (*d, false),
        Reference::Manifest(d) => (*d, true),
    }
}

impl Db {
    /// Links blob `digest` into `repo` (an upload into it or a mount) and refreshes its upload
    /// time, so the collector spares it until a manifest names it. False when no such blob is
    /// stored.
    pub fn link_blob(&self, repo: &str, digest: &Digest) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let d = digest.to_string();
        let updated = tx.execute(
            "UPDATE blobs SET created = MAX(created, ?2) WHERE digest = ?1",
            params![d, sql_u64(now())],
        )?;
        if updated == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR IGNORE INTO repo_blobs (repo, digest) VALUES (?1, ?2)",
            params![repo, d],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The size of blob `digest` if `repo` holds it.
    pub fn repo_blob_size(&self, repo: &str, digest: &Digest) -> rusqlite::Result<Option<u64>> {
        self.conn()
            .prepare_cached(
                "SELECT b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
                 WHERE rb.repo = ?1 AND rb.digest = ?2",
            )?
            .query_row(params![repo, digest.to_string()], |r| u64_at(r, 0))
            .optional()
    }

    /// Removes blob `digest` from `repo` (the content stays while anything else uses it). False
    /// when the repository did not hold it.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> rusqlite::Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2",
            params![repo, digest.to_string()],
        )? > 0)
    }

    /// The repositories holding blob `digest`.
    pub fn blob_repos(&self, digest: &Digest) -> rusqlite::Result<Vec<String>> {
        self.conn()
            .prepare_cached("SELECT repo FROM repo_blobs WHERE digest = ?1 ORDER BY repo")?
            .query_map([digest.to_string()], |r| r.get(0))?
            .collect()
    }

    /// Stores manifest `m` (and points `tag` at it) in one transaction, if everything it
    /// references is in its repository; otherwise stores nothing and returns what is missing.
    pub fn put_manifest(
        &self,
        m: &NewManifest,
        tag: Option<&str>,
    ) -> rusqlite::Result<Result<i64, Vec<Digest>>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let missing = missing_refs(&tx, &m.repo, &m.refs)?;
        if !missing.is_empty() {
            return Ok(Err(missing));
        }
        let t = sql_u64(now());
        let id: i64 = tx.query_row(
            "INSERT INTO manifests (repo, digest, media_type, size, artifact_type, subject,
                                    annotations, created, last_used)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (repo, digest) DO UPDATE SET
                media_type = excluded.media_type, created = excluded.created,
                last_used = excluded.last_used
             RETURNING id",
            params![
                m.repo,
                m.digest.to_string(),
                m.media_type,
                sql_u64(m.size),
                m.artifact_type,
                m.subject.map(|s| s.to_string()),
                m.annotations,
                t
            ],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM manifest_refs WHERE manifest_id = ?1", [id])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO manifest_refs (manifest_id, digest, is_manifest)
                 VALUES (?1, ?2, ?3)",
            )?;
            for r in &m.refs {
                let (d, is_manifest) = ref_parts(r);
                ins.execute(params![id, d.to_string(), is_manifest])?;
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO repo_blobs (repo, digest) VALUES (?1, ?2)",
            params![m.repo, m.digest.to_string()],
        )?;
        if let Some(tag) = tag {
            tx.execute(
                "INSERT INTO tags (repo, tag, manifest_id, updated, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (repo, tag) DO UPDATE SET
                    manifest_id = excluded.manifest_id, updated = excluded.updated,
                    last_used = excluded.last_used",
                params![m.repo, tag, id, t],
            )?;
        }
        tx.commit()?;
        Ok(Ok(id))
    }

    /// The manifest `tag` names in `repo`, counted as a hit (or a miss) of the repository, with
    /// the tag marked used now.
    pub fn resolve_tag(&self, repo: &str, tag: &str) -> rusqlite::Result<Option<ManifestRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let t = now();
        let found = tx
            .prepare_cached(
                "SELECT t.id, m.id, m.digest, m.media_type, m.size FROM tags t
                 JOIN manifests m ON m.id = t.manifest_id WHERE t.repo = ?1 AND t.tag = ?2",
            )?
            .query_row(params![repo, tag], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    ManifestRow {
                        id: r.get(1)?,
                        digest: digest_at(r, 2)?,
                        media_type: r.get(3)?,
                        size: u64_at(r, 4)?,
                    },
                ))
            })
            .optional()?;
        match &found {
            Some((tag_id, m)) => {
                tx.execute(
                    "UPDATE tags SET hits = hits + 1, last_used = ?2 WHERE id = ?1",
                    params![tag_id, sql_u64(t)],
                )?;
                touch_manifest(&tx, m.id, t)?;
                add_counter_tx(&tx, counter::HITS, 1)?;
                count_event(&tx, repo, ActivityKind::Get, t)?;
            }
            None => {
                add_counter_tx(&tx, counter::MISSES, 1)?;
                count_event(&tx, repo, ActivityKind::Miss, t)?;
            }
        }
        tx.commit()?;
        Ok(found.map(|(_, m)| m))
    }

    /// Manifest `digest` of `repo`, marked used now.
    pub fn manifest_by_digest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> rusqlite::Result<Option<ManifestRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found = tx
            .prepare_cached(
                "SELECT id, digest, media_type, size FROM manifests
                 WHERE repo = ?1 AND digest = ?2",
            )?
            .query_row(params![repo, digest.to_string()], |r| {
                Ok(ManifestRow {
                    id: r.get(0)?,
                    digest: digest_at(r, 1)?,
                    media_type: r.get(2)?,
                    size: u64_at(r, 3)?,
                })
            })
            .optional()?;
        if let Some(m) = &found {
            touch_manifest(&tx, m.id, now())?;
        }
        tx.commit()?;
        Ok(found)
    }

    /// Deletes manifest `digest` of `repo` with the tags naming it. False when absent.
    pub fn delete_manifest(&self, repo: &str, digest: &Digest) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let d = digest.to_string();
        let n = tx.execute(
            "DELETE FROM manifests WHERE repo = ?1 AND digest = ?2",
            params![repo, d],
        )?;
        tx.execute(
            "DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2",
            params![repo, d],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Deletes `tag` of `repo` (the manifest stays until the collector finds it unreachable).
    pub fn delete_tag(&self, repo: &str, tag: &str) -> rusqlite::Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM tags WHERE repo = ?1 AND tag = ?2",
            params![repo, tag],
        )? > 0)
    }

    /// Tags of `repo` in lexical order after `last`, at most `n`; `None` when the repository
    /// holds nothing at all.
    pub fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: u64,
    ) -> rusqlite::Result<Option<Vec<String>>> {
        let conn = self.conn();
        let tags: Vec<String> = conn
            .prepare_cached(
                "SELECT tag FROM tags WHERE repo = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3",
            )?
            .query_map(params![repo, last.unwrap_or(""), sql_u64(n)], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !tags.is_empty() {
            return Ok(Some(tags));
        }
        let exists = conn
            .prepare_cached(
                "SELECT 1 FROM manifests WHERE repo = ?1
                 UNION ALL SELECT 1 FROM repo_blobs WHERE repo = ?1 LIMIT 1",
            )?
            .query_row([repo], |_| Ok(()))
            .optional()?
            .is_some();
        Ok(exists.then_some(tags))
    }

    /// Manifests of `repo` whose subject is `subject`, optionally only of `artifact_type`.
    pub fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> rusqlite::Result<Vec<Referrer>> {
        self.conn()
            .prepare_cached(
                "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                 WHERE repo = ?1 AND subject = ?2 AND (?3 IS NULL OR artifact_type = ?3)
                 ORDER BY digest",
            )?
            .query_map(params![repo, subject.to_string(), artifact_type], |r| {
                Ok(Referrer {
                    digest: digest_at(r, 0)?,
                    media_type: r.get(1)?,
                    size: u64_at(r, 2)?,
                    artifact_type: r.get(3)?,
                    annotations: r.get(4)?,
                })
            })?
            .collect()
    }

    /// Repositories with manifests, in lexical order after `last`.
    pub fn repositories(&self, last: Option<&str>) -> rusqlite::Result<Vec<String>> {
        self.conn()
            .prepare_cached(
                "SELECT DISTINCT repo FROM manifests WHERE repo > ?1 ORDER BY repo LIMIT 10000",
            )?
            .query_map([last.unwrap_or("")], |r| r.get(0))?
            .collect()
    }

    /// Every manifest with its references, and every tag (collector).
    pub fn registry_graph(&self) -> rusqlite::Result<RegistryGraph> {
        let conn = self.read()?;
        let mut by_id: BTreeMap<i64, GraphManifest> = BTreeMap::new();
        let mut stmt =
            conn.prepare_cached("SELECT id, repo, digest, created, subject FROM manifests")?;
        for row in stmt.query_map([], |r| {
            Ok(GraphManifest {
                id: r.get(0)?,
                repo: r.get(1)?,
                digest: digest_at(r, 2)?,
                created: u64_at(r, 3)?,
                subject: super::opt_digest_at(r, 4)?,
                blobs: Vec::new(),
                children: Vec::new(),
            })
        })? {
            let mut m = row?;
            m.blobs.push(m.digest);
            by_id.insert(m.id, m);
        }
        let mut stmt =
            conn.prepare_cached("SELECT manifest_id, digest, is_manifest FROM manifest_refs")?;
        for row in stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, digest_at(r, 1)?, r.get::<_, bool>(2)?))
        })? {
            let (id, d, is_manifest) = row?;
            if let Some(m) = by_id.get_mut(&id) {
                if is_manifest {
                    m.children.push(d);
                } else {
                    m.blobs.push(d);
                }
            }
        }
        let tags = conn
            .prepare_cached("SELECT id, manifest_id, last_used FROM tags")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, u64_at(r, 2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(RegistryGraph {
            manifests: by_id.into_values().collect(),
            tags,
        })
    }

    /// Evicts tag `id` if it was not used since `last_used`. True when evicted.
    pub fn evict_tag(&self, id: i64, last_used: u64) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM tags WHERE id = ?1 AND last_used = ?2",
            params![id, sql_u64(last_used)],
        )?;
        if n > 0 {
            add_counter_tx(&tx, counter::EVICTED_ENTRIES, 1)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// Deletes manifests the collector found unreachable, unless a tag names one now or it was
    /// pushed again since `created_before`. Returns how many went.
    pub fn delete_dead_manifests(&self, ids: &[i64], created_before: u64) -> rusqlite::Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut gone = 0;
        {
            let mut del = tx.prepare_cached(
                // Re-checked here, against what was committed since the graph was read: a tag
                // or an index pushed meanwhile may name the manifest again.
                "DELETE FROM manifests AS m WHERE id = ?1 AND created < ?2
                 AND NOT EXISTS (SELECT 1 FROM tags WHERE manifest_id = ?1)
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests p
                                 ON p.id = r.manifest_id
                                 WHERE r.digest = m.digest AND r.is_manifest = 1
                                 AND p.repo = m.repo AND p.id <> m.id)
                 RETURNING repo, digest",
            )?;
            let mut unlink =
                tx.prepare_cached("DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2")?;
            for id in ids {
                let row: Option<(String, String)> = del
                    .query_row(params![id, sql_u64(created_before)], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                if let Some((repo, digest)) = row {
                    unlink.execute(params![repo, digest])?;
                    gone += 1;
                }
            }
        }
        tx.commit()?;
        Ok(gone)
    }

    /// One page of tags, of `repo` or of every repository, sorted by (repository, tag) and
    /// starting after `after` (its `namespace` is the repository, its `key` the tag); `limit` is
    /// clamped to 1..=[`MAX_PAGE`]. Costs the page: the `(repo, tag)` unique index gives the rows
    /// in order from the cursor on (two statements, since `?1 IS NULL OR repo = ?1` defeats it).
    pub fn list_tags(
        &self,
        repo: Option<&str>,
        after: Option<&Cursor>,
        limit: u64,
    ) -> rusqlite::Result<Page<TagSummary>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let conn = self.read()?;
        let (repo_after, tag_after) = after
            .map(|c| (c.namespace.as_str(), c.key.as_str()))
            .unwrap_or(("", ""));
        let summary = |r: &rusqlite::Row<'_>| {
            Ok(TagSummary {
                repository: r.get(0)?,
                tag: r.get(1)?,
                digest: digest_at(r, 2)?,
                media_type: r.get(3)?,
                updated: u64_at(r, 4)?,
                last_used: u64_at(r, 5)?,
                hits: u64_at(r, 6)?,
                total_size: u64_at(r, 7)?,
            })
        };
        let mut items: Vec<TagSummary> = match repo {
            Some(repo) => {
                // A cursor of another repository (or none) starts at the repository's first tag.
                let tag_after = if repo_after == repo { tag_after } else { "" };
                conn.prepare_cached(&tags_sql(true))?
                    .query_map(params![repo, tag_after, sql_u64(limit + 1)], summary)?
                    .collect::<rusqlite::Result<_>>()?
            }
            None => conn
                .prepare_cached(&tags_sql(false))?
                .query_map(params![repo_after, tag_after, sql_u64(limit + 1)], summary)?
                .collect::<rusqlite::Result<_>>()?,
        };
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

    /// Number of tags and manifests (for stats).
    pub fn registry_counts(&self) -> rusqlite::Result<(u64, u64)> {
        self.conn().query_row(
            "SELECT (SELECT COUNT(*) FROM tags), (SELECT COUNT(*) FROM manifests)",
            [],
            |r| Ok((u64_at(r, 0)?, u64_at(r, 1)?)),
        )
    }
}

/// The columns of a [`TagSummary`], of `tags t JOIN manifests m`. The size counts the manifest,
/// its blobs and its children's blobs: for an image index that is every platform's layers, for a
/// BuildKit cache index every cached layer.
const TAG_COLUMNS: &str = "t.repo, t.tag, m.digest, m.media_type, t.updated, t.last_used, t.hits,
    m.size + COALESCE((
        SELECT SUM(b.size) FROM blobs b WHERE b.digest IN (
            SELECT r.digest FROM manifest_refs r WHERE r.manifest_id = m.id
            UNION
            SELECT cr.digest FROM manifest_refs r
            JOIN manifests c ON c.repo = m.repo AND c.digest = r.digest
            JOIN manifest_refs cr ON cr.manifest_id = c.id
            WHERE r.manifest_id = m.id AND r.is_manifest = 1
            UNION
            SELECT r.digest FROM manifest_refs r WHERE r.manifest_id = m.id
            AND r.is_manifest = 1)), 0)";

/// A page of tags after (`?1` repository, `?2` tag), at most `?3` rows: of repository `?1` only
/// when `one_repo`. Both read the `(repo, tag)` unique index from the cursor on.
pub(super) fn tags_sql(one_repo: bool) -> String {
    let page = if one_repo {
        "WHERE t.repo = ?1 AND t.tag > ?2 ORDER BY t.tag LIMIT ?3"
    } else {
        "WHERE (t.repo, t.tag) > (?1, ?2) ORDER BY t.repo, t.tag LIMIT ?3"
    };
    format!("SELECT {TAG_COLUMNS} FROM tags t JOIN manifests m ON m.id = t.manifest_id {page}")
}

/// Marks manifest `id` used at `t`.
fn touch_manifest(tx: &Transaction<'_>, id: i64, t: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE manifests SET last_used = ?2 WHERE id = ?1",
        params![id, sql_u64(t)],
    )?;
    Ok(())
}

/// The references of a manifest about to be stored in `repo` that the repository lacks.
fn missing_refs(
    tx: &Transaction<'_>,
    repo: &str,
    refs: &[Reference],
) -> rusqlite::Result<Vec<Digest>> {
    let mut blob = tx.prepare_cached(
        "SELECT 1 FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
         WHERE rb.repo = ?1 AND rb.digest = ?2",
    )?;
    let mut manifest =
        tx.prepare_cached("SELECT 1 FROM manifests WHERE repo = ?1 AND digest = ?2")?;
    let mut missing = Vec::new();
    for r in refs {
        let (d, is_manifest) = ref_parts(r);
        let stmt = if is_manifest {
            &mut manifest
        } else {
            &mut blob
        };
        let found = stmt
            .query_row(params![repo, d.to_string()], |_| Ok(()))
            .optional()?
            .is_some();
        if !found {
            missing.push(d);
        }
    }
    Ok(missing)
}
