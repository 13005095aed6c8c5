//! JSON bodies of the layercache HTTP API (v1), shared by the server and the runner.
//!
//! Timestamps are Unix seconds. Digests are `sha256:<hex>` strings. Every error answer is an
//! [`ErrorBody`]. See `docs/architecture.md` for the routes.

use serde::{Deserialize, Serialize};

use crate::{CacheKey, Digest, Namespace};

/// Header a `PUT /v1/images/{ns}/{key}` may carry: the key's instruction-prefix hashes, comma-separated,
/// so `prefix` lookups can find the entry.
pub const PREFIXES_HEADER: &str = "layercache-prefixes";

/// Answer of a successful ingest: `PUT /v1/images/{ns}/{key}` or a manifest commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutReport {
    /// Layers the entry's images reference (each distinct layer once).
    pub layers_total: u64,
    /// Layers the server did not have before this request.
    pub layers_new: u64,
    /// Bytes of request body read.
    pub bytes_received: u64,
    /// Bytes of blob content newly stored (the rest was deduplicated).
    pub bytes_new: u64,
}

/// One layer of an image: its diff_id (sha256 of the uncompressed layer tar) and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    pub diff_id: Digest,
    pub size: u64,
}

/// One image of an entry. `id` is the digest of its config JSON, as `docker images --no-trunc` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: Digest,
    /// The image this one was built on (the previous Dockerfile step), when stored in the same entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    /// `repo:tag` names the image had when saved.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Size of the config blob.
    pub config_size: u64,
    /// Layers bottom-up, as in the config's `rootfs.diff_ids`.
    pub layers: Vec<LayerInfo>,
}

/// `GET /v1/images/{ns}/{key}/manifest`: what an entry holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryManifest {
    pub namespace: Namespace,
    pub key: CacheKey,
    /// Images in an order where parents come before children.
    pub images: Vec<ImageInfo>,
    /// Bytes of all distinct blobs (layers and configs) the entry references.
    pub total_size: u64,
    pub created: u64,
    pub last_used: u64,
    pub hits: u64,
    /// Instruction-prefix hashes the entry was stored with (may be empty).
    #[serde(default)]
    pub prefixes: Vec<Digest>,
}

/// One image to commit from blobs already uploaded. The server reads the config blob `id` to learn
/// its layers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitImage {
    pub id: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `PUT /v1/images/{ns}/{key}/manifest`: commit an entry whose blobs are all on the server.
/// Answered with a [`PutReport`], or 400 naming the missing blobs ([`MissingResponse`] in the error).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitRequest {
    pub images: Vec<CommitImage>,
    #[serde(default)]
    pub prefixes: Vec<Digest>,
}

/// `POST /v1/blobs/missing` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingRequest {
    pub digests: Vec<Digest>,
}

/// `POST /v1/blobs/missing` answer: the subset of the asked digests the server does not store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingResponse {
    pub missing: Vec<Digest>,
    /// Whether the server takes `POST /v1/blobs` (an upload whose digest comes last). Servers from
    /// before it leave the field out, so a newer runner knows to spool layers for them instead.
    #[serde(default)]
    pub streamed_uploads: bool,
}

/// `POST /v1/blobs` answer: what the uploaded content hashed to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobStored {
    pub digest: Digest,
    pub size: u64,
}

/// `POST /v1/lookup` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupRequest {
    /// Namespaces to try, best first (the branch, then its fallbacks such as `main`).
    pub namespaces: Vec<Namespace>,
    pub key: CacheKey,
    /// The key's instruction-prefix hashes, instruction 1 first.
    #[serde(default)]
    pub prefixes: Vec<Digest>,
}

/// How a lookup matched.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// Same key in the first namespace asked.
    Exact,
    /// Same key in a later namespace.
    Fallback,
    /// Another key whose Dockerfile shares the longest run of leading instructions.
    Prefix,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Fallback => "fallback",
            MatchKind::Prefix => "prefix",
        }
    }
}

/// `POST /v1/lookup` answer (a miss is a 404 [`ErrorBody`] with code `not_found`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupResponse {
    #[serde(rename = "match")]
    pub matched: MatchKind,
    /// For `prefix`: how many leading instructions the entry shares with the asked key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_instructions: Option<u32>,
    pub manifest: EntryManifest,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Image GETs and lookups that found an entry.
    pub hits: u64,
    /// Image GETs and lookups that found nothing.
    pub misses: u64,
    pub hits_exact: u64,
    pub hits_fallback: u64,
    pub hits_prefix: u64,
    pub entries: u64,
    pub blobs: u64,
    /// Bytes of all stored blobs (each once).
    pub stored_bytes: u64,
    /// Response body bytes of image and blob GETs.
    pub bytes_served: u64,
    /// Request body bytes of image and blob PUTs.
    pub bytes_received: u64,
    /// Bytes PUTs carried that were already stored, so were not stored again.
    pub bytes_deduplicated: u64,
    /// Uploads refused or broken off.
    pub uploads_failed: u64,
    /// Entries evicted by the size quota or the time-to-live.
    #[serde(default)]
    pub evicted_entries: u64,
    /// Bytes of blobs the collector deleted (evicted entries' and unreferenced blobs).
    #[serde(default)]
    pub evicted_bytes: u64,
    /// Blobs the collector deleted.
    #[serde(default)]
    pub collected_blobs: u64,
    /// Blobs `layercache-server verify` found corrupt and moved to `quarantine/`.
    #[serde(default)]
    pub quarantined_blobs: u64,
    /// The configured `--max-size`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Registry tags (`/v2/`), each an entry for the quota and time-to-live.
    #[serde(default)]
    pub tags: u64,
    /// Registry manifests (tagged or not).
    #[serde(default)]
    pub manifests: u64,
}

