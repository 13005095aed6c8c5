//! SQLite-only tests: its migrations on databases of earlier versions. Everything both backends
//! promise is tested on both in `store::conformance`.

use super::*;
use std::collections::BTreeSet;

/// A fresh index in a temp dir (kept while the returned dir lives).
pub(super) fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn entry(ns: &str, key: &str, layers: &[&str], prefixes: &[&str]) -> NewEntry {
    NewEntry {
        namespace: ns.parse().unwrap(),
        key: key.parse().unwrap(),
        images: vec![NewImage {
            id: image_of(layers),
            parent: None,
            tags: vec!["a:1".into()],
            config_size: 10,
            layers: layers.iter().map(|l| (d(l), 100)).collect(),
        }],
        prefixes: prefixes.iter().map(|p| d(p)).collect(),
    }
}

/// The ids in `images` and the image ids `image_layers` rows name.
fn image_rows(db: &Db) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
    let conn = db.conn();
    let ids = |sql: &str| -> BTreeSet<Digest> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| digest_at(r, 0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    (
        ids("SELECT id FROM images"),
        ids("SELECT DISTINCT image_id FROM image_layers"),
    )
}

/// The config digest [`entry`] gives an image of these layers.
fn image_of(layers: &[&str]) -> Digest {
    d(&format!("config-{}", layers.join("+")))
}

#[test]
fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Db::open(&path)
        .unwrap()
        .commit_entry(&entry("a", "k", &["l1"], &[]))
        .unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().unwrap().entries, 1);
}

/// Databases of earlier versions hold images no entry uses; opening one removes them.
#[test]
fn opening_removes_images_left_by_earlier_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let db = Db::open(&path).unwrap();
        db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
        let conn = db.conn();
        conn.execute_batch(&format!(
            "INSERT INTO images (id, parent, config_size) VALUES ('{0}', NULL, 10);
             INSERT INTO image_layers (image_id, idx, diff_id) VALUES ('{0}', 0, '{1}');
             DROP TABLE tags; DROP TABLE manifest_refs; DROP TABLE manifests;
             DROP TABLE repo_blobs; DROP TABLE blob_uploads; DROP TABLE upload_sessions;
             DROP TRIGGER entries_total_insert; DROP TRIGGER entries_total_delete;
             DROP TRIGGER blobs_total_insert; DROP TRIGGER blobs_total_delete;
             DROP TRIGGER blobs_total_resize; DROP TABLE totals; DROP TABLE namespace_totals;
             DROP INDEX entries_by_last_use; ALTER TABLE entries DROP COLUMN last_use;
             DROP INDEX entry_prefixes_by_namespace;
             ALTER TABLE entry_prefixes DROP COLUMN namespace;
             ALTER TABLE entry_prefixes DROP COLUMN last_use;
             CREATE INDEX entry_prefixes_by_hash ON entry_prefixes (hash, depth);
             DROP INDEX blobs_unreferenced; DROP INDEX blobs_layers_by_size;
             ALTER TABLE blobs DROP COLUMN layer; DROP INDEX builds_by_namespace_at;
             PRAGMA user_version = 3;",
            image_of(&["old"]),
            d("old"),
        ))
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let kept = BTreeSet::from([image_of(&["l1"])]);
    assert_eq!(image_rows(&db), (kept.clone(), kept));
    // Migration 7 filled the totals and the prefix namespaces from the existing rows.
    assert_eq!(db.stats().unwrap().entries, 1);
    assert_eq!(db.namespace_totals().unwrap().len(), 1);
}
