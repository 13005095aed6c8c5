//! The replicas' coordination ([`crate::store::leases::Fleet`]) on PostgreSQL, with two handles on
//! one database standing for two replicas. SQLite has no fleet (`Metadata::fleet` is `None`):
//! its single process is covered by the in-process pin and quota tests.

use std::time::{Duration, Instant};

use layercache_test_support::postgres as pg;

use super::d;
use crate::store::meta::Metadata;
use crate::store::postgres::PgDb;

const TTL: Duration = Duration::from_secs(60);

/// Two replicas' handles on a fresh database named after `test`.
fn two(test: &str) -> (String, PgDb, PgDb) {
    let url = pg::fresh_database(test);
    let a = PgDb::open(&url).unwrap();
    let b = PgDb::open(&url).unwrap();
    (url, a, b)
}

#[test]
fn sqlite_has_no_fleet() {
    let (_dir, db) = super::sqlite_db();
    assert!(Metadata::fleet(&db).is_none());
}

/// A blob another replica holds a live lease on survives the collector's delete; once the lease
/// is released (or lapses) it goes.
#[test]
fn a_leased_blob_is_not_deleted_until_its_lease_goes() {
    let (_url, a, b) = two("a_leased_blob_is_not_deleted_until_its_lease_goes");
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    assert_ne!(fa.replica(), fb.replica());
    let (x, y, z) = (d("x"), d("y"), d("z"));
    for blob in [x, y, z] {
        a.insert_blob(&blob, 10).unwrap();
    }
    let gens = fb.lease(&[x, z], TTL).unwrap();
    assert_eq!(gens.len(), 2);
    // A lapsed lease protects nothing.
    fb.lease(&[y], Duration::from_millis(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fa.leased(&[y]).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the 1 ms lease never lapsed");
    }
    assert_eq!(fa.leased(&[x, y, z]).unwrap(), [x, z].into_iter().collect());
    let deleted: Vec<_> = a
        .delete_unreferenced(&[x, y, z])
        .unwrap()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(deleted, vec![y]);
    // Released by an outdated generation: the lease taken again since stays.
    let renewed = fb.lease(&[x], TTL).unwrap();
    fb.release(&[(x, gens[0]), (z, gens[1])]).unwrap();
    assert_eq!(a.delete_unreferenced(&[x, z]).unwrap(), vec![(z, 10)]);
    fb.release(&[(x, renewed[0])]).unwrap();
    assert_eq!(a.delete_unreferenced(&[x]).unwrap(), vec![(x, 10)]);
}

/// While the collector holds the deletion lock, a lease waits (PostgreSQL shows it waiting);
/// it is written once the lock drops.
#[test]
fn a_lease_waits_for_the_collectors_deletions() {
    let (url, a, b) = two("a_lease_waits_for_the_collectors_deletions");
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    let lock = fa.lock_deletions().unwrap();
    let mut watch = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    std::thread::scope(|s| {
        let leasing = s.spawn(|| fb.lease(&[d("w")], TTL).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = watch
                .query_one(
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                !leasing.is_finished(),
                "the lease was written under the lock"
            );
            assert!(Instant::now() < deadline, "the lease never queued");
        }
        assert!(fa.leased(&[d("w")]).unwrap().is_empty());
        drop(lock);
        leasing.join().unwrap();
    });
    assert_eq!(fa.leased(&[d("w")]).unwrap().len(), 1);
}

/// One collector at a time: the second replica's try fails while the first holds the lock, and
/// succeeds once it is released, or once its holder's connection is gone (a killed replica).
#[test]
fn one_collector_at_a_time() {
    let (url, a, b) = two("one_collector_at_a_time");
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    let held = fa.try_lock_collector().unwrap().expect("free at first");
    assert!(fb.try_lock_collector().unwrap().is_none());
    drop(held);
    let held = fb
        .try_lock_collector()
        .unwrap()
        .expect("free once released");
    assert!(fa.try_lock_collector().unwrap().is_none());
    drop(held);
    // A holder whose session ends (the process died) releases it.
    let mut dying = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let got: bool = dying
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&crate::store::leases::COLLECT_LOCK],
        )
        .unwrap()
        .get(0);
    assert!(got);
    assert!(fa.try_lock_collector().unwrap().is_none());
    drop(dying);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fa.try_lock_collector().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the dead session's lock stayed");
    }
}

