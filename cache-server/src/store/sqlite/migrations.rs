//! The schema: append-only migration steps and the loop that applies them.
//!
//! [`MIGRATIONS`]`[i]` moves `user_version` from `i` to `i + 1`; never edit a step that shipped.

use rusqlite::Connection;

/// Schema steps; never edit one that shipped, append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    total_size INTEGER NOT NULL,
    UNIQUE (namespace, key)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    parent TEXT,
    config_size INTEGER NOT NULL
);
CREATE TABLE image_layers (
    image_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    PRIMARY KEY (image_id, idx)
);
CREATE TABLE entry_images (
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    image_id TEXT NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL,
    tags TEXT NOT NULL,
    parent TEXT,
    PRIMARY KEY (entry_id, position)
);
CREATE TABLE entry_prefixes (
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    depth INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (entry_id, depth)
);
CREATE INDEX entry_prefixes_by_hash ON entry_prefixes (hash, depth);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    // Access (issue 5): bearer tokens, stored as the sha256 of the token, never the token; and
    // indexes for "which namespaces reference this blob" (blob GET by a namespace-limited token).
    r#"
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    namespaces TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER,
    revoked INTEGER
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked IS NULL;
CREATE INDEX image_layers_by_diff_id ON image_layers (diff_id);
CREATE INDEX entry_images_by_image ON entry_images (image_id);
"#,
    // Issue 4 (dashboard, /metrics): see `insights` for how these tables are used.
    r#"
CREATE TABLE activity (
    width INTEGER NOT NULL,
    start INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (width, start, namespace, kind)
);
CREATE TABLE lookup_totals (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (namespace, kind)
);
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    cache TEXT NOT NULL,
    lookup_s REAL NOT NULL,
    restore_s REAL NOT NULL,
    build_s REAL NOT NULL,
    push_s REAL NOT NULL,
    total_s REAL NOT NULL,
    saved_s REAL NOT NULL,
    image_id TEXT
);
CREATE INDEX builds_by_key ON builds (key, cache, at);
CREATE INDEX builds_by_at ON builds (at);
CREATE INDEX blobs_by_size ON blobs (size);
CREATE INDEX entries_by_size ON entries (total_size);
"#,
    // Images no entry uses, which earlier versions kept after their last entry went (now
    // `release_entry` removes them with it).
    r#"
DELETE FROM image_layers WHERE image_id NOT IN (SELECT image_id FROM entry_images);
DELETE FROM images WHERE id NOT IN (SELECT image_id FROM entry_images);
"#,
    // Issue 10, the registry protocol: see `registry` for how these tables are used.
    r#"
