//! Entries and blob rows: commits, refcounts, image rows, manifests, prefix matches, hits,
//! listings and the maintained totals.

use std::collections::BTreeSet;

use layercache_shared::api::MatchKind;
use layercache_shared::{CacheKey, Digest, Namespace};

use super::{Backend, conformance, d, entry, image_of};
use crate::store::sqlite::{Cursor, counter};

fn refcount(db: &dyn Backend, digest: &Digest) -> i64 {
    db.ints(&format!(
        "SELECT refcount FROM blobs WHERE digest = '{digest}'"
    ))[0]
}

/// The ids in `images` and the image ids `image_layers` rows name.
fn image_rows(db: &dyn Backend) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
    let ids = |sql: &str| -> BTreeSet<Digest> {
        db.texts(sql).iter().map(|s| s.parse().unwrap()).collect()
    };
    (
        ids("SELECT id FROM images"),
        ids("SELECT DISTINCT image_id FROM image_layers"),
    )
}

fn ns(s: &str) -> Namespace {
    s.parse().unwrap()
}

fn key(s: &str) -> CacheKey {
    s.parse().unwrap()
}

conformance! {
    fn refcounts_follow_commit_replace_and_delete(db) {
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        assert_eq!(refcount(db, &d("l1")), 2);
        assert_eq!(refcount(db, &d("l2")), 1);
        // Replacing a/k drops its reference to l2 and keeps one to l1.
        db.commit_entry(&entry("a", "k", &["l1", "l3"], &[])).unwrap();
        assert_eq!(refcount(db, &d("l1")), 2);
        assert_eq!(refcount(db, &d("l2")), 0);
        assert!(db.delete_entry(&ns("b"), &key("k")).unwrap());
        assert_eq!(refcount(db, &d("l1")), 1);
        assert!(!db.delete_entry(&ns("b"), &key("k")).unwrap());
        assert_eq!(db.stats().unwrap().entries, 1);
    }

    /// Regression: `images` and `image_layers` rows outlived the last entry using them (after a
    /// delete or a replace), so the index grew with every image ever pushed.
    fn images_go_with_the_last_entry_using_them(db) {
        let k = key("k");
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        // c/k shares a/k's image.
        db.commit_entry(&entry("c", "k", &["l1", "l2"], &[])).unwrap();
        // Replacing a/k with a different image keeps the shared one (c/k uses it).
        db.commit_entry(&entry("a", "k", &["l1", "l3"], &[])).unwrap();
        let all = BTreeSet::from([
            image_of(&["l1", "l2"]),
            image_of(&["l1"]),
            image_of(&["l1", "l3"]),
        ]);
        assert_eq!(image_rows(db), (all.clone(), all));
        // Deleting its last user removes the shared image and its layer rows.
        assert!(db.delete_entry(&ns("c"), &k).unwrap());
        assert!(db.delete_entry(&ns("b"), &k).unwrap());
        let left = BTreeSet::from([image_of(&["l1", "l3"])]);
        assert_eq!(image_rows(db), (left.clone(), left));
        assert!(!db.image_known(&image_of(&["l1", "l2"])).unwrap());
        // Refcounts are per entry, untouched by the image rows going.
        assert_eq!(refcount(db, &d("l1")), 1);
        assert_eq!(refcount(db, &d("l2")), 0);
        assert_eq!(refcount(db, &image_of(&["l1", "l2"])), 0);
        // An image pushed again after its rows went comes back whole.
        let id = db.commit_entry(&entry("c", "k", &["l1", "l2"], &[])).unwrap();
        assert_eq!(db.manifest(id).unwrap().images[0].layers.len(), 2);
        assert_eq!(refcount(db, &d("l2")), 1);
        assert!(db.delete_entry(&ns("c"), &k).unwrap());
        assert_eq!(refcount(db, &d("l2")), 0);
        assert_eq!(image_rows(db).0, BTreeSet::from([image_of(&["l1", "l3"])]));
    }

    /// Replacing an entry with one of the same image (a re-PUT of the same build) releases the
    /// image and takes it again in one transaction: its rows stay whole.
    fn replacing_an_entry_with_the_same_image_keeps_it(db) {
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        let id = db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        let m = db.manifest(id).unwrap();
        assert_eq!(m.images[0].id, image_of(&["l1", "l2"]));
        assert_eq!(m.images[0].layers.len(), 2);
        assert_eq!(refcount(db, &d("l1")), 1);
        let one = BTreeSet::from([image_of(&["l1", "l2"])]);
        assert_eq!(image_rows(db), (one.clone(), one));
    }

    fn manifest_lists_layers_sizes_and_prefixes(db) {
        let id = db.commit_entry(&entry("a/b", "k", &["l1", "l2"], &["p1", "p2"])).unwrap();
        let m = db.manifest(id).unwrap();
        assert_eq!(m.namespace.as_str(), "a/b");
        assert_eq!(m.images.len(), 1);
        assert_eq!(m.images[0].layers.len(), 2);
        assert_eq!(m.images[0].tags, vec!["a:1".to_string()]);
        assert_eq!(m.total_size, 210);
        assert_eq!(m.prefixes, vec![d("p1"), d("p2")]);
        // A gone entry is "no row", which lookups retry.
        assert!(db.manifest(id + 1000).unwrap_err().is_no_row());
        let found = db.find_manifest(&ns("a/b"), &key("k")).unwrap().unwrap();
        assert_eq!(found.0, id);
        assert!(db.find_manifest(&ns("a/b"), &key("nope")).unwrap().is_none());
    }

    fn prefix_match_prefers_depth_then_namespace_order(db) {
        let shallow = db.commit_entry(&entry("main", "k1", &["l1"], &["p1", "x2"])).unwrap();
        let deep_late = db
            .commit_entry(&entry("main", "k2", &["l2"], &["p1", "p2", "y3"]))
            .unwrap();
        let deep_early = db.commit_entry(&entry("br", "k3", &["l3"], &["p1", "p2"])).unwrap();
        db.commit_entry(&entry("zzz", "k4", &["l4"], &["p1", "p2", "p3"])).unwrap();
        let both = vec![ns("br"), ns("main")];
        let asked = [d("p1"), d("p2"), d("p3")];
        assert_eq!(db.find_prefix(&both, &asked).unwrap(), Some((deep_early, 2)));
        let main = vec![ns("main")];
        assert_eq!(db.find_prefix(&main, &asked).unwrap(), Some((deep_late, 2)));
        // k1 and k2 share depth 1: the more recently used wins, until k1 is used again.
        assert_eq!(db.find_prefix(&main, &[d("p1"), d("q")]).unwrap(), Some((deep_late, 1)));
        db.record_hit(shallow, None).unwrap();
        // Uses may be queued (SQLite's `uses`); the prefix order follows them once written.
        db.flush_uses().unwrap();
        assert_eq!(db.find_prefix(&main, &[d("p1"), d("q")]).unwrap(), Some((shallow, 1)));
        assert_eq!(db.find_prefix(&main, &[d("q")]).unwrap(), None);
    }

    /// What a lookup finds, by kind: exact in the first namespace, fallback in a later one, else
    /// the longest shared prefix.
    fn find_match_tries_exact_then_fallback_then_prefix(db) {
        let main = db.commit_entry(&entry("main", "k", &["l1"], &["p1"])).unwrap();
        let br = db.commit_entry(&entry("br", "k2", &["l2"], &["p1", "p2"])).unwrap();
        let m = db.find_match(&[ns("main")], &key("k"), &[]).unwrap().unwrap();
        assert_eq!((m.0, m.1, m.2), (main, MatchKind::Exact, None));
        let m = db.find_match(&[ns("br"), ns("main")], &key("k"), &[]).unwrap().unwrap();
        assert_eq!((m.0, m.1), (main, MatchKind::Fallback));
        let m = db
            .find_match(&[ns("br"), ns("main")], &key("new"), &[d("p1"), d("p2")])
            .unwrap()
            .unwrap();
        assert_eq!((m.0, m.1, m.2), (br, MatchKind::Prefix, Some(2)));
        assert_eq!(m.3.namespace.as_str(), "br");
        assert!(db.find_match(&[ns("x")], &key("k"), &[d("p1")]).unwrap().is_none());
    }

    fn hits_and_counters_show_in_stats(db) {
        let id = db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
        db.record_hit(id, Some(MatchKind::Fallback)).unwrap();
        db.record_hit(id, None).unwrap();
        db.add_counter(counter::MISSES, 1).unwrap();
        db.add_counters(&[(counter::BYTES_SERVED, 5), (counter::BYTES_RECEIVED, 0)]).unwrap();
        let s = db.stats().unwrap();
        assert_eq!((s.hits, s.hits_fallback, s.misses, s.blobs), (2, 1, 1, 2));
        assert_eq!((s.stored_bytes, s.bytes_served), (110, 5));
        assert_eq!(db.manifest(id).unwrap().hits, 2);
        let list = db.list_entries(Some(&ns("a")), None, 10).unwrap().items;
        assert_eq!((list.len(), list[0].layers, list[0].images), (1, 1, 1));
        assert!(db.list_entries(Some(&ns("b")), None, 10).unwrap().items.is_empty());
        assert_eq!(db.entry_summary(id).unwrap().unwrap().hits, 2);
        assert!(db.counters().unwrap().contains(&(counter::BYTES_SERVED.to_string(), 5)));
    }

    /// Issue 14: listings are pages; following `next` from the first page lists every entry
    /// once, in name order (bytewise, as SQLite sorts), for all namespaces and for one.
    fn listings_page_with_a_cursor(db) {
        let mut want = Vec::new();
        for i in 0..7 {
            for n in ["b", "a", "B"] {
                db.commit_entry(&entry(n, &format!("k{i}"), &["l1"], &[])).unwrap();
                want.push(format!("{n}/k{i}"));
            }
        }
        want.sort();
        let walk = |n: Option<&Namespace>| -> Vec<String> {
            let mut out = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = db.list_entries(n, cursor.as_ref(), 3).unwrap();
                assert!(page.items.len() <= 3);
                out.extend(page.items.iter().map(|e| format!("{}/{}", e.namespace, e.key)));
                // The cursor survives its text form.
                cursor = page.next.map(|c| Cursor::decode(&c.encode()).unwrap());
                if cursor.is_none() {
                    return out;
                }
            }
        };
        assert_eq!(walk(None), want);
        let only_a: Vec<String> = want.iter().filter(|n| n.starts_with("a/")).cloned().collect();
        assert_eq!(walk(Some(&ns("a"))), only_a);
        assert!(Cursor::decode("zz").is_none());
    }

    /// Issue 14: the totals kept on write match a count of the tables through commits,
    /// replacements and deletes.
    fn maintained_totals_match_the_tables(db) {
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        db.commit_entry(&entry("a", "k", &["l1", "l3"], &[])).unwrap();
        assert!(db.insert_blob(&d("loose"), 7).unwrap());
        assert!(!db.insert_blob(&d("loose"), 7).unwrap());
        assert!(db.delete_entry(&ns("b"), &key("k")).unwrap());
        let count = |sql: &str| -> u64 { db.ints(sql)[0] as u64 };
        let s = db.stats().unwrap();
        assert_eq!(s.entries, count("SELECT COUNT(*) FROM entries"));
        assert_eq!(s.blobs, count("SELECT COUNT(*) FROM blobs"));
        assert_eq!(s.stored_bytes, count("SELECT CAST(SUM(size) AS BIGINT) FROM blobs"));
        assert_eq!(db.stored_bytes().unwrap(), s.stored_bytes);
        let totals = db.namespace_totals().unwrap();
        assert_eq!(totals.len(), 1, "b went with its last entry: {totals:?}");
        assert_eq!((totals[0].0.as_str(), totals[0].1, totals[0].2), ("a", 1, 210));
    }

    /// Issue 14: a prefix match reads only the asked namespaces' rows, and prefers the most
    /// recently used entry at equal depth even within one second.
    fn prefix_matches_follow_use_order_within_a_namespace(db) {
        let first = db.commit_entry(&entry("main", "k1", &["l1"], &["p1"])).unwrap();
        let second = db.commit_entry(&entry("main", "k2", &["l2"], &["p1"])).unwrap();
        db.commit_entry(&entry("other", "k3", &["l3"], &["p1"])).unwrap();
        let main = vec![ns("main")];
        assert_eq!(db.find_prefix(&main, &[d("p1")]).unwrap(), Some((second, 1)));
        db.record_hit(first, None).unwrap();
        db.flush_uses().unwrap();
        assert_eq!(db.find_prefix(&main, &[d("p1")]).unwrap(), Some((first, 1)));
        assert_eq!(db.find_prefix(&[ns("nobody")], &[d("p1")]).unwrap(), None);
    }

    /// The collector's view and transactions: usage in use order, eviction only when unused
    /// since it was read, unreferenced blobs deleted once nothing names them.
    fn the_collector_evicts_what_was_not_used_since_it_looked(db) {
        let old = db.commit_entry(&entry("a", "old", &["l1", "l2"], &[])).unwrap();
        let new = db.commit_entry(&entry("a", "new", &["l2"], &[])).unwrap();
        let usage = db.entry_usage().unwrap();
        assert_eq!(usage.len(), 2);
        let stamp = |id: i64| {
            usage
                .iter()
                .find(|u| u.id == crate::lru::Holder::Entry(id))
                .unwrap()
                .last_used
        };
        assert!(stamp(old) < stamp(new), "stamps follow the order of use");
        assert_eq!(usage[0].blobs.len() + usage[1].blobs.len(), 5);
        // Used since the collector looked: kept.
        db.record_hit(old, None).unwrap();
        assert!(!db.evict_entry(old, stamp(old)).unwrap());
        assert!(db.evict_entry(new, stamp(new)).unwrap());
        assert_eq!(db.stats().unwrap().evicted_entries, 1);
        assert!(!db.anything_expired(0, 0).unwrap());
        assert!(db.anything_expired(u64::MAX / 2, 0).unwrap());
        let unreferenced = db.unreferenced_blobs(u64::MAX / 2).unwrap();
        assert_eq!(unreferenced, vec![image_of(&["l2"])]);
        let deleted = db.delete_unreferenced(&unreferenced).unwrap();
        assert_eq!(deleted, vec![(image_of(&["l2"]), 10)]);
        assert!(db.delete_unreferenced(&[d("l1")]).unwrap().is_empty(), "l1 is referenced");
        assert_eq!(db.blob_rows().unwrap().len(), 3);
        assert_eq!(db.blob_digests().unwrap().len(), 3);
        assert_eq!(db.blob_size(&d("l1")).unwrap(), Some(100));
        assert_eq!(db.blob_sizes(&[d("l1"), d("nope")]).unwrap().len(), 1);
        let s = db.stats().unwrap();
        assert_eq!((s.collected_blobs, s.evicted_bytes), (1, 10));
    }

    /// `verify`: a corrupt blob takes every entry using it with it.
    fn a_corrupt_blob_drops_the_entries_using_it(db) {
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        db.commit_entry(&entry("b", "k", &["l2"], &[])).unwrap();
        let kept = db.commit_entry(&entry("c", "k", &["l3"], &[])).unwrap();
        assert_eq!(db.drop_corrupt_blob(&d("l2")).unwrap(), 2);
        assert_eq!(db.blob_size(&d("l2")).unwrap(), None);
        assert_eq!(db.stats().unwrap().entries, 1);
        assert_eq!(db.stats().unwrap().quarantined_blobs, 1);
        assert!(db.manifest(kept).is_ok());
        assert_eq!(refcount(db, &d("l1")), 0);
    }
}
