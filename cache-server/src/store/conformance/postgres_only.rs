//! What only the PostgreSQL backend has: migrations raced by replicas starting together, and
//! connections that break under it.

use layercache_test_support::postgres as pg;

use super::entry;
use crate::store::meta::Metadata;
use crate::store::postgres::{PgDb, migrations};

/// Replicas starting at once on an empty database: every one opens, each step is applied once
/// (a second application would fail on `CREATE TABLE`), and reopening applies nothing.
#[test]
fn replicas_starting_together_migrate_once() {
    let url = pg::fresh_database("replicas_starting_together_migrate_once");
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    PgDb::open(&url)
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    let db = PgDb::open(&url).unwrap();
    db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
    drop(db);
    let db = PgDb::open(&url).unwrap();
    assert_eq!(db.stats().unwrap().entries, 1);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    assert_eq!(
        migrations::version(&mut c).unwrap(),
        migrations::MIGRATIONS.len() as i64
    );
}

/// A server restart (here: every connection of the database terminated by an administrator)
/// costs no request: the first statement on a dead connection is retried on a fresh one.
#[test]
fn a_statement_on_a_broken_connection_is_retried_on_a_fresh_one() {
    let name = "a_statement_on_a_broken_connection_is_retried";
    let url = pg::fresh_database(name);
    let db = PgDb::open(&url).unwrap();
    let id = db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
    let database = url.rsplit('/').next().unwrap();
    for _ in 0..3 {
        pg::server()
            .admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ))
            .unwrap();
        // A read and a write, each on a connection the server closed.
        assert_eq!(db.manifest(id).unwrap().images.len(), 1);
        db.record_hit(id, None).unwrap();
    }
    assert_eq!(db.manifest(id).unwrap().hits, 3);
}

/// The same contract on both backends for "no such entry" after a restart of the pool: the data
/// is in the database, not in the process.
#[test]
fn a_second_server_on_the_same_database_sees_the_first_ones_writes() {
    let url = pg::fresh_database("a_second_server_sees_the_first_ones_writes");
    let one = PgDb::open(&url).unwrap();
    let two = PgDb::open(&url).unwrap();
    let id = one.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
    two.record_hit(id, None).unwrap();
    assert_eq!(one.manifest(id).unwrap().hits, 1);
    assert!(
        two.delete_entry(&"a".parse().unwrap(), &"k".parse().unwrap())
            .unwrap()
    );
    assert!(one.manifest(id).unwrap_err().is_no_row());
    assert_eq!(one.backend(), "postgres");
}

/// A database that accepts no connection while serving: calls fail with `Unavailable` (answered
/// 503 `database_unavailable`, naming the URL) instead of hanging, and work again once it is
/// back, without a restart of the server.
#[test]
fn a_database_that_refuses_connections_is_a_503_until_it_is_back() {
    let url = pg::fresh_database("a_database_that_refuses_connections");
    let db = PgDb::open(&url).unwrap();
    let id = db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
    let database = url.rsplit('/').next().unwrap();
    pg::server()
        .admin(&format!(
            "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{database}' AND pid <> pg_backend_pid();"
        ))
        .unwrap();
    let e = db.manifest(id).unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains(database), "{e}");
    let (status, code) = crate::error::ServerError::from(e).status_and_code();
    assert_eq!((status.as_u16(), code), (503, "database_unavailable"));
    pg::server()
        .admin(&format!(
            "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
        ))
        .unwrap();
    assert_eq!(db.manifest(id).unwrap().images.len(), 1);
}