/// One entry in `GET /v1/entries`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntrySummary {
    pub namespace: Namespace,
    pub key: CacheKey,
    pub images: u64,
    pub layers: u64,
    pub total_size: u64,
    pub created: u64,
    pub last_used: u64,
    pub hits: u64,
}

/// One registry tag in `GET /v1/tags`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagSummary {
    /// The repository (a namespace).
    pub repository: String,
    pub tag: String,
    /// The manifest it names.
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of the manifest and the blobs it (and its child manifests) reference.
    pub total_size: u64,
    /// When the tag was last pushed, and last pulled (seconds since the epoch).
    pub updated: u64,
    pub last_used: u64,
    /// Pulls by tag.
    pub hits: u64,
}

/// `GET /v1/tags[?namespace=NS][&limit=N][&cursor=C]`: one page, sorted by repository and tag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagList {
    pub tags: Vec<TagSummary>,
    /// Pass as `cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/entries[?namespace=NS][&limit=N][&cursor=C]`: one page, sorted by namespace and key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryList {
    pub entries: Vec<EntrySummary>,
    /// Pass as `cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The JSON of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable machine-readable reason, e.g. `not_found`, `bad_archive`, `digest_mismatch`.
    pub code: String,
    /// What failed and what to do, for people.
    pub message: String,
    /// For `missing_blobs`: the digests the server lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Digest>,
}

// ---------------------------------------------------------------------------------------------
// Operator views (issue 4): build reports, history, largest, entry detail, disk use.

/// What the cache did for one build, as a runner reports it in a [`BuildReport`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BuildCache {
    Exact,
    Fallback,
    Prefix,
    /// Nothing restored: a cold build, whose time is the baseline later hits are compared with.
    Miss,
}

impl BuildCache {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildCache::Exact => "exact",
            BuildCache::Fallback => "fallback",
            BuildCache::Prefix => "prefix",
            BuildCache::Miss => "miss",
        }
    }
}

/// Seconds a build spent in each phase; phases a runner did not run are 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildSeconds {
    #[serde(default)]
    pub lookup: f64,
    #[serde(default)]
    pub restore: f64,
    #[serde(default)]
    pub build: f64,
    #[serde(default)]
    pub push: f64,
    /// Wall time of the whole run, the number time saved is computed from.
    pub total: f64,
}

/// `POST /v1/builds`: a runner reports how a build went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildReport {
    pub namespace: Namespace,
    pub key: CacheKey,
    pub cache: BuildCache,
    pub seconds: BuildSeconds,
    /// The image the build produced, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<Digest>,
}

/// `POST /v1/builds` answer (201): what the server credits the cache with for this build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildRecorded {
    /// `baseline_seconds - seconds.total`, at least 0; 0 for a miss or without a baseline.
    pub seconds_saved: f64,
    /// Total time of the latest cold build (`miss`) of the same key, the same namespace preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_seconds: Option<f64>,
}

/// One recorded build in [`BuildList`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildSummary {
    /// When the server received the report.
    pub at: u64,
    pub namespace: Namespace,
    pub key: CacheKey,
    pub cache: BuildCache,
    pub total_seconds: f64,
    pub seconds_saved: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<Digest>,
}

/// `GET /v1/builds[?namespace=NS]`: all-time totals and the most recent reports (newest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildList {
    /// Builds reported since the data dir was created (all namespaces).
    pub builds: u64,
    /// Seconds saved over those builds (all namespaces).
    pub seconds_saved: f64,
    pub recent: Vec<BuildSummary>,
}

/// One time bucket of [`StatsHistory`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistoryPoint {
    /// Bucket start, Unix seconds.
    pub start: u64,
    /// Lookups and image GETs that found an entry.
    pub hits: u64,
    pub misses: u64,
    pub hits_exact: u64,
    pub hits_fallback: u64,
    pub hits_prefix: u64,
    /// Build reports received.
    pub builds: u64,
    pub seconds_saved: f64,
}

/// `GET /v1/stats/history?window=1h|24h[&namespace=NS]`: activity in equal buckets, oldest first,
/// the last one holding now. Lookups count in the first namespace they asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsHistory {
    /// `1h` (minute buckets) or `24h` (hour buckets).
    pub window: String,
    pub bucket_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Namespace>,
    pub points: Vec<HistoryPoint>,
}

/// A layer blob and how many entries reference it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerUsage {
    pub diff_id: Digest,
    pub size: u64,
    pub entries: u64,
}

/// `GET /v1/largest[?limit=N]`: what fills the disk, biggest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Largest {
    pub entries: Vec<EntrySummary>,
    pub layers: Vec<LayerUsage>,
}

/// An entry's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryRef {
    pub namespace: Namespace,
    pub key: CacheKey,
}

/// Which other entries reference a layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerShares {
    pub diff_id: Digest,
    /// Other entries (not the one asked about), by name; capped at 50.
    pub shared_with: Vec<EntryRef>,
}

/// `GET /v1/entries/{ns}/{key}`: the manifest plus, for each of its layers that other entries also
/// reference, those entries. Reading it does not count as a hit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryDetail {
    pub manifest: EntryManifest,
    pub shares: Vec<LayerShares>,
}

/// `GET /v1/disk`: stored bytes against the configured quota.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUse {
    pub stored_bytes: u64,
    pub blobs: u64,
    /// The server's size limit; absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_answer_from_an_older_server_means_no_streamed_uploads() {
        let old: MissingResponse = serde_json::from_str(r#"{"missing": []}"#).unwrap();
        assert!(!old.streamed_uploads);
        let new: MissingResponse =
            serde_json::from_str(r#"{"missing": [], "streamed_uploads": true}"#).unwrap();
        assert!(new.streamed_uploads);
    }
}
