//! The metadata interface: [`Metadata`], everything the server asks of its index (entries, blobs
//! rows, registry tables, tokens, counters and history), with two implementations side by side:
//! [`super::sqlite::Db`] (the embedded default, a file in the data dir) and
//! [`super::postgres::PgDb`] (`--database postgres://…`, shared by replicas).
//!
//! Every method is blocking and runs on a `spawn_blocking` thread (see `Store::blocking`), as the
//! SQLite calls always did; both backends keep the same contracts, checked by one test suite run
//! against each (`store::conformance`).
//!
//! The trait is declared by one list ([`metadata_interface!`]) that also forwards each method to
//! SQLite's inherent method of the same name: SQLite's code and its speed stay exactly what they
//! were (a forward is one call through the vtable; the error is converted only on failure).
//!
//! The value types the methods take and return (`NewEntry`, `Cursor`, `ManifestRow`, …) are
//! defined beside the SQLite code that introduced them and re-exported here.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use layercache_shared::api::{
    BuildList, BuildRecorded, BuildReport, EntryDetail, EntryManifest, EntrySummary, Largest,
    MatchKind, Stats, StatsHistory, TagSummary,
};
use layercache_shared::{CacheKey, Digest, Namespace};

use super::sqlite;
pub use super::sqlite::{
    BlobRow, Cursor, GraphManifest, ManifestRow, Match, NewEntry, NewImage, NewManifest, Page,
    Referrer, RegistryGraph, StagedChunk, UploadSession,
};
use super::tokens::{TokenRecord, TokenSelector};
use crate::auth::{NamespacePattern, Role};

/// Why a metadata call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The SQLite index failed (I/O, corruption, a constraint).
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL statement failed on a working connection.
    #[error("PostgreSQL at {url}: {source}")]
    Postgres {
        /// The database URL without its password.
        url: String,
        #[source]
        source: postgres::Error,
    },
    /// No connection to PostgreSQL could be had (down, unreachable, or the pool timed out), or
    /// the connection broke twice in a row: the request may succeed later (503).
    #[error("PostgreSQL at {url} is unavailable: {reason}")]
    Unavailable {
        /// The database URL without its password.
        url: String,
        /// What failed, as the client library said.
        reason: String,
    },
    /// A row asked for by id is not there (an entry evicted or replaced since it was found).
    #[error("the row asked for is not stored")]
    NoRow,
    /// A stored value could not be read back as its type (a digest, a name, JSON).
    #[error("a stored value is not valid: {0}")]
    Corrupt(String),
}

impl MetaError {
    /// Whether this is "the row is not there": an entry replaced or evicted between two reads,
    /// which [`retry_replaced`] looks up again.
    pub fn is_no_row(&self) -> bool {
        matches!(
            self,
            MetaError::NoRow | MetaError::Sqlite(rusqlite::Error::QueryReturnedNoRows)
        )
    }

    /// Whether the database could not be reached (answered 503, not 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, MetaError::Unavailable { .. })
    }
}

/// What every [`Metadata`] method returns.
pub type MetaResult<T> = Result<T, MetaError>;

