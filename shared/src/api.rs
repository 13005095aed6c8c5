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

/// `GET /v1/entries[?namespace=NS]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryList {
    pub entries: Vec<EntrySummary>,
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
