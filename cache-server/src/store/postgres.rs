//! The PostgreSQL index (`--database postgres://…`): the same tables, contracts and invariants
//! as [`super::sqlite`], in a database several server replicas share.
//!
//! - Connections: an `r2d2` pool of synchronous `postgres` clients. Every call already runs on a
//!   `spawn_blocking` thread (as the SQLite calls do), where a blocking client is right; no call
//!   blocks an async worker.
//! - Reconnects: a statement that fails because its connection broke (the server restarted, a
//!   network cut) is run once more on a fresh connection; should that fail too, or no connection
//!   be had within [`CONNECT_TIMEOUT`], the call fails with [`MetaError::Unavailable`] (503)
//!   naming the database URL without its password. A write whose connection broke after its
//!   `COMMIT` was sent but before the answer came may so be applied twice: harmless for commits,
//!   deletes and evictions (they replace or re-check), a hit or counter counted twice at worst.
//! - Writes: each write is one transaction that first takes one transaction-scoped advisory lock
//!   ([`WRITE_LOCK`]), so writes from every replica are serialised exactly as SQLite's single
//!   writer serialises them, and every SQLite invariant carries over unchanged (an entry is
//!   committed only after its blobs exist; refcounts, totals and counters move in the same
//!   transaction as the rows they count). Reads never take it.
//! - Reads that span several statements run in one `REPEATABLE READ` read-only transaction: one
//!   snapshot, as a SQLite read transaction gives.
//! - Text columns are `COLLATE "C"`: listings, cursors and tag pages order bytewise, as SQLite
//!   does, whatever the database's locale.
//!
//! Submodules mirror SQLite's: [`migrations`] (the schema), `entries`, `blobs`, `insights`,
//! `registry`, `sessions`, `tokens`.

use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache_shared::Digest;
use layercache_shared::api::Stats;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::meta::{MetaError, MetaResult};

mod blobs;
mod entries;
mod insights;
pub mod leases;
pub mod migrations;
mod registry;
mod sessions;
mod tokens;

/// How long a call waits for a pooled connection (or the pool for its first one at start)
/// before the database counts as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per server: as many as the blocking threads that query at once in practice
/// (uploads, lookups, the dashboard, the collector), few enough that several replicas stay far
/// below PostgreSQL's default `max_connections` (100).
pub const POOL_SIZE: u32 = 16;

/// The advisory lock every write transaction takes (see the module docs); "lcwr" in ASCII.
pub const WRITE_LOCK: i64 = 0x6c63_7772;

/// The PostgreSQL index.
pub struct PgDb {
    /// Connections to the database; taken only by `drop` (see there).
    pool: Option<r2d2::Pool<PostgresConnectionManager<NoTls>>>,
    /// The database URL without its password, for errors and logs.
    url: String,
    /// The replicas' coordination over the same pool (`None` in the fleet's own handle).
    fleet: Option<std::sync::Arc<leases::PgFleet>>,
}

/// Why a statement sequence failed, before it becomes a [`MetaError`] (which needs the URL).
pub(crate) enum Fail {
    Pg(postgres::Error),
    Corrupt(String),
    NoRow,
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

/// What the statement helpers return.
pub(crate) type R<T> = Result<T, Fail>;

/// Whether `e` means the connection is gone (not the statement wrong): worth one more try on a
/// fresh connection.
fn broken(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_FAILURE,
        ]
        .contains(code),
        // No SQLSTATE: the error came from the socket, not the server.
        None => e.as_db_error().is_none(),
    }
}

