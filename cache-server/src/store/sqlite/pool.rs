//! Reader connections: a fixed set of read-only connections to the database file, handed out one
//! per call, each inside one read transaction.
//!
//! In WAL mode readers never wait for the writer and the writer never waits for readers, so a slow
//! read (a dashboard render, the collector's scans) holds one reader, not the whole index: every
//! other request takes another reader, or the writer if it writes. A read transaction gives the
//! statements of one call one snapshot (a manifest read sees every row of one entry version even
//! while a commit replaces it).
//!
//! A small hand-rolled pool (a `Mutex<Vec<Connection>>` and a `Condvar`) rather than a crate:
//! the connections are opened once at start, never fail over, and every caller is a blocking
//! thread already, so waiting on a condvar is the whole job.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How many reader connections a [`ReaderPool`] opens: enough that several slow reads (dashboards,
/// the collector) leave readers free for lookups, few enough to stay cheap (each keeps its own
/// page cache).
pub const READERS: usize = 8;

/// Read-only connections to one database file.
pub struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

impl ReaderPool {
    /// Opens `n` read-only connections to `path` (the writer created and migrated it already).
    pub fn open(path: &Path, n: usize) -> rusqlite::Result<ReaderPool> {
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(Duration::from_secs(10))?;
            idle.push(conn);
        }
        Ok(ReaderPool {
            idle: Mutex::new(idle),
            returned: Condvar::new(),
        })
    }

    /// A reader inside a fresh read transaction; waits while all are in use.
    pub fn get(&self) -> rusqlite::Result<Reader<'_>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conn = loop {
            if let Some(c) = idle.pop() {
                break c;
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        };
        drop(idle);
        let reader = Reader {
            pool: self,
            conn: Some(conn),
        };
        reader.execute_batch("BEGIN DEFERRED")?;
        Ok(reader)
    }
}

/// A reader connection borrowed from a [`ReaderPool`], inside one read transaction that ends (and
/// the connection goes back) when it is dropped.
pub struct Reader<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // A read transaction has nothing to commit; ending it lets checkpoints pass this snapshot.
        // Should it fail, the next `BEGIN` fails too and that caller gets the error.
        if !conn.is_autocommit()
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "a reader connection could not end its read transaction");
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        self.pool.returned.notify_one();
    }
}
