//! Tests of the entry and blob tables.

use super::*;
use layercache_shared::api::MatchKind;
use std::collections::BTreeSet;

pub(super) fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

pub(super) fn entry(ns: &str, key: &str, layers: &[&str], prefixes: &[&str]) -> NewEntry {
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

fn refcount(db: &Db, digest: &Digest) -> i64 {
    db.conn()
        .query_row(
            "SELECT refcount FROM blobs WHERE digest = ?1",
            [digest.to_string()],
            |r| r.get(0),
        )
        .unwrap()
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

#[test]
fn refcounts_follow_commit_replace_and_delete() {
    let (_dir, db) = db();
    db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
        .unwrap();
    db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
    assert_eq!(refcount(&db, &d("l1")), 2);
    assert_eq!(refcount(&db, &d("l2")), 1);
    // Replacing a/k drops its reference to l2 and keeps one to l1.
    db.commit_entry(&entry("a", "k", &["l1", "l3"], &[]))
        .unwrap();
    assert_eq!(refcount(&db, &d("l1")), 2);
    assert_eq!(refcount(&db, &d("l2")), 0);
    assert!(
        db.delete_entry(&"b".parse().unwrap(), &"k".parse().unwrap())
            .unwrap()
    );
    assert_eq!(refcount(&db, &d("l1")), 1);
    assert!(
        !db.delete_entry(&"b".parse().unwrap(), &"k".parse().unwrap())
            .unwrap()
    );
    assert_eq!(db.stats().unwrap().entries, 1);
}

/// Regression: `images` and `image_layers` rows outlived the last entry using them (after a
/// delete or a replace), so the index grew with every image ever pushed.
#[test]
fn images_go_with_the_last_entry_using_them() {
    let (_dir, db) = db();
    let ns = |s: &str| -> Namespace { s.parse().unwrap() };
    let k: CacheKey = "k".parse().unwrap();
    db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
        .unwrap();
    db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
    // c/k shares a/k's image.
    db.commit_entry(&entry("c", "k", &["l1", "l2"], &[]))
        .unwrap();
    // Replacing a/k with a different image keeps the shared one (c/k uses it).
    db.commit_entry(&entry("a", "k", &["l1", "l3"], &[]))
        .unwrap();
    let all = BTreeSet::from([
        image_of(&["l1", "l2"]),
        image_of(&["l1"]),
        image_of(&["l1", "l3"]),
    ]);
    assert_eq!(image_rows(&db), (all.clone(), all));
    // Deleting its last user removes the shared image and its layer rows.
    assert!(db.delete_entry(&ns("c"), &k).unwrap());
    assert!(db.delete_entry(&ns("b"), &k).unwrap());
    let left = BTreeSet::from([image_of(&["l1", "l3"])]);
    assert_eq!(image_rows(&db), (left.clone(), left));
    assert!(!db.image_known(&image_of(&["l1", "l2"])).unwrap());
    // Refcounts are per entry, untouched by the image rows going.
    assert_eq!(refcount(&db, &d("l1")), 1);
    assert_eq!(refcount(&db, &d("l2")), 0);
    assert_eq!(refcount(&db, &image_of(&["l1", "l2"])), 0);
    // An image pushed again after its rows went comes back whole.
    let id = db
        .commit_entry(&entry("c", "k", &["l1", "l2"], &[]))
        .unwrap();
    assert_eq!(db.manifest(id).unwrap().images[0].layers.len(), 2);
    assert_eq!(refcount(&db, &d("l2")), 1);
    assert!(db.delete_entry(&ns("c"), &k).unwrap());
    assert_eq!(refcount(&db, &d("l2")), 0);
    assert_eq!(image_rows(&db).0, BTreeSet::from([image_of(&["l1", "l3"])]));
}

/// Replacing an entry with one of the same image (a re-PUT of the same build) releases the
/// image and takes it again in one transaction: its rows stay whole.
#[test]
fn replacing_an_entry_with_the_same_image_keeps_it() {
    let (_dir, db) = db();
    db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
        .unwrap();
    let id = db
        .commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
        .unwrap();
    let m = db.manifest(id).unwrap();
    assert_eq!(m.images[0].id, image_of(&["l1", "l2"]));
    assert_eq!(m.images[0].layers.len(), 2);
    assert_eq!(refcount(&db, &d("l1")), 1);
    let one = BTreeSet::from([image_of(&["l1", "l2"])]);
    assert_eq!(image_rows(&db), (one.clone(), one));
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
             DROP TABLE repo_blobs; DROP TABLE blob_uploads;
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

#[test]
fn manifest_lists_layers_sizes_and_prefixes() {
    let (_dir, db) = db();
    let id = db
        .commit_entry(&entry("a/b", "k", &["l1", "l2"], &["p1", "p2"]))
        .unwrap();
    let m = db.manifest(id).unwrap();
    assert_eq!(m.namespace.as_str(), "a/b");
    assert_eq!(m.images.len(), 1);
    assert_eq!(m.images[0].layers.len(), 2);
    assert_eq!(m.images[0].tags, vec!["a:1".to_string()]);
    assert_eq!(m.total_size, 210);
    assert_eq!(m.prefixes, vec![d("p1"), d("p2")]);
}

#[test]
fn prefix_match_prefers_depth_then_namespace_order() {
    let (_dir, db) = db();
    let shallow = db
        .commit_entry(&entry("main", "k1", &["l1"], &["p1", "x2"]))
        .unwrap();
    let deep_late = db
        .commit_entry(&entry("main", "k2", &["l2"], &["p1", "p2", "y3"]))
        .unwrap();
    let deep_early = db
        .commit_entry(&entry("br", "k3", &["l3"], &["p1", "p2"]))
        .unwrap();
    let other_ns = db
        .commit_entry(&entry("zzz", "k4", &["l4"], &["p1", "p2", "p3"]))
        .unwrap();
    let ns: Vec<Namespace> = vec!["br".parse().unwrap(), "main".parse().unwrap()];
    let asked = [d("p1"), d("p2"), d("p3")];
    assert_eq!(db.find_prefix(&ns, &asked).unwrap(), Some((deep_early, 2)));
    let ns_main: Vec<Namespace> = vec!["main".parse().unwrap()];
    assert_eq!(
        db.find_prefix(&ns_main, &asked).unwrap(),
        Some((deep_late, 2))
    );
    // k1 and k2 share depth 1: the more recently used wins (k2, committed after k1; whole-second
    // recency used to call them tied and take the older), until k1 is used again.
    assert_eq!(
        db.find_prefix(&ns_main, &[d("p1"), d("q")]).unwrap(),
        Some((deep_late, 1))
    );
    db.record_hit(shallow, None).unwrap();
    // Uses are queued (see `uses`); the prefix order follows them once written.
    assert_eq!(
        db.find_prefix(&ns_main, &[d("p1"), d("q")]).unwrap(),
        Some((deep_late, 1))
    );
    db.flush_uses().unwrap();
    assert_eq!(
        db.find_prefix(&ns_main, &[d("p1"), d("q")]).unwrap(),
        Some((shallow, 1))
    );
    assert_eq!(db.find_prefix(&ns_main, &[d("q")]).unwrap(), None);
    let _ = other_ns;
}

#[test]
fn hits_and_counters_show_in_stats() {
    let (_dir, db) = db();
    let id = db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
    db.record_hit(id, Some(MatchKind::Fallback)).unwrap();
    db.record_hit(id, None).unwrap();
    db.add_counter(counter::MISSES, 1).unwrap();
    let s = db.stats().unwrap();
    assert_eq!((s.hits, s.hits_fallback, s.misses, s.blobs), (2, 1, 1, 2));
    assert_eq!(s.stored_bytes, 110);
    assert_eq!(db.manifest(id).unwrap().hits, 2);
    let list = db
        .list_entries(Some(&"a".parse().unwrap()), None, 10)
        .unwrap()
        .items;
    assert_eq!((list.len(), list[0].layers, list[0].images), (1, 1, 1));
    assert!(
        db.list_entries(Some(&"b".parse().unwrap()), None, 10)
            .unwrap()
            .items
            .is_empty()
    );
}

/// Issue 14: listings are pages; following `next` from the first page lists every entry once,
/// in name order, for all namespaces and for one.
#[test]
fn listings_page_with_a_cursor() {
    let (_dir, db) = db();
    let mut want = Vec::new();
    for i in 0..7 {
        for ns in ["b", "a"] {
            db.commit_entry(&entry(ns, &format!("k{i}"), &["l1"], &[]))
                .unwrap();
            want.push(format!("{ns}/k{i}"));
        }
    }
    want.sort();
    let walk = |ns: Option<&Namespace>| -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = db.list_entries(ns, cursor.as_ref(), 3).unwrap();
            assert!(page.items.len() <= 3);
            out.extend(
                page.items
                    .iter()
                    .map(|e| format!("{}/{}", e.namespace, e.key)),
            );
            // The cursor survives its text form.
            cursor = page.next.map(|c| Cursor::decode(&c.encode()).unwrap());
            if cursor.is_none() {
                return out;
            }
        }
    };
    assert_eq!(walk(None), want);
    let a: Namespace = "a".parse().unwrap();
    let only_a: Vec<String> = want
        .iter()
        .filter(|n| n.starts_with("a/"))
        .cloned()
        .collect();
    assert_eq!(walk(Some(&a)), only_a);
    assert!(Cursor::decode("zz").is_none());
}

/// Issue 14: the totals the triggers keep match a count of the tables through commits,
/// replacements and deletes.
#[test]
fn maintained_totals_match_the_tables() {
    let (_dir, db) = db();
    db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
        .unwrap();
    db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
    db.commit_entry(&entry("a", "k", &["l1", "l3"], &[]))
        .unwrap();
    db.insert_blob(&d("loose"), 7).unwrap();
    assert!(
        db.delete_entry(&"b".parse().unwrap(), &"k".parse().unwrap())
            .unwrap()
    );
    let conn = db.conn();
    let count = |sql: &str| -> u64 { conn.query_row(sql, [], |r| u64_at(r, 0)).unwrap() };
    let t = totals(&conn).unwrap();
    assert_eq!(t.entries, count("SELECT COUNT(*) FROM entries"));
    assert_eq!(t.blobs, count("SELECT COUNT(*) FROM blobs"));
    assert_eq!(t.blob_bytes, count("SELECT SUM(size) FROM blobs"));
    drop(conn);
    let ns = db.namespace_totals().unwrap();
    assert_eq!(ns.len(), 1, "b went with its last entry: {ns:?}");
    assert_eq!((ns[0].0.as_str(), ns[0].1, ns[0].2), ("a", 1, 210));
}

/// Issue 14: a prefix match reads only the asked namespaces' rows, and prefers the most recently
/// used entry at equal depth even within one second.
#[test]
fn prefix_matches_follow_use_order_within_a_namespace() {
    let (_dir, db) = db();
    let first = db
        .commit_entry(&entry("main", "k1", &["l1"], &["p1"]))
        .unwrap();
    let second = db
        .commit_entry(&entry("main", "k2", &["l2"], &["p1"]))
        .unwrap();
    db.commit_entry(&entry("other", "k3", &["l3"], &["p1"]))
        .unwrap();
    let main: Vec<Namespace> = vec!["main".parse().unwrap()];
    assert_eq!(
        db.find_prefix(&main, &[d("p1")]).unwrap(),
        Some((second, 1))
    );
    db.record_hit(first, None).unwrap();
    db.flush_uses().unwrap();
    assert_eq!(db.find_prefix(&main, &[d("p1")]).unwrap(), Some((first, 1)));
    let nobody: Vec<Namespace> = vec!["nobody".parse().unwrap()];
    assert_eq!(db.find_prefix(&nobody, &[d("p1")]).unwrap(), None);
}