/// Reservations of all replicas together never pass the quota; lowering always works.
#[test]
fn reservations_are_shared_by_replicas() {
    let (_url, a, b) = two("reservations_are_shared_by_replicas");
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    assert_eq!(fa.reserve(60, 100, TTL).unwrap(), Ok(()));
    assert_eq!(fb.reserve(50, 100, TTL).unwrap(), Err(60));
    assert_eq!(fb.reserve(40, 100, TTL).unwrap(), Ok(()));
    assert_eq!(fa.reserved_total().unwrap(), 100);
    assert_eq!(fa.reserve(10, 100, TTL).unwrap(), Ok(()));
    assert_eq!(fb.reserve(90, 100, TTL).unwrap(), Ok(()));
    assert_eq!(fb.reserved_total().unwrap(), 100);
    // A replica that stopped renewing (its row lapsed) holds nothing.
    assert_eq!(
        fa.reserve(10, 100, Duration::from_millis(1)).unwrap(),
        Ok(())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while fb.reserved_total().unwrap() != 90 {
        assert!(
            Instant::now() < deadline,
            "the lapsed reservation still counts"
        );
    }
}

/// Pins on a replica of a shared index: the first pin of a blob writes a lease before it
/// returns, the collector on another replica then spares the blob; pins of an already leased
/// blob and their release touch only the process; the heartbeat releases idle leases.
#[test]
fn pins_take_leases_that_the_heartbeat_releases() {
    use std::sync::Arc;

    use crate::store::pins::Pins;

    let (_url, a, b) = two("pins_take_leases_that_the_heartbeat_releases");
    let fa = a.fleet().unwrap();
    let pins = Arc::new(Pins::new(b.fleet()));
    let (x, y) = (d("x"), d("y"));
    for blob in [x, y] {
        a.insert_blob(&blob, 10).unwrap();
    }
    let g1 = pins.pin([x]).unwrap();
    let g2 = pins.pin([x, y]).unwrap();
    assert_eq!(fa.leased(&[x, y]).unwrap(), [x, y].into_iter().collect());
    assert!(a.delete_unreferenced(&[x, y]).unwrap().is_empty());
    drop(g2);
    // Still pinned by g1 (x) or idle but leased until the heartbeat (y).
    pins.heartbeat().unwrap();
    assert_eq!(fa.leased(&[x, y]).unwrap(), [x].into_iter().collect());
    assert_eq!(a.delete_unreferenced(&[x, y]).unwrap(), vec![(y, 10)]);
    drop(g1);
    assert_eq!(fa.leased(&[x]).unwrap().len(), 1, "released lazily");
    pins.heartbeat().unwrap();
    assert!(fa.leased(&[x]).unwrap().is_empty());
    assert_eq!(pins.pinned(), 0);
}

/// A pin ending on a thread that may block (an upload's or a commit's) releases its lease at
/// once: a collector elsewhere may delete the blob right after.
#[test]
fn pins_ending_where_blocking_is_allowed_release_their_leases_at_once() {
    use std::sync::Arc;

    use crate::store::pins::{Pins, may_block};

    let (_url, a, b) = two("pins_ending_where_blocking_is_allowed_release_at_once");
    let fa = a.fleet().unwrap();
    let pins = Arc::new(Pins::new(b.fleet()));
    let x = d("x");
    may_block(|| {
        let g = pins.pin([x]).unwrap();
        assert_eq!(fa.leased(&[x]).unwrap().len(), 1);
        drop(g);
    });
    assert!(fa.leased(&[x]).unwrap().is_empty());
    assert_eq!(pins.pinned(), 0);
}
