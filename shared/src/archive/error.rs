//! Why a `docker save` tarball was refused: one [`ArchiveError`] with a variant per check.
//!
//! Every variant names the member or image at fault, so a CI log says what to fix, and
//! [`ArchiveError::code`] gives the stable code the server answers in its JSON error body.

use std::io;

use crate::Digest;

/// Why a tarball was refused (or could not be read).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the input failed for a reason other than its content (e.g. the connection dropped).
    #[error("reading the tarball failed: {0}")]
    Io(#[from] io::Error),

    /// The [`super::BlobSink`] could not store a member (e.g. the disk is full): not the tarball's fault.
    #[error("storing member `{path}` failed: {source}")]
    Store {
        /// The member being stored.
        path: String,
        /// What the sink reported.
        #[source]
        source: io::Error,
    },

    /// The input is not a tar archive, or a tar archive without `manifest.json` or `index.json`.
    #[error(
        "the input is not a `docker save` tarball: {reason} (send the output of `docker save`, \
         uncompressed)"
    )]
    NotDockerSave {
        /// What was missing or unreadable.
        reason: String,
    },

    /// The tar structure is broken after a valid start (a bad header checksum, a bad number field).
    #[error("the tarball is malformed near byte {offset}: {reason}")]
    BadTar {
        /// Input bytes read when the error was seen.
        offset: u64,
        /// What the tar reader reported.
        reason: String,
    },

    /// The input ends before the archive does (a member is short, or the end-of-archive blocks are
    /// missing).
    #[error(
        "the tarball is truncated: it ends after {offset} bytes{}, before the archive is complete \
         (was the upload or `docker save` interrupted?)",
        member.as_ref().map(|m| format!(" inside member `{m}`")).unwrap_or_default()
    )]
    Truncated {
        /// Input bytes read in total.
        offset: u64,
        /// The member being read when the input ended, if any.
        member: Option<String>,
    },

    /// A member path is absolute, contains `..`, or is not UTF-8.
    #[error("member path `{path}` is unsafe: paths must be relative and must not contain `..`")]
    UnsafePath {
        /// The path as found in the tar header (lossy UTF-8).
        path: String,
    },

    /// A symlink or hard link points outside the archive (absolute, or above its root).
    #[error("link `{path}` points to `{target}`, outside the archive")]
    LinkEscapes {
        /// The link member.
        path: String,
        /// Its target as written in the tar header.
        target: String,
    },

    /// Links that point at each other without reaching a file.
    #[error("link `{path}` is part of a link loop (or a chain of more than 32 links)")]
    LinkLoop {
        /// The link where resolution started.
        path: String,
    },

    /// A member type `docker save` never writes (device, fifo, sparse file, …).
    #[error(
        "member `{path}` has unsupported type `{kind}`: `docker save` writes only files, directories and links"
    )]
    UnsupportedMember {
        /// The member.
        path: String,
        /// The tar entry type, as in the header.
        kind: String,
    },

    /// The same path appears twice with different content.
    #[error("member `{path}` appears twice with different content")]
    DuplicateMember {
        /// The repeated path.
        path: String,
    },

    /// A member that a manifest or link names is not in the archive.
    #[error("member `{path}` is missing, but `{referenced_by}` refers to it")]
    MissingMember {
        /// The absent path.
        path: String,
        /// The manifest or link naming it.
        referenced_by: String,
    },

    /// A member that should be a file (config, layer, manifest) is a directory.
    #[error("member `{path}` is not a regular file, but `{referenced_by}` uses it as one")]
    NotAFile {
        /// The member.
        path: String,
        /// The manifest or link naming it.
        referenced_by: String,
    },

    /// A JSON member (manifest, index, config) does not parse or lacks a required field.
    #[error("`{path}` is not valid: {reason}")]
    BadJson {
        /// The member.
        path: String,
        /// The parser's complaint.
        reason: String,
    },

    /// A manifest names a config file that is not named after a sha256 digest.
    #[error(
        "config `{path}` named by `{referenced_by}` is not named after its digest \
         (`<hex>.json` or `blobs/sha256/<hex>`)"
    )]
    ConfigNotDigestNamed {
        /// The config path.
        path: String,
        /// The manifest naming it.
        referenced_by: String,
    },

    /// A config's sha256 differs from the digest in its name: it was altered or corrupted.
    #[error("config `{path}` has digest {found}, but its name says {expected}")]
    ConfigDigestMismatch {
        /// The config member.
        path: String,
        /// The digest its name claims.
        expected: Digest,
        /// The digest of its bytes.
        found: Digest,
    },

    /// An OCI blob (`blobs/sha256/<hex>`) whose content hashes to something else.
    #[error("blob `{path}` has digest {found}, but its name says {expected}")]
    BlobDigestMismatch {
        /// The blob member.
        path: String,
        /// The digest its name claims.
        expected: Digest,
        /// The digest of its bytes (compressed, as stored).
        found: Digest,
    },

    /// An image lists a different number of layer files than its config has `diff_ids`.
    #[error("image {image} lists {layers} layer file(s) but its config has {diff_ids} diff_id(s)")]
    LayerCountMismatch {
        /// The image (config digest).
        image: Digest,
        /// Layer files in the manifest.
        layers: usize,
        /// Entries of `rootfs.diff_ids`.
        diff_ids: usize,
    },

    /// A layer's uncompressed content does not hash to the config's diff_id.
    #[error(
        "layer {index} (0 = bottom) of image {image} has uncompressed digest {found}, but the \
         config says {expected}"
    )]
    LayerDigestMismatch {
        /// The image (config digest).
        image: Digest,
        /// Position of the layer, 0 = bottom.
        index: usize,
        /// The diff_id in the config.
        expected: Digest,
        /// The sha256 of the uncompressed layer.
        found: Digest,
    },

    /// A gzip-compressed member cannot be decompressed.
    #[error("member `{path}` starts like gzip but does not decompress: {reason}")]
    BadGzip {
        /// The member.
        path: String,
        /// The decoder's complaint.
        reason: String,
    },

    /// `Parent` names an image that is not in the archive.
    #[error("image {image} names parent {parent}, which is not an image of this tarball")]
    UnknownParent {
        /// The child image.
        image: Digest,
        /// The parent it names.
        parent: Digest,
    },

    /// `Parent` names an image of the archive that cannot be its parent (`docker load` would refuse).
    #[error("image {parent} is not a valid parent of {image}: {reason}")]
    InvalidParent {
        /// The child image.
        image: Digest,
        /// The parent it names.
        parent: Digest,
        /// Which check failed.
        reason: String,
    },

    /// The archive has a manifest but it lists no image.
    #[error("the tarball lists no image (`{path}` is empty)")]
    NoImages {
        /// The manifest that was empty.
        path: String,
    },

    /// The layers inflate (gzip) to more than [`super::Limits::max_content_bytes`].
    #[error(
        "the tarball's layers hold more than {limit} bytes once decompressed (gzip layers count \
         inflated)"
    )]
    ContentTooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },

    /// A limit of [`super::Limits`] was exceeded.
    #[error("the tarball has too many {what}: the limit is {limit}")]
    TooLarge {
        /// What was counted ("members", "bytes of small members", "bytes in config `x`").
        what: String,
        /// The limit that was exceeded.
        limit: u64,
    },
}

