//! The `docker save` tarball format.
//!
//! - [`read`]: streams a tarball (legacy layout of Engine ≤ 24, or OCI layout of Engine 25+, layers
//!   plain or gzip-compressed), verifies it, and hands each layer's uncompressed content to a
//!   [`BlobSink`] as it goes: nothing of a layer is held in memory.
//! - [`write`]: plans a docker-loadable legacy tarball (with `Parent` links) as a list of
//!   [`write::Piece`]s: inline header/metadata bytes and references to stored blobs, so a server or
//!   runner can stream it from its blob store without building it anywhere.
//! - [`format`]: serde types of `manifest.json`, `index.json`, OCI manifests and image configs.
//!   `members` (links, manifests → image references) and `assemble` (checks against configs,
//!   parents first) are its later steps.
//! - `error`: [`ArchiveError`], why a tarball was refused, with a stable [`ArchiveError::code`].

mod assemble;
mod error;
pub mod format;
mod members;
pub mod read;
pub mod write;

use crate::Digest;

pub use format::config_diff_ids;
pub use read::{
    ArchiveError, BlobSink, Limits, ParsedArchive, ParsedImage, StoredBlob, read_archive,
};
pub use write::{Piece, PlanImage, TarPlan, plan_legacy, write_plan};

/// A `repo:tag` reference as found in `RepoTags`.
pub type RepoTag = String;

/// The config digest of an image is its ID.
pub type ImageId = Digest;
