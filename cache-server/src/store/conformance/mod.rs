//! One test suite for both metadata backends: each test body takes a `&dyn Backend` and runs
//! twice, once on SQLite in a temp dir and once on a fresh database of a real PostgreSQL server
//! (`layercache_test_support::postgres`: started once per test binary, a database per test, so
//! tests run in parallel). A backend that drifts from the contract fails here.
//!
//! Bodies reach the tables only through [`Metadata`], plus [`Backend::ints`] and
//! [`Backend::texts`] for the few invariants no method exposes (refcounts, image rows); their
//! SQL is written to mean the same in both dialects.
//!
//! Submodules by area: `entries`, `insights`, `registry`, `sessions`, `tokens`; `postgres_only` holds what
//! only PostgreSQL has (concurrent migrations, reconnects).

use layercache_shared::Digest;
use layercache_test_support::postgres as pg;

use super::meta::Metadata;
use super::postgres::PgDb;
use super::sqlite::{self, NewEntry, NewImage};

mod entries;
mod fleet;
mod insights;
mod postgres_only;
mod registry;
mod sessions;
mod tokens;

/// A backend under test: the interface, and raw reads for invariants it does not expose.
pub(crate) trait Backend: Metadata {
    /// The first column of `sql`'s rows, as integers.
    fn ints(&self, sql: &str) -> Vec<i64>;
    /// The first column of `sql`'s rows, as text.
    fn texts(&self, sql: &str) -> Vec<String>;
}

impl Backend for sqlite::Db {
    fn ints(&self, sql: &str) -> Vec<i64> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn texts(&self, sql: &str) -> Vec<String> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }
}

impl Backend for PgDb {
    fn ints(&self, sql: &str) -> Vec<i64> {
        self.run(|c| Ok(c.query(sql, &[])?.iter().map(|r| r.get(0)).collect()))
            .unwrap()
    }

    fn texts(&self, sql: &str) -> Vec<String> {
        self.run(|c| Ok(c.query(sql, &[])?.iter().map(|r| r.get(0)).collect()))
            .unwrap()
    }
}

/// A fresh SQLite index in a temp dir (kept while the returned dir lives).
pub(crate) fn sqlite_db() -> (tempfile::TempDir, sqlite::Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite::Db::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}

/// A fresh PostgreSQL index: a new database named after `test` on this binary's server.
pub(crate) fn postgres_db(test: &str) -> PgDb {
    PgDb::open(&pg::fresh_database(test)).unwrap()
}

/// Declares test bodies `fn name(db: &dyn Backend)` and a `#[test]` running each on SQLite
/// (`sqlite::name`) and on PostgreSQL (`postgres::name`).
macro_rules! conformance {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($db:ident) $body:block
    )*) => {
        $(
            $(#[$meta])*
            fn $name($db: &dyn $crate::store::conformance::Backend) $body
        )*

        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let (_dir, db) = $crate::store::conformance::sqlite_db();
                    super::$name(&db);
                }
            )*
        }

        mod postgres {
            $(
                #[test]
                fn $name() {
                    let db = $crate::store::conformance::postgres_db(stringify!($name));
                    super::$name(&db);
                }
            )*
        }
    };
}
pub(crate) use conformance;

pub(crate) fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

/// An entry of one image with these layers (100 bytes each, config 10 bytes) and prefixes.
pub(crate) fn entry(ns: &str, key: &str, layers: &[&str], prefixes: &[&str]) -> NewEntry {
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

/// The config digest [`entry`] gives an image of these layers.
pub(crate) fn image_of(layers: &[&str]) -> Digest {
    d(&format!("config-{}", layers.join("+")))
}