impl ArchiveError {
    /// Stable, machine-readable reason, used as the `code` of the server's JSON error body.
    ///
    /// `io` and `storage` are not the tarball's fault (a server answers 5xx, or 4xx for a client
    /// whose upload broke); every other code means the tarball itself is bad.
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveError::Io(_) => "io",
            ArchiveError::Store { .. } => "storage",
            ArchiveError::NotDockerSave { .. } => "not_docker_save",
            ArchiveError::Truncated { .. } => "truncated",
            ArchiveError::ConfigDigestMismatch { .. }
            | ArchiveError::BlobDigestMismatch { .. }
            | ArchiveError::LayerDigestMismatch { .. } => "digest_mismatch",
            ArchiveError::TooLarge { .. } | ArchiveError::ContentTooLarge { .. } => "too_large",
            ArchiveError::UnsafePath { .. }
            | ArchiveError::LinkEscapes { .. }
            | ArchiveError::LinkLoop { .. }
            | ArchiveError::UnsupportedMember { .. } => "unsafe_archive",
            ArchiveError::BadTar { .. }
            | ArchiveError::DuplicateMember { .. }
            | ArchiveError::MissingMember { .. }
            | ArchiveError::NotAFile { .. }
            | ArchiveError::BadJson { .. }
            | ArchiveError::ConfigNotDigestNamed { .. }
            | ArchiveError::LayerCountMismatch { .. }
            | ArchiveError::BadGzip { .. }
            | ArchiveError::UnknownParent { .. }
            | ArchiveError::InvalidParent { .. }
            | ArchiveError::NoImages { .. } => "bad_archive",
        }
    }
}