/// `url` as it may be shown: user, hosts, port and database, never the password.
pub fn redacted(url: &str) -> String {
    let Ok(config) = postgres::Config::from_str(url) else {
        return "<an unparsable database URL>".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    format!(
        "postgres://{user}{}{port}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl PgDb {
    /// Connects to `url`, brings the schema up to date (under an advisory lock, so replicas
    /// starting together apply each migration once) and returns the index. Fails with
    /// [`MetaError::Unavailable`] naming the URL (without its password) when no connection can
    /// be had.
    pub fn open(url: &str) -> MetaResult<PgDb> {
        let shown = redacted(url);
        let config = postgres::Config::from_str(url).map_err(|e| MetaError::Unavailable {
            url: shown.clone(),
            reason: format!("not a PostgreSQL connection URL: {e}"),
        })?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            // A broken connection is found by the statement that fails on it (and retried), not
            // by a round trip before every use.
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| MetaError::Unavailable {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let fleet = leases::PgFleet::new(PgDb {
            pool: Some(pool.clone()),
            url: shown.clone(),
            fleet: None,
        });
        let db = PgDb {
            pool: Some(pool),
            url: shown,
            fleet: Some(std::sync::Arc::new(fleet)),
        };
        db.run(migrations::migrate)?;
        Ok(db)
    }

    /// The replicas' coordination through this index (see [`crate::store::leases`]).
    pub fn fleet(&self) -> Option<std::sync::Arc<dyn crate::store::leases::Fleet>> {
        self.fleet
            .clone()
            .map(|f| f as std::sync::Arc<dyn crate::store::leases::Fleet>)
    }

    /// The URL as shown in errors (no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn meta_err(&self, f: Fail) -> MetaError {
        match f {
            Fail::Pg(e) if broken(&e) => MetaError::Unavailable {
                url: self.url.clone(),
                reason: e.to_string(),
            },
            Fail::Pg(source) => MetaError::Postgres {
                url: self.url.clone(),
                source,
            },
            Fail::Corrupt(s) => MetaError::Corrupt(s),
            Fail::NoRow => MetaError::NoRow,
        }
    }

    pub(crate) fn client(
        &self,
    ) -> MetaResult<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        let pool = self
            .pool
            .as_ref()
            .expect("the pool lives until the index is dropped");
        pool.get().map_err(|e| MetaError::Unavailable {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    /// A pooled connection that answers: after one broke, its pool mates likely did too (a
    /// server restart closes them all), so each is pinged first; a dead one is closed by the
    /// failed ping, and the pool discards it when it comes back and opens a new one.
    fn fresh_client(&self) -> MetaResult<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        let mut last = String::new();
        for _ in 0..=POOL_SIZE {
            let mut conn = self.client()?;
            match conn.simple_query("") {
                Ok(_) => return Ok(conn),
                Err(e) => last = e.to_string(),
            }
        }
        Err(MetaError::Unavailable {
            url: self.url.clone(),
            reason: last,
        })
    }

    /// Runs `f` on a pooled connection; once more on a fresh one if the connection broke.
    pub(crate) fn run<T>(&self, mut f: impl FnMut(&mut Client) -> R<T>) -> MetaResult<T> {
        let mut conn = self.client()?;
        match f(&mut conn) {
            Err(Fail::Pg(e)) if broken(&e) => {
                tracing::warn!(url = %self.url, error = %e, "a PostgreSQL connection broke; retrying once on a fresh one");
                drop(conn);
                let mut conn = self.fresh_client()?;
                f(&mut conn).map_err(|e| self.meta_err(e))
            }
            other => other.map_err(|e| self.meta_err(e)),
        }
    }

    /// Runs `f` in one write transaction holding [`WRITE_LOCK`] (see the module docs).
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> R<T>,
    ) -> MetaResult<T> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Runs `f` in one read-only snapshot.
    pub(crate) fn read<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> R<T>) -> MetaResult<T> {
        self.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Adds `by` to counter `name`.
    pub(crate) fn add_counter(&self, name: &str, by: u64) -> MetaResult<()> {
        if by == 0 {
            return Ok(());
        }
        self.write(|tx| add_counter_tx(tx, name, by))
    }

    /// Adds several counters in one transaction.
    pub(crate) fn add_counters(&self, changes: &[(&str, u64)]) -> MetaResult<()> {
        self.write(|tx| {
            for (name, by) in changes {
                add_counter_tx(tx, name, *by)?;
            }
            Ok(())
        })
    }

    /// Nothing to write: hits and misses are written when recorded (no queue, so nothing is lost
    /// when a replica dies; each is one short transaction).
    pub(crate) fn flush_uses(&self) -> MetaResult<()> {
        Ok(())
    }

    /// Counts a miss in `namespace` now.
    pub(crate) fn record_miss(&self, namespace: &layercache_shared::Namespace) -> MetaResult<()> {
        self.record_miss_at(namespace, super::sqlite::now())
    }

    /// Whether blob `digest` has a row, with its recorded size.
    pub(crate) fn blob_size(&self, digest: &Digest) -> MetaResult<Option<u64>> {
        Ok(self
            .blob_sizes(std::slice::from_ref(digest))?
            .remove(digest))
    }

    /// Server-wide statistics.
    pub(crate) fn stats(&self) -> MetaResult<Stats> {
        self.read(|tx| {
            let mut counters = std::collections::HashMap::new();
            for row in tx.query("SELECT name, value FROM counters", &[])? {
                counters.insert(row.try_get::<_, String>(0)?, u64_at(&row, 1)?);
            }
            let t = totals(tx)?;
            let count = |tx: &mut Transaction<'_>, sql: &str| -> R<u64> {
                Ok(tx.query_one(sql, &[])?.try_get::<_, i64>(0)?.max(0) as u64)
            };
            let tags = count(tx, "SELECT COUNT(*) FROM tags")?;
            let manifests = count(tx, "SELECT COUNT(*) FROM manifests")?;
            Ok(super::sqlite::stats_of(&counters, t, tags, manifests))
        })
    }
}

impl Drop for PgDb {
    /// Closes the connections on a thread of its own: closing one blocks on the client's own
    /// runtime, which tokio refuses on an async worker (where the server's last `Arc<Store>`
    /// may be dropped at shutdown).
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            std::thread::scope(|s| {
                s.spawn(move || drop(pool));
            });
        }
    }
}

