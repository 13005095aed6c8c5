//! The `docker save` tarball format.
//!
//! - [`read`]: streams a tarball (legacy layout of Engine ≤ 24, or OCI layout of Engine 25+, layers
//!   plain or gzip-compressed), verifies it, and hands each layer's uncompressed content to a
//!   [`BlobSink`] as it goes: nothing of a layer is held in memory.
//! - [`write`]: plans a docker-loadable legacy tarball (with `Parent` links) as a list of
//!   [`write::Piece`]s: inline header/metadata bytes and references to stored blobs, so a server or
//!   runner can stream it from its blob store without building it anywhere.

pub mod read;
pub mod write;

use crate::Digest;

pub use read::{
    ArchiveError, BlobSink, Limits, ParsedArchive, ParsedImage, StoredBlob, read_archive,
};
pub use write::{Piece, PlanImage, TarPlan, plan_legacy};

/// A `repo:tag` reference as found in `RepoTags`.
pub type RepoTag = String;

/// The config digest of an image is its ID.
pub type ImageId = Digest;