/// Runs `read` again (a few times) when an entry row it found vanished before it was read: the
/// entry was replaced or evicted at that moment (see [`Metadata::find_manifest`]).
pub fn retry_replaced<T>(mut read: impl FnMut() -> MetaResult<T>) -> MetaResult<T> {
    let mut tries = 0;
    loop {
        match read() {
            Err(e) if e.is_no_row() && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

/// Declares [`Metadata`] from one list of methods and implements it for SQLite's [`sqlite::Db`]
/// and PostgreSQL's [`super::postgres::PgDb`] by calling each one's inherent method of the same
/// name (so neither backend can lack a method, nor take other arguments).
macro_rules! metadata_interface {
    ($(
        $(#[$doc:meta])*
        fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        /// The index of a cache: see the module docs. Contracts are the SQLite ones (each
        /// method's docs on [`sqlite::Db`] say more about how SQLite keeps them).
        pub trait Metadata: Send + Sync {
            $(
                $(#[$doc])*
                fn $name(&self $(, $arg: $ty)*) -> MetaResult<$ret>;
            )*

            /// Resolves once a use was queued since the last call (the flusher's wake-up, see
            /// `Store::run_use_flusher`); never, for a backend that writes uses at once.
            fn uses_queued(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

            /// Which backend this is, for logs and the startup line (`sqlite`, `postgres`).
            fn backend(&self) -> &'static str;

            /// The SQLite index itself, for tests that read its tables directly.
            fn as_sqlite(&self) -> Option<&sqlite::Db> {
                None
            }

            /// How replicas sharing this index coordinate pins, the collector and the quota
            /// ([`super::leases`]); `None` for an index one process owns (SQLite), where the
            /// in-process tables suffice.
            fn fleet(&self) -> Option<std::sync::Arc<dyn super::leases::Fleet>> {
                None
            }
        }

        impl Metadata for sqlite::Db {
            $(
                fn $name(&self $(, $arg: $ty)*) -> MetaResult<$ret> {
                    Ok(sqlite::Db::$name(self $(, $arg)*)?)
                }
            )*

            fn uses_queued(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
                Box::pin(sqlite::Db::uses_queued(self))
            }

            fn backend(&self) -> &'static str {
                "sqlite"
            }

            fn as_sqlite(&self) -> Option<&sqlite::Db> {
                Some(self)
            }
        }

        impl Metadata for super::postgres::PgDb {
            $(
                fn $name(&self $(, $arg: $ty)*) -> MetaResult<$ret> {
                    super::postgres::PgDb::$name(self $(, $arg)*)
                }
            )*

            fn uses_queued(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
                Box::pin(std::future::pending())
            }

            fn backend(&self) -> &'static str {
                "postgres"
            }

            fn fleet(&self) -> Option<std::sync::Arc<dyn super::leases::Fleet>> {
                super::postgres::PgDb::fleet(self)
            }
        }

        /// So `&store.db` (a `Box<dyn Metadata>`) passes where `&dyn Metadata` is asked.
        impl<T: Metadata + ?Sized> Metadata for Box<T> {
            $(
                fn $name(&self $(, $arg: $ty)*) -> MetaResult<$ret> {
                    (**self).$name($($arg),*)
                }
            )*

            fn uses_queued(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
                (**self).uses_queued()
            }

            fn backend(&self) -> &'static str {
                (**self).backend()
            }

            fn as_sqlite(&self) -> Option<&sqlite::Db> {
                (**self).as_sqlite()
            }

            fn fleet(&self) -> Option<std::sync::Arc<dyn super::leases::Fleet>> {
                (**self).fleet()
            }
        }
    };
}

metadata_interface! {
    // Counters and statistics.
    /// Adds `by` to counter `name`.
    fn add_counter(&self, name: &str, by: u64) -> ();
    /// Adds several counters in one transaction.
    fn add_counters(&self, changes: &[(&str, u64)]) -> ();
    /// Server-wide statistics.
    fn stats(&self) -> Stats;

    // Blob rows, the collector and `verify`.
    /// Records a stored blob (or marks an existing one freshly uploaded); true when the row is new.
    fn insert_blob(&self, digest: &Digest, size: u64) -> bool;
    /// Sizes of the given blobs that are recorded (absent ones are left out).
    fn blob_sizes(&self, digests: &[Digest]) -> HashMap<Digest, u64>;
    /// Whether an image (by config digest) is recorded, i.e. some entry uses it.
    fn image_known(&self, id: &Digest) -> bool;
    /// Every entry with its last use stamp and the distinct blobs it references.
    fn entry_usage(&self) -> Vec<crate::lru::EntryUse>;
    /// Every blob row.
    fn blob_rows(&self) -> Vec<BlobRow>;
    /// Evicts entry `id` if it was not used since use stamp `last_used`. True when evicted.
    fn evict_entry(&self, id: i64, last_used: u64) -> bool;
    /// Deletes the rows of those `digests` no entry or manifest references; returns them with
    /// their sizes.
    fn delete_unreferenced(&self, digests: &[Digest]) -> Vec<(Digest, u64)>;
    /// Drops a corrupt blob with every entry and manifest referencing it; returns the entries
    /// dropped.
    fn drop_corrupt_blob(&self, digest: &Digest) -> u64;
    /// Bytes of all blob rows (maintained: no scan).
    fn stored_bytes(&self) -> u64;
    /// Unreferenced blobs stored before `cutoff` (seconds), oldest first.
    fn unreferenced_blobs(&self, cutoff: u64) -> Vec<Digest>;
    /// Every recorded blob digest.
    fn blob_digests(&self) -> HashSet<Digest>;
    /// Whether any entry was last used before `entry_cutoff_ms` or any tag before `tag_cutoff`.
    fn anything_expired(&self, entry_cutoff_ms: u64, tag_cutoff: u64) -> bool;
    /// Whether blob `digest` has a row, with its recorded size.
    fn blob_size(&self, digest: &Digest) -> Option<u64>;

    // Entries of the v1 API.
    /// Commits `entry` in one transaction, replacing an entry of the same name; every blob it
    /// names must be stored already.
    fn commit_entry(&self, entry: &NewEntry) -> i64;
    /// The id of the entry `namespace`/`key`, if stored.
    fn find_entry(&self, namespace: &Namespace, key: &CacheKey) -> Option<i64>;
    /// The id and manifest of `namespace`/`key`, if stored, read in one snapshot.
    fn find_manifest(&self, namespace: &Namespace, key: &CacheKey)
        -> Option<(i64, EntryManifest)>;
    /// Deletes an entry (refcounts drop with it); false when absent.
    fn delete_entry(&self, namespace: &Namespace, key: &CacheKey) -> bool;
    /// The manifest of entry `id` ([`MetaError::is_no_row`] when it is gone).
    fn manifest(&self, id: i64) -> EntryManifest;
    /// What a lookup finds (exact, fallback, then longest prefix), in one snapshot.
    fn find_match(&self, namespaces: &[Namespace], key: &CacheKey, prefixes: &[Digest])
        -> Option<Match>;
    /// The entry in `namespaces` sharing the longest instruction prefix, with the depth.
    fn find_prefix(&self, namespaces: &[Namespace], prefixes: &[Digest]) -> Option<(i64, u32)>;
    /// Counts a hit on entry `id` and marks it used now (may be queued until
    /// [`Metadata::flush_uses`]; reads that report uses see it).
    fn record_hit(&self, id: i64, kind: Option<MatchKind>) -> ();
    /// Writes the hits and misses queued so far.
    fn flush_uses(&self) -> ();
    /// One page of entries sorted by (namespace, key), after `after`.
    fn list_entries(&self, namespace: Option<&Namespace>, after: Option<&Cursor>, limit: u64)
        -> Page<EntrySummary>;
    /// The summaries of entries `ids` that exist, in the order of `ids`.
    fn entry_summaries(&self, ids: &[i64]) -> Vec<EntrySummary>;

    // Activity, builds and the dashboard.
    /// Counts a miss in `namespace`.
    fn record_miss(&self, namespace: &Namespace) -> ();
    /// [`Metadata::record_miss`] at an explicit time.
    fn record_miss_at(&self, namespace: &Namespace, now: u64) -> ();
    /// A hit's activity part at an explicit time (tests of the history).
    fn record_hit_activity_at(&self, namespace: &Namespace, kind: Option<MatchKind>, now: u64)
        -> ();
    /// Counts a failed upload under its error `code`.
    fn count_upload_failure(&self, code: &str) -> ();
    /// Records a build report and credits the time saved against the last cold build.
    fn record_build(&self, report: &BuildReport, now: u64) -> BuildRecorded;
    /// All-time build totals and the `limit` newest reports.
    fn builds(&self, namespace: Option<&Namespace>, limit: u64) -> BuildList;
    /// Activity of `window` ending at `now`; `None` for an unknown window.
    fn history(&self, window: &str, namespace: Option<&Namespace>, now: u64)
        -> Option<StatsHistory>;
    /// The `limit` largest entries and layers.
    fn largest(&self, limit: u64) -> Largest;
    /// Every namespace holding entries, with its entry count and bytes, by name.
    fn namespace_totals(&self) -> Vec<(Namespace, u64, u64)>;
    /// Entry `id`'s manifest and, per layer, the other entries referencing it.
    fn entry_detail(&self, id: i64) -> EntryDetail;
    /// All-time lookup counts `(namespace, kind, count)`, namespaces in first-seen order.
    fn lookup_totals(&self) -> Vec<(String, String, u64)>;
    /// Every counter, by name.
    fn counters(&self) -> Vec<(String, u64)>;
    /// The summary of one entry, when stored.
    fn entry_summary(&self, id: i64) -> Option<EntrySummary>;

    // The registry protocol's tables.
    /// Links blob `digest` into `repo`; false when no such blob is stored.
    fn link_blob(&self, repo: &str, digest: &Digest) -> bool;
    /// The size of blob `digest` if `repo` holds it.
    fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Option<u64>;
    /// Removes blob `digest` from `repo`; false when it did not hold it.
    fn unlink_blob(&self, repo: &str, digest: &Digest) -> bool;
    /// The repositories holding blob `digest`, by name.
    fn blob_repos(&self, digest: &Digest) -> Vec<String>;
    /// Stores manifest `m` (and `tag`), or returns the references its repository lacks.
    fn put_manifest(&self, m: &NewManifest, tag: Option<&str>) -> Result<i64, Vec<Digest>>;
    /// The manifest `tag` names in `repo`, counted as a hit or a miss.
    fn resolve_tag(&self, repo: &str, tag: &str) -> Option<ManifestRow>;
    /// Manifest `digest` of `repo`, marked used now.
    fn manifest_by_digest(&self, repo: &str, digest: &Digest) -> Option<ManifestRow>;
    /// Deletes manifest `digest` of `repo` with its tags; false when absent.
    fn delete_manifest(&self, repo: &str, digest: &Digest) -> bool;
    /// Deletes `tag` of `repo`; false when absent.
    fn delete_tag(&self, repo: &str, tag: &str) -> bool;
    /// Tags of `repo` after `last`, at most `n`; `None` when the repository holds nothing.
    fn tags(&self, repo: &str, last: Option<&str>, n: u64) -> Option<Vec<String>>;
    /// Manifests of `repo` whose subject is `subject`, optionally of one artifact type.
    fn referrers(&self, repo: &str, subject: &Digest, artifact_type: Option<&str>)
        -> Vec<sqlite::Referrer>;
    /// Repositories with manifests, in lexical order after `last`.
    fn repositories(&self, last: Option<&str>) -> Vec<String>;
    /// Every manifest with its references, and every tag (collector).
    fn registry_graph(&self) -> RegistryGraph;
    /// Evicts tag `id` if not used since `last_used`. True when evicted.
    fn evict_tag(&self, id: i64, last_used: u64) -> bool;
    /// Deletes manifests the collector found unreachable, re-checked; returns how many went.
    fn delete_dead_manifests(&self, ids: &[i64], created_before: u64) -> u64;
    /// One page of the tags of `repo` (every repository when `None`), by repository and tag,
    /// after `after`.
    fn list_tags(&self, repo: Option<&str>, after: Option<&Cursor>, limit: u64)
        -> Page<TagSummary>;
    /// Number of tags and manifests.
    fn registry_counts(&self) -> (u64, u64);

    // Registry upload sessions (shared by the replicas; see `sqlite::sessions`).
    /// Records a new, empty session `id` of `repo` with SHA-256 state `hash_state`.
    fn open_upload(&self, id: &str, repo: &str, hash_state: &[u8], now: u64) -> ();
    /// Session `id`, claimed or not.
    fn upload_session(&self, id: &str) -> Option<UploadSession>;
    /// Appends `chunk` if the open session still holds exactly `offset` bytes; false otherwise.
    fn append_upload_chunk(&self, id: &str, offset: u64, chunk: &StagedChunk,
        hash_state: &[u8], now: u64) -> bool;
    /// Marks open session `id` of `repo` active; its offset, `None` when not open.
    fn touch_upload(&self, id: &str, repo: &str, now: u64) -> Option<u64>;
    /// Claims open session `id` of `repo` for finishing or cancelling (exactly one claim wins).
    fn claim_upload(&self, id: &str, repo: &str, now: u64) -> Option<UploadSession>;
    /// Deletes session `id`; false when absent.
    fn drop_upload(&self, id: &str) -> bool;
    /// Deletes the sessions idle since before `cutoff`; their ids (each to one caller only).
    fn expire_uploads(&self, cutoff: u64) -> Vec<String>;

    // Tokens and who may see which blob.
    /// Stores a new token by its hash; fails when a live token already has `name`.
    fn insert_token(&self, hash: &str, name: Option<&str>, role: Role,
        namespaces: &[NamespacePattern]) -> TokenRecord;
    /// Every token, revoked ones included, oldest first.
    fn list_tokens(&self) -> Vec<TokenRecord>;
    /// Marks the live token `which` revoked; `None` when there is no such live token.
    fn revoke_token(&self, which: &TokenSelector) -> Option<TokenRecord>;
    /// How many tokens are not revoked.
    fn live_token_count(&self) -> u64;
    /// The live token whose hash is `hash`, marking it used (at most once a minute).
    fn use_token(&self, hash: &str) -> Option<TokenRecord>;
    /// Records that token `token_id` uploaded blob `digest` in full.
    fn record_blob_upload(&self, digest: &Digest, token_id: i64) -> ();
    /// Which of `digests` a caller may name: blobs of namespaces `readable` accepts, and blobs
    /// token `uploader` uploaded itself.
    fn visible_blobs(&self, digests: &[Digest], uploader: Option<i64>,
        readable: &dyn Fn(&str) -> bool) -> HashSet<Digest>;
    /// Namespaces (and registry repositories) whose entries reference blob `digest`.
    fn blob_namespaces(&self, digest: &str) -> Vec<String>;
}
