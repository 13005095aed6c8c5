//! `layercache-server migrate`: moves an embedded cache (a data dir holding `layercache.db` and
//! `blobs/`) into a PostgreSQL index (`--database`) and, with `--blob-store s3://…`, a bucket, so
//! a fleet of replicas can serve it (issue #15).
//!
//! Phases, in the store's crash-safe order (blobs before the rows that name them, see
//! [`crate::store`]):
//! 1. [`blobs`]: every blob the index records is copied to the target store, hashed while it is
//!    copied (streamed through the store's own writer, which refuses content whose digest is not
//!    its name); a blob the target already holds with the recorded size is skipped. With
//!    `--blob-store dir` the blobs stay where they are and are only re-hashed.
//! 2. [`rows`]: blob rows, then entries with their images, layers and prefixes (refcounts are
//!    rebuilt by the entries, as a commit does), registry repositories, manifests and tags,
//!    tokens (hashes only) and who uploaded which blob, each batch in one transaction; a row the
//!    target already holds (by its natural key: digest, namespace and key, repository and digest,
//!    token hash) is skipped, so an interrupted run resumes where it stopped.
//! 3. Counters, activity history, lookup totals and build reports are added in one final
//!    transaction that also writes a marker, the `totals` row [`marker`]`(source)`: a re-run
//!    finds it and does not add them twice.
//! 4. [`verify`](rows::compare): counts and refcount sums of the target against the source.
//!
//! The target rule: a database whose rows are all named in the source (empty, or an interrupted
//! run of this same migration) is migrated into; one holding rows the source lacks is another
//! cache, refused unless `--merge`, which keeps the target's row wherever both hold the same name.
//!
//! The source is read, never written, except that its schema is brought up to date first (as a
//! server start would) and its `tmp/` wiped (as a server start would). It must not be served
//! meanwhile: [`source::Source::open`] refuses a data dir whose database another process has open.

mod blobs;
mod progress;
mod registry;
mod rows;
mod source;

use std::path::{Path, PathBuf};

use crate::store::blobs::{BlobError, BlobLocation};
use crate::store::meta::MetaError;
use crate::store::postgres::PgDb;

pub use source::Counts;

/// What a migration is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The embedded cache's data dir.
    pub data_dir: PathBuf,
    /// Where the blobs go (`dir`: they stay in the data dir).
    pub blob_store: BlobLocation,
    /// The PostgreSQL URL the index goes to.
    pub database: String,
    /// Migrate into a database that already holds another cache's rows.
    pub merge: bool,
}

/// What a migration did (printed by the binary, checked by the tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Blobs written to the target store by this run.
    pub blobs_copied: u64,
    /// Their bytes.
    pub bytes_copied: u64,
    /// Blobs the target store held already (an earlier run, or another cache), left alone.
    pub blobs_present: u64,
    /// Blobs re-hashed in place (`--blob-store dir`).
    pub blobs_verified: u64,
    /// Rows written by this run, per table.
    pub rows_written: Vec<(&'static str, u64)>,
    /// Rows the target held already, per table.
    pub rows_present: Vec<(&'static str, u64)>,
    /// Whether this run added the counters and history (false: an earlier run did).
    pub history_added: bool,
    /// The source's row counts.
    pub source: Counts,
    /// The target's row counts at the end.
    pub target: Counts,
}

/// Why a migration stopped. It never reaches HTTP: the binary prints it, so each variant says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "`{}` is not the data dir of an embedded cache (it holds no layercache.db): pass the \
         --data-dir the old server ran with",
        .0.display()
    )]
    NotADataDir(PathBuf),
    #[error(
        "the database in `{}` is open in another process (a server still running on it?): stop \
         it, then run migrate again",
        .0.display()
    )]
    SourceInUse(PathBuf),
    #[error(
        "the target database {url} already holds another cache ({what} not in the source, e.g. \
         {example}): migrate into an empty database, or pass --merge to add this cache to it \
         (rows both hold keep the target's version)"
    )]
    TargetHoldsOtherCache {
        url: String,
        what: &'static str,
        example: String,
    },
    #[error(
        "blob {digest} of the source is corrupt ({reason}): run `layercache-server verify \
         --data-dir {}` (it drops what uses it), then migrate again",
        data_dir.display()
    )]
    CorruptSource {
        digest: String,
        reason: String,
        data_dir: PathBuf,
    },
    #[error(
        "the target store holds {digest} with {found} bytes, not the {expected} recorded: delete \
         that object from the target, then migrate again"
    )]
    TargetBlobWrongSize {
        digest: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "a live token named `{0}` exists in the target with another secret: revoke one of them \
         first"
    )]
    TokenNameTaken(String),
    #[error("after the copy, the target does not match the source: {0}")]
    Mismatch(String),
    #[error("reading the source database failed: {0}")]
    Source(#[from] rusqlite::Error),
    #[error("the target database failed: {0}")]
    Target(#[from] MetaError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{action} `{}` failed: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MigrateError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        MigrateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The `totals` row that marks the history of `source` (its canonical data dir) as added.
pub fn marker(source: &Path) -> String {
    format!("migrated_from:{}", source.display())
}

/// Runs a migration (blocking; logs progress with `tracing`). Safe to run again after any
/// interruption: see the module docs.
pub fn run(opts: &Options) -> Result<Summary, MigrateError> {
    let src = source::Source::open(&opts.data_dir)?;
    let db = PgDb::open(&opts.database)?;
    tracing::info!(
        from = %src.dir().display(),
        blobs = %opts.blob_store,
        database = %db.url(),
        "migrating"
    );
    if !opts.merge {
        rows::check_target(&src, &db)?;
    }
    let mut summary = Summary {
        source: src.counts()?,
        ..Summary::default()
    };
    blobs::copy_all(&src, &opts.blob_store, &mut summary)?;
    rows::copy_all(&src, &db, &mut summary)?;
    summary.target = rows::target_counts(&db)?;
    rows::compare(&summary.source, &summary.target, opts.merge)?;
    tracing::info!(?summary, "migration done");
    Ok(summary)
}

/// Test hook: `LAYERCACHE_MIGRATE_ABORT_AFTER=<phase>:<n>` aborts the process (no cleanup, as
/// `kill -9` would stop it) once this run wrote `n` items of `phase` (`blobs`, `entries`), so the
/// tests can interrupt a migration at a known point and check that the next run resumes.
fn abort_point(phase: &str) -> Option<u64> {
    let v = std::env::var("LAYERCACHE_MIGRATE_ABORT_AFTER").ok()?;
    let (p, n) = v.split_once(':')?;
    if p == phase { n.parse().ok() } else { None }
}
