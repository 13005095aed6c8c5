//! The connection table: a slot per open connection (at most the cap), what each connection is
//! doing, and eviction of idle connections when the table is full.
//!
//! At the cap a new connection is not turned away while some connection sits idle (no request in
//! a handler or streaming, e.g. a kept-alive client, or one that has not finished its headers): the
//! longest-idle one is closed to make room, as nginx reuses idle keep-alive connections. A client
//! with a request in flight is never closed for a newcomer; when every connection is busy, the new
//! one is closed at once, so the accept queue keeps moving and the server keeps its descriptors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection waits for an evicted one to hand back its slot.
const ADMIT_WAIT: Duration = Duration::from_millis(250);

/// What one connection is doing, shared by its task, its requests and the table.
#[derive(Debug)]
pub struct ConnInfo {
    /// Requests received and not yet answered in full (response body sent or dropped).
    in_flight: AtomicUsize,
    /// Requests inside a handler (no response yet): the connection may be silent meanwhile.
    handling: AtomicUsize,
    /// Milliseconds since the table's epoch of the last byte moved or request finished.
    last_active: AtomicU64,
    /// Set when the table picked this connection to close for a newcomer.
    evicting: AtomicBool,
    /// Wakes the connection's task to close it.
    pub evict: Notify,
    /// The table's clock origin.
    epoch: Instant,
}

impl ConnInfo {
    fn new(epoch: Instant) -> ConnInfo {
        let info = ConnInfo {
            in_flight: AtomicUsize::new(0),
            handling: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
            epoch,
        };
        info.touch();
        info
    }

    /// Records activity now (bytes moved, a request finished).
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }

    /// Whether no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether a handler is working on a request of this connection.
    pub fn is_handling(&self) -> bool {
        self.handling.load(Ordering::Acquire) > 0
    }

    /// Withdraws an eviction the connection turned down (a request arrived meanwhile).
    pub fn keep(&self) {
        self.evicting.store(false, Ordering::Release);
    }

    /// Marks a request arriving; the mark is in a handler until [`RequestMark::responded`].
    pub fn begin(self: &Arc<Self>) -> RequestMark {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.handling.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestMark {
            info: Arc::clone(self),
            handling: true,
        }
    }
}

/// A request in flight on a connection; dropping it (response body done) makes the connection
/// idle again if it was the last.
#[derive(Debug)]
pub struct RequestMark {
    /// The connection.
    info: Arc<ConnInfo>,
    /// Whether the handler has not answered yet.
    handling: bool,
}

impl RequestMark {
    /// The handler answered; the mark now lasts as long as the response body.
    pub fn responded(mut self) -> RequestMark {
        self.info.handling.fetch_sub(1, Ordering::AcqRel);
        self.handling = false;
        self
    }
}

impl Drop for RequestMark {
    fn drop(&mut self) {
        if self.handling {
            self.info.handling.fetch_sub(1, Ordering::AcqRel);
        }
        self.info.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.info.touch();
    }
}

/// The open connections and the slots they hold.
pub struct Table {
    /// One permit per connection that may be open.
    slots: Arc<Semaphore>,
    /// Connections by id.
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    /// The next connection id.
    next_id: AtomicU64,
    /// Clock origin of [`ConnInfo::last_active`].
    epoch: Instant,
    /// The cap.
    cap: usize,
}

impl Table {
    /// A table for at most `cap` connections.
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            slots: Arc::new(Semaphore::new(cap)),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            cap,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnInfo>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot for a new connection: a free one, or one an idle connection gives up. `None` when
    /// every connection has a request in flight (the caller closes the new one).
    pub async fn admit(self: &Arc<Self>) -> Option<Slot> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !self.evict_idlest() {
                    return None;
                }
                tokio::time::timeout(ADMIT_WAIT, Arc::clone(&self.slots).acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnInfo::new(self.epoch));
        self.map().insert(id, Arc::clone(&info));
        Some(Slot {
            table: Arc::clone(self),
            id,
            info,
            _permit: permit,
        })
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn evict_idlest(&self) -> bool {
        let map = self.map();
        let victim = map
            .values()
            .filter(|c| c.is_idle() && !c.evicting.load(Ordering::Acquire))
            .max_by_key(|c| c.idle_for());
        match victim {
            Some(c) => {
                c.evicting.store(true, Ordering::Release);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's place in the table, given back on drop.
pub struct Slot {
    /// The table.
    table: Arc<Table>,
    /// The connection's id in it.
    id: u64,
    /// What the connection is doing.
    pub info: Arc<ConnInfo>,
    /// The slot itself.
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.map().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection_but_never_a_busy_one() {
        let table = Table::new(2);
        let a = table.admit().await.unwrap();
        let b = table.admit().await.unwrap();
        let busy = b.info.begin();
        // `a` is idle: it is asked to close; the newcomer gets its slot once it does.
        let waiting = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.admit().await }
        });
        a.info.evict.notified().await;
        drop(a);
        let newcomer = waiting
            .await
            .unwrap()
            .expect("admitted in the evicted one's slot");
        // Now every connection but the newcomer is busy, and the newcomer is idle but was
        // admitted; mark it busy too: a further connection is refused at once.
        assert_eq!(table.len(), 2);
        let ids: Vec<_> = table.map().values().cloned().collect();
        let marks: Vec<_> = ids
            .iter()
            .filter(|c| c.is_idle())
            .map(|c| c.begin())
            .collect();
        assert!(table.admit().await.is_none());
        drop((busy, marks, newcomer));
    }

    #[test]
    fn a_request_mark_tracks_handling_then_the_body() {
        let info = Arc::new(ConnInfo::new(Instant::now()));
        let m = info.begin();
        assert!(info.is_handling() && !info.is_idle());
        let m = m.responded();
        assert!(!info.is_handling() && !info.is_idle());
        drop(m);
        assert!(info.is_idle());
    }
}
