//! Activity history, build reports, the largest entries and layers, shared layers and the
//! all-time lookup totals.

use layercache_shared::api::{BuildCache, BuildReport, BuildSeconds, MatchKind, StatsHistory};
use layercache_shared::{Digest, Namespace};

use super::{conformance, entry};

fn ns(s: &str) -> Namespace {
    s.parse().unwrap()
}

fn report(ns_: &str, key: &str, cache: BuildCache, total: f64) -> BuildReport {
    BuildReport {
        namespace: ns(ns_),
        key: key.parse().unwrap(),
        cache,
        seconds: BuildSeconds {
            total,
            ..BuildSeconds::default()
        },
        image_id: None,
    }
}

/// 2024-01-01T00:00:00Z, a whole hour.
const T0: u64 = 1_704_067_200;
const HOUR: u64 = 3600;

conformance! {
    fn history_buckets_by_minute_and_hour_and_filters_by_namespace(db) {
        db.record_hit_activity_at(&ns("a"), Some(MatchKind::Exact), T0 + 5).unwrap();
        db.record_hit_activity_at(&ns("b"), Some(MatchKind::Prefix), T0 + 65).unwrap();
        db.record_miss_at(&ns("a"), T0 + 70).unwrap();
        let now = T0 + 30 * 60;
        let h = db.history("1h", None, now).unwrap().unwrap();
        assert_eq!((h.points.len(), h.bucket_seconds), (60, 60));
        assert_eq!(h.points.last().unwrap().start, now);
        let at = |start: u64| h.points.iter().find(|p| p.start == start).unwrap();
        assert_eq!((at(T0).hits, at(T0).hits_exact, at(T0).misses), (1, 1, 0));
        assert_eq!((at(T0 + 60).hits_prefix, at(T0 + 60).misses), (1, 1));
        let only_a = db.history("1h", Some(&ns("a")), now).unwrap().unwrap();
        let sum = |h: &StatsHistory| -> (u64, u64) {
            h.points.iter().fold((0, 0), |(x, y), p| (x + p.hits, y + p.misses))
        };
        assert_eq!(sum(&only_a), (1, 1));
        let day = db.history("24h", None, now).unwrap().unwrap();
        assert_eq!((day.points.len(), sum(&day)), (24, (2, 1)));
        assert_eq!(day.points.last().unwrap().start, T0);
        assert!(db.history("7d", None, now).unwrap().is_none());
        // Two hours on, the minute window is empty but the day still holds the events.
        let later = T0 + 2 * HOUR + 60;
        assert_eq!(sum(&db.history("1h", None, later).unwrap().unwrap()), (0, 0));
        assert_eq!(sum(&db.history("24h", None, later).unwrap().unwrap()), (2, 1));
    }

    fn expired_minute_buckets_are_pruned_on_write(db) {
        db.record_miss_at(&ns("a"), T0).unwrap();
        db.record_miss_at(&ns("a"), T0 + 3 * HOUR).unwrap();
        assert_eq!(db.ints("SELECT COUNT(*) FROM activity WHERE width = 60"), vec![1]);
        // All-time totals keep both.
        assert_eq!(
            db.lookup_totals().unwrap(),
            vec![("a".to_string(), "miss".to_string(), 2)]
        );
    }

    fn time_saved_is_the_last_cold_build_of_the_key_minus_this_one(db) {
        // No baseline yet: nothing saved.
        let r = db.record_build(&report("main", "k", BuildCache::Exact, 10.0), T0).unwrap();
        assert_eq!((r.seconds_saved, r.baseline_seconds), (0.0, None));
        db.record_build(&report("other", "k", BuildCache::Miss, 50.0), T0 + 1).unwrap();
        db.record_build(&report("main", "k", BuildCache::Miss, 100.0), T0 + 2).unwrap();
        db.record_build(&report("feat", "k", BuildCache::Miss, 70.0), T0 + 3).unwrap();
        // Same namespace wins over a newer cold build elsewhere.
        let r = db
            .record_build(&report("main", "k", BuildCache::Fallback, 20.0), T0 + 4)
            .unwrap();
        assert_eq!((r.seconds_saved, r.baseline_seconds), (80.0, Some(100.0)));
        // Another namespace takes the newest cold build of the key.
        let r = db.record_build(&report("br", "k", BuildCache::Prefix, 80.0), T0 + 5).unwrap();
        assert_eq!((r.seconds_saved, r.baseline_seconds), (0.0, Some(70.0)));
        let list = db.builds(None, 3).unwrap();
        assert_eq!((list.builds, list.seconds_saved), (6, 80.0));
        assert_eq!(list.recent.len(), 3);
        assert_eq!(list.recent[0].namespace.as_str(), "br");
        let main = db.builds(Some(&ns("main")), 10).unwrap();
        assert_eq!(main.recent.len(), 3);
        let day = db.history("24h", None, T0 + 10).unwrap().unwrap();
        let last = day.points.last().unwrap();
        assert_eq!((last.builds, last.seconds_saved), (6, 80.0));
    }

    fn largest_and_shares_name_the_entries_referencing_a_layer(db) {
        let a = db.commit_entry(&entry("a", "k", &["l1", "l2"], &[])).unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        db.commit_entry(&entry("c", "k", &["l1", "l2", "l3"], &[])).unwrap();
        let big = db.largest(2).unwrap();
        assert_eq!(big.entries.len(), 2);
        assert_eq!(big.entries[0].namespace.as_str(), "c");
        assert_eq!(big.layers.len(), 2);
        let l1 = db.largest(10).unwrap();
        let l1 = l1.layers.iter().find(|l| l.diff_id == Digest::of(b"l1"));
        assert_eq!(l1.unwrap().entries, 3);
        let detail = db.entry_detail(a).unwrap();
        let names = |d: &Digest| -> Vec<String> {
            detail
                .shares
                .iter()
                .find(|s| s.diff_id == *d)
                .map(|s| s.shared_with.iter().map(|e| e.namespace.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(names(&Digest::of(b"l1")), vec!["b", "c"]);
        assert_eq!(names(&Digest::of(b"l2")), vec!["c"]);
    }

    fn lookup_totals_keep_first_seen_namespace_order(db) {
        db.record_miss_at(&ns("zeta"), T0).unwrap();
        db.record_hit_activity_at(&ns("alpha"), None, T0).unwrap();
        db.record_hit_activity_at(&ns("zeta"), Some(MatchKind::Exact), T0).unwrap();
        let t = db.lookup_totals().unwrap();
        let order: Vec<&str> = t.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(order, vec!["zeta", "zeta", "alpha"]);
    }

    /// A failed upload counts under its error code, for `/metrics`.
    fn upload_failures_count_by_code(db) {
        db.count_upload_failure("digest_mismatch").unwrap();
        db.count_upload_failure("digest_mismatch").unwrap();
        assert!(db
            .counters()
            .unwrap()
            .contains(&("uploads_failed:digest_mismatch".to_string(), 2)));
    }
}