CREATE TABLE repo_blobs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX repo_blobs_by_digest ON repo_blobs (digest);
CREATE TABLE manifests (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    UNIQUE (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;
CREATE INDEX manifests_by_digest ON manifests (digest);
CREATE TABLE manifest_refs (
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    is_manifest INTEGER NOT NULL,
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_refs_by_digest ON manifest_refs (digest);
CREATE TABLE tags (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    updated INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo, tag)
);
CREATE INDEX tags_by_manifest ON tags (manifest_id);
"#,
    // Issue 12: who uploaded a blob through the v1 blob routes, so a commit may name blobs its
    // caller uploaded in full, besides blobs of namespaces it reads (see `Db::visible_blobs`).
    r#"
CREATE TABLE blob_uploads (
    digest TEXT NOT NULL,
    token_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (digest, token_id)
) WITHOUT ROWID;
"#,
    // Issue 14, fast at fleet size. Recency precise enough that eviction follows the order of
    // use: `last_use` is a per-database use stamp (milliseconds since the epoch, bumped to stay
    // strictly increasing; see `Db::use_stamp`). The namespace and use stamp beside each prefix
    // row, so a prefix match is one index seek per namespace asked. Totals maintained by triggers, so `/v1/stats`,
    // `/metrics` and the dashboard read one row instead of counting the cache. Unreferenced blobs
    // indexed for the collector. Blobs flagged `layer` (an entry uses them as a layer, not only
    // as a config) with a size index of the referenced ones, for the largest layers.
    r#"
ALTER TABLE entries ADD COLUMN last_use INTEGER NOT NULL DEFAULT 0;
UPDATE entries SET last_use = last_used * 1000;
CREATE INDEX entries_by_last_use ON entries (last_use);
ALTER TABLE entry_prefixes ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
ALTER TABLE entry_prefixes ADD COLUMN last_use INTEGER NOT NULL DEFAULT 0;
UPDATE entry_prefixes SET
    namespace = (SELECT namespace FROM entries WHERE id = entry_id),
    last_use = (SELECT last_use FROM entries WHERE id = entry_id);
DROP INDEX entry_prefixes_by_hash;
CREATE INDEX entry_prefixes_by_namespace ON entry_prefixes (hash, depth, namespace, last_use);
CREATE INDEX blobs_unreferenced ON blobs (created) WHERE refcount = 0;
ALTER TABLE blobs ADD COLUMN layer INTEGER NOT NULL DEFAULT 0;
UPDATE blobs SET layer = 1 WHERE digest IN (SELECT diff_id FROM image_layers);
CREATE INDEX blobs_layers_by_size ON blobs (size) WHERE layer = 1 AND refcount > 0;
CREATE TABLE totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO totals (name, value) VALUES
    ('entries', (SELECT COUNT(*) FROM entries)),
    ('blobs', (SELECT COUNT(*) FROM blobs)),
    ('blob_bytes', (SELECT COALESCE(SUM(size), 0) FROM blobs));
CREATE TABLE namespace_totals (
    namespace TEXT PRIMARY KEY,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO namespace_totals (namespace, entries, bytes)
    SELECT namespace, COUNT(*), SUM(total_size) FROM entries GROUP BY namespace;
CREATE TRIGGER entries_total_insert AFTER INSERT ON entries BEGIN
    UPDATE totals SET value = value + 1 WHERE name = 'entries';
    INSERT OR IGNORE INTO namespace_totals (namespace, entries, bytes) VALUES (new.namespace, 0, 0);
    UPDATE namespace_totals SET entries = entries + 1, bytes = bytes + new.total_size
        WHERE namespace = new.namespace;
END;
CREATE TRIGGER entries_total_delete AFTER DELETE ON entries BEGIN
    UPDATE totals SET value = value - 1 WHERE name = 'entries';
    UPDATE namespace_totals SET entries = entries - 1, bytes = bytes - old.total_size
        WHERE namespace = old.namespace;
    DELETE FROM namespace_totals WHERE namespace = old.namespace AND entries <= 0;
END;
CREATE TRIGGER blobs_total_insert AFTER INSERT ON blobs BEGIN
    UPDATE totals SET value = value + 1 WHERE name = 'blobs';
    UPDATE totals SET value = value + new.size WHERE name = 'blob_bytes';
END;
CREATE TRIGGER blobs_total_delete AFTER DELETE ON blobs BEGIN
    UPDATE totals SET value = value - 1 WHERE name = 'blobs';
    UPDATE totals SET value = value - old.size WHERE name = 'blob_bytes';
END;
CREATE TRIGGER blobs_total_resize AFTER UPDATE OF size ON blobs BEGIN
    UPDATE totals SET value = value - old.size + new.size WHERE name = 'blob_bytes';
END;
"#,
    // Issue 14: the recent builds of one namespace (dashboard, `GET /v1/builds?namespace=`) read
    // from an index instead of scanning every report.
    r#"
CREATE INDEX builds_by_namespace_at ON builds (namespace, at);
"#,
    // Issue 15: registry upload sessions shared by the replicas on one index (`sessions`).
    r#"
CREATE TABLE upload_sessions (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    received INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    hash_state BLOB NOT NULL,
    created INTEGER NOT NULL,
    last_active INTEGER NOT NULL,
    closing INTEGER NOT NULL
);
CREATE INDEX upload_sessions_by_last_active ON upload_sessions (last_active);
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
