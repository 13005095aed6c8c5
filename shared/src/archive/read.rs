//! Reading `docker save` tarballs. (Stub: to be written.)

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;

use crate::Digest;

/// Size limits that keep a hostile tarball from exhausting memory.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Members up to this size are held in memory (configs, manifests); larger ones stream to the sink.
    pub inline_threshold: u64,
    /// Total bytes of members held in memory.
    pub max_inline_total: u64,
    /// Number of tar members.
    pub max_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inline_threshold: 1 << 20,
            max_inline_total: 64 << 20,
            max_members: 100_000,
        }
    }
}

/// Where layer content goes while the archive streams by (a temp file on the server).
pub trait BlobSink {
    /// Owns the stored bytes until the caller keeps them; dropping it must discard them.
    type Handle;
    /// Reads `content` to its end and stores it.
    fn store(&mut self, content: &mut dyn Read) -> std::io::Result<Self::Handle>;
}

/// A layer streamed to the sink: its diff_id, uncompressed size and the sink's handle.
#[derive(Debug)]
pub struct StoredBlob<H> {
    pub digest: Digest,
    pub size: u64,
    pub handle: H,
}

/// An image found in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedImage {
    /// Config digest.
    pub id: Digest,
    pub parent: Option<Digest>,
    pub tags: Vec<String>,
    /// The config's `rootfs.diff_ids`, bottom-up; each is a key of [`ParsedArchive::layers`].
    pub diff_ids: Vec<Digest>,
}

/// A verified archive: every image's config and every layer it names are present and match.
#[derive(Debug)]
pub struct ParsedArchive<H> {
    /// Images with parents before children.
    pub images: Vec<ParsedImage>,
    /// Raw config JSON by digest.
    pub configs: HashMap<Digest, Bytes>,
    /// Layers by diff_id.
    pub layers: HashMap<Digest, StoredBlob<H>>,
}

/// Why a tarball was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the tarball failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Streams a `docker save` tarball, storing layers through `sink`.
pub fn read_archive<R: Read, S: BlobSink>(
    _input: R,
    _sink: &mut S,
    _limits: &Limits,
) -> Result<ParsedArchive<S::Handle>, ArchiveError> {
    todo!("archive reader")
}