/// Milliseconds since the epoch (a use stamp's clock; see [`use_stamp`]).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A use stamp for `entries.last_use`, as SQLite's `Db::use_stamp` hands out: milliseconds, but
/// strictly above every stamp before, fleet-wide (the last one is a row of `totals`, moved under
/// [`WRITE_LOCK`]).
pub(crate) fn use_stamp(tx: &mut Transaction<'_>) -> R<i64> {
    Ok(tx
        .query_one(
            "UPDATE totals SET value = GREATEST(value + 1, $1) WHERE name = 'last_use'
             RETURNING value",
            &[&now_ms()],
        )?
        .try_get(0)?)
}

/// Adds `by` to counter `name` (nothing for 0).
pub(crate) fn add_counter_tx(c: &mut impl GenericClient, name: &str, by: u64) -> R<()> {
    if by == 0 {
        return Ok(());
    }
    c.execute(
        "INSERT INTO counters (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
        &[&name, &sql_u64(by)],
    )?;
    Ok(())
}

/// The maintained totals (see SQLite's `Totals`).
pub(crate) fn totals(c: &mut impl GenericClient) -> R<super::sqlite::Totals> {
    let mut t = super::sqlite::Totals::default();
    for row in c.query("SELECT name, value FROM totals", &[])? {
        let v = u64_at(&row, 1)?;
        match row.try_get::<_, &str>(0)? {
            "entries" => t.entries = v,
            "blobs" => t.blobs = v,
            "blob_bytes" => t.blob_bytes = v,
            _ => {}
        }
    }
    Ok(t)
}

/// Integers are BIGINT; sizes above 2^63 do not occur.
pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn u64_at(row: &Row, idx: usize) -> R<u64> {
    Ok(row.try_get::<_, i64>(idx)?.max(0) as u64)
}

/// A text column parsed as `T` (a digest, a namespace, a key).
pub(crate) fn parse_at<T: FromStr>(row: &Row, idx: usize) -> R<T>
where
    T::Err: Display,
{
    let s: &str = row.try_get(idx)?;
    s.parse()
        .map_err(|e| Fail::Corrupt(format!("`{s}` (column {idx}): {e}")))
}

pub(crate) fn digest_at(row: &Row, idx: usize) -> R<Digest> {
    parse_at(row, idx)
}

pub(crate) fn opt_digest_at(row: &Row, idx: usize) -> R<Option<Digest>> {
    row.try_get::<_, Option<&str>>(idx)?
        .map(|s| {
            s.parse()
                .map_err(|e| Fail::Corrupt(format!("`{s}` (column {idx}): {e}")))
        })
        .transpose()
}

/// Whether `sql` returns a row.
pub(crate) fn exists(
    c: &mut impl GenericClient,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> R<bool> {
    Ok(c.query_opt(sql, params)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_never_carry_the_password() {
        let shown = redacted("postgres://cache:s3cret@db.internal:5433/layercache");
        assert_eq!(shown, "postgres://cache@db.internal:5433/layercache");
        assert!(!redacted("host=/run/pg user=u password=s3cret dbname=d").contains("s3cret"));
    }

    /// A server nobody listens on is a clear startup error naming the URL, not a hang or a
    /// panic, and the password stays out of it.
    #[test]
    fn an_unreachable_database_is_named_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://u:hunter2@127.0.0.1:{port}/nothing");
        let Err(e) = PgDb::open(&url) else {
            panic!("opened a database nobody serves")
        };
        assert!(e.is_unavailable(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}/nothing")), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
