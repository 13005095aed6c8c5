//! [`Fleet`] on PostgreSQL: blob leases, the collector's locks and shared quota reservations
//! (see [`crate::store::leases`] for the protocol and why it is safe).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache_shared::Digest;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::{PgDb, digest_at, sql_u64, u64_at};
use crate::store::leases::{COLLECT_LOCK, Fleet, FleetLock, LEASE_LOCK, QUOTA_LOCK};
use crate::store::meta::MetaResult;

/// The replicas' coordination through the shared index.
pub struct PgFleet {
    /// The index's pool (shared with the [`PgDb`] that made this).
    pub(super) db: PgDb,
    /// This process's id: host name, process id and start time, unique across restarts.
    replica: String,
}

/// A session-level advisory lock, released on drop (or by PostgreSQL when the connection
/// closes: a killed replica's lock goes with it).
struct SessionLock {
    /// The connection the lock is held on; back to the pool after the unlock.
    conn: r2d2::PooledConnection<PostgresConnectionManager<NoTls>>,
    /// Which lock.
    key: i64,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Err(e) = self
            .conn
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
        {
            // The connection is broken, and with it the session: PostgreSQL released the lock.
            tracing::warn!(error = %e, key = self.key, "releasing an advisory lock failed");
        }
    }
}

impl PgFleet {
    /// The fleet side of `db` (sharing its pool), with a fresh replica id.
    pub(super) fn new(db: PgDb) -> PgFleet {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        PgFleet {
            db,
            replica: format!("{host}-{}-{started:x}", std::process::id()),
        }
    }
}

fn texts(digests: &[Digest]) -> Vec<String> {
    digests.iter().map(|d| d.to_string()).collect()
}

impl Fleet for PgFleet {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn lease(&self, digests: &[Digest], ttl: Duration) -> MetaResult<Vec<i64>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let list = texts(digests);
        let secs = ttl.as_secs_f64();
        let gens = self.db.run(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&LEASE_LOCK])?;
            let rows = tx.query(
                "INSERT INTO blob_leases (digest, replica, gen, expires_at)
                 SELECT d, $2, nextval('blob_lease_gen'),
                        clock_timestamp() + make_interval(secs => $3)
                 FROM unnest($1::text[]) AS d
                 ON CONFLICT (digest, replica)
                     DO UPDATE SET gen = excluded.gen, expires_at = excluded.expires_at
                 RETURNING digest, gen",
                &[&list, &self.replica, &secs],
            )?;
            tx.commit()?;
            let mut out = std::collections::HashMap::new();
            for r in rows {
                out.insert(r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?);
            }
            Ok(out)
        })?;
        Ok(list
            .iter()
            .map(|d| gens.get(d).copied().unwrap_or(0))
            .collect())
    }

    fn release(&self, leases: &[(Digest, i64)]) -> MetaResult<()> {
        let digests: Vec<String> = leases.iter().map(|(d, _)| d.to_string()).collect();
        let gens: Vec<i64> = leases.iter().map(|(_, g)| *g).collect();
        self.db.run(|c| {
            if !digests.is_empty() {
                c.execute(
                    "DELETE FROM blob_leases l USING unnest($2::text[], $3::int8[]) AS r(d, g)
                     WHERE l.replica = $1 AND l.digest = r.d AND l.gen = r.g",
                    &[&self.replica, &digests, &gens],
                )?;
            }
            // Rows of replicas that died: they protect nothing any more.
            c.execute(
                "DELETE FROM blob_leases WHERE expires_at < clock_timestamp() - interval '1 minute'",
                &[],
            )?;
            c.execute(
                "DELETE FROM quota_reservations
                 WHERE expires_at < clock_timestamp() - interval '1 minute'",
                &[],
            )?;
            Ok(())
        })
    }

    fn leased(&self, digests: &[Digest]) -> MetaResult<HashSet<Digest>> {
        let list = texts(digests);
        self.db.run(|c| {
            let mut out = HashSet::new();
            for r in c.query(
                "SELECT DISTINCT digest FROM blob_leases
                 WHERE digest = ANY($1) AND expires_at > clock_timestamp()",
                &[&list],
            )? {
                out.insert(digest_at(&r, 0)?);
            }
            Ok(out)
        })
    }

    fn lock_deletions(&self) -> MetaResult<FleetLock> {
        let mut conn = self.db.client()?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&LEASE_LOCK])
            .map_err(|e| self.db.meta_err(e.into()))?;
        Ok(Box::new(SessionLock {
            conn,
            key: LEASE_LOCK,
        }))
    }

    fn try_lock_collector(&self) -> MetaResult<Option<FleetLock>> {
        let mut conn = self.db.client()?;
        let got: bool = conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECT_LOCK])
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db.meta_err(e.into()))?;
        Ok(got.then(|| {
            Box::new(SessionLock {
                conn,
                key: COLLECT_LOCK,
            }) as FleetLock
        }))
    }

    fn reserve(&self, total: u64, max_size: u64, ttl: Duration) -> MetaResult<Result<(), u64>> {
        let secs = ttl.as_secs_f64();
        self.db.run(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&QUOTA_LOCK])?;
            let row = tx.query_one(
                "SELECT COALESCE(SUM(bytes) FILTER (WHERE replica <> $1), 0)::BIGINT,
                        COALESCE(SUM(bytes) FILTER (WHERE replica = $1), 0)::BIGINT
                 FROM quota_reservations WHERE expires_at > clock_timestamp()",
                &[&self.replica],
            )?;
            let others = u64_at(&row, 0)?;
            let mine = u64_at(&row, 1)?;
            if total > mine && others.saturating_add(total) > max_size {
                return Ok(Err(others));
            }
            tx.execute(
                "INSERT INTO quota_reservations (replica, bytes, expires_at)
                 VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                 ON CONFLICT (replica)
                     DO UPDATE SET bytes = excluded.bytes, expires_at = excluded.expires_at",
                &[&self.replica, &sql_u64(total), &secs],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    fn reserved_total(&self) -> MetaResult<u64> {
        self.db.run(|c| {
            let row = c.query_one(
                "SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM quota_reservations
                 WHERE expires_at > clock_timestamp()",
                &[],
            )?;
            u64_at(&row, 0)
        })
    }
}
