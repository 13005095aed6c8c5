//! Writing docker-loadable legacy tarballs. (Stub: to be written.)

use std::collections::HashSet;

use bytes::Bytes;

use crate::Digest;

/// One image to put in the tarball.
#[derive(Debug, Clone)]
pub struct PlanImage {
    pub id: Digest,
    pub config_size: u64,
    pub parent: Option<Digest>,
    pub tags: Vec<String>,
    /// diff_id and uncompressed size of each layer, bottom-up.
    pub layers: Vec<(Digest, u64)>,
}

/// A run of tarball bytes: literal bytes, or the whole content of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Inline(Bytes),
    Blob { digest: Digest, size: u64 },
}

/// The tarball as pieces, with its exact length.
#[derive(Debug, Clone)]
pub struct TarPlan {
    pub pieces: Vec<Piece>,
    pub total_len: u64,
}

/// Plans a legacy-layout tarball of `images` (parents before children). Layers in `skip_layers` are
/// named in `manifest.json` but their files are left out (for an engine that already has them).
pub fn plan_legacy(_images: &[PlanImage], _skip_layers: &HashSet<Digest>) -> TarPlan {
    todo!("tar planner")
}
