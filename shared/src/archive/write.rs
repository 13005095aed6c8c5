//! Writing docker-loadable legacy tarballs, as a plan of pieces.
//!
//! [`plan_legacy`] lays out the tarball Engine 20.10's `docker load` reads (`manifest.json`, configs
//! `<id hex>.json`, layers `<diff_id hex>/layer.tar`) without touching any blob: tar headers, padding
//! and generated files are [`Piece::Inline`], configs and layers [`Piece::Blob`] references. The
//! server streams the pieces from its blob store (with an exact `Content-Length`, [`TarPlan::total_len`]);
//! sync callers and tests use [`write_plan`].
//!
//! Every distinct layer is written once, under its diff_id, so layers shared by images (or repeated in
//! one image) cost nothing extra. Layers in `skip_layers` are still named in `manifest.json` but their
//! files are left out: `docker load` only opens a layer file when it lacks that layer chain.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};

use bytes::Bytes;

use super::format::ManifestItem;
use crate::Digest;
use crate::image_ref::ImageRef;

/// One image to put in the tarball.
#[derive(Debug, Clone)]
pub struct PlanImage {
    /// Image ID = config digest; the config blob is fetched by it.
    pub id: Digest,
    /// Size of the config blob, for its tar header.
    pub config_size: u64,
    /// Written as `Parent` so the legacy builder finds the cached chain; must be an earlier image.
    pub parent: Option<Digest>,
    /// `repo:tag` names `docker load` applies.
    pub tags: Vec<String>,
    /// diff_id and uncompressed size of each layer, bottom-up.
    pub layers: Vec<(Digest, u64)>,
}

/// A run of tarball bytes: literal bytes, or the whole content of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Tar headers, padding, generated files.
    Inline(Bytes),
    /// All `size` bytes of the blob `digest` (a config or an uncompressed layer).
    Blob { digest: Digest, size: u64 },
}

impl Piece {
    /// Bytes this piece contributes to the tarball.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Inline(b) => b.len() as u64,
            Piece::Blob { size, .. } => *size,
        }
    }

    /// Whether the piece adds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tarball as pieces, with its exact length.
#[derive(Debug, Clone)]
pub struct TarPlan {
    /// In tarball order; consecutive inline bytes are merged into one piece.
    pub pieces: Vec<Piece>,
    /// Sum of the pieces' lengths: the tarball's size, sent as `Content-Length`.
    pub total_len: u64,
}

/// Tar block size: headers and data are padded to it.
const BLOCK: u64 = 512;

/// Accumulates pieces, merging inline bytes.
#[derive(Default)]
struct Planner {
    pieces: Vec<Piece>,
    pending: Vec<u8>,
    total: u64,
}

impl Planner {
    fn inline(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.total += bytes.len() as u64;
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let bytes = std::mem::take(&mut self.pending);
            self.pieces.push(Piece::Inline(Bytes::from(bytes)));
        }
    }

    fn header(&mut self, path: &str, size: u64, kind: tar::EntryType) {
        let mut h = tar::Header::new_ustar();
        // Every name written here is at most 74 ASCII bytes (`<64 hex>/layer.tar`), which fits the
        // 100-byte name field, so this cannot fail.
        h.set_path(path)
            .expect("layercache's fixed member names fit a ustar header");
        h.set_size(size);
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.inline(h.as_bytes());
    }

    fn pad(&mut self, size: u64) {
        let rem = size % BLOCK;
        if rem != 0 {
            self.inline(&[0u8; BLOCK as usize][..(BLOCK - rem) as usize]);
        }
    }

    fn dir(&mut self, path: &str) {
        self.header(&format!("{path}/"), 0, tar::EntryType::Directory);
    }

    fn file_inline(&mut self, path: &str, content: &[u8]) {
        self.header(path, content.len() as u64, tar::EntryType::Regular);
        self.inline(content);
        self.pad(content.len() as u64);
    }

    fn file_blob(&mut self, path: &str, digest: Digest, size: u64) {
        self.header(path, size, tar::EntryType::Regular);
        self.flush();
        self.pieces.push(Piece::Blob { digest, size });
        self.total += size;
        self.pad(size);
    }

    fn finish(mut self) -> TarPlan {
        // End of archive: two zero blocks.
        self.inline(&[0u8; 2 * BLOCK as usize]);
        self.flush();
        TarPlan {
            pieces: self.pieces,
            total_len: self.total,
        }
    }
}

/// Plans a legacy-layout tarball of `images` (parents before children). Layers in `skip_layers` are
/// named in `manifest.json` but their files are left out (for an engine that already has them).
///
/// `docker load` skips a layer file only when it already has that layer's *chain* (the layer on top
/// of the same layers below it). A diff_id used at several positions (the same `COPY` twice) must
/// therefore only be skipped when every chain it appears in is present; otherwise the load fails
/// with "open …/layer.tar: no such file or directory".
pub fn plan_legacy(images: &[PlanImage], skip_layers: &HashSet<Digest>) -> TarPlan {
    let mut p = Planner::default();
    let mut written: HashSet<Digest> = HashSet::new();
    let mut manifest = Vec::with_capacity(images.len());
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in images {
        if written.insert(image.id) {
            p.file_blob(&config_name(&image.id), image.id, image.config_size);
        }
        for (diff_id, size) in &image.layers {
            if !skip_layers.contains(diff_id) && written.insert(*diff_id) {
                p.dir(&diff_id.hex());
                p.file_blob(&layer_name(diff_id), *diff_id, *size);
            }
        }
        manifest.push(ManifestItem {
            config: config_name(&image.id),
            repo_tags: Some(image.tags.clone()),
            layers: image.layers.iter().map(|(d, _)| layer_name(d)).collect(),
            parent: image.parent,
        });
        // `repositories` is the pre-1.10 tag file; old loaders want the top layer's directory.
        let top = image
            .layers
            .last()
            .map_or_else(|| image.id.hex(), |(d, _)| d.hex());
        for tag in &image.tags {
            // Tags the engine reported are references; one that is not is left out of this
            // legacy file (`manifest.json` still carries it).
            if let Ok(r) = tag.parse::<ImageRef>() {
                repositories
                    .entry(r.name())
                    .or_default()
                    .insert(r.tag_or_latest().to_string(), top.clone());
            }
        }
    }
    // Serializing these plain structs and maps cannot fail.
    let manifest_json = serde_json::to_vec(&manifest).expect("manifest.json serializes");
    p.file_inline("manifest.json", &manifest_json);
    if !repositories.is_empty() {
        let repos_json = serde_json::to_vec(&repositories).expect("repositories serializes");
        p.file_inline("repositories", &repos_json);
    }
    p.finish()
}

/// `<id hex>.json`, the config member of a legacy tarball.
fn config_name(id: &Digest) -> String {
    format!("{}.json", id.hex())
}

/// `<diff_id hex>/layer.tar`, the layer member of a legacy tarball.
fn layer_name(diff_id: &Digest) -> String {
    format!("{}/layer.tar", diff_id.hex())
}

/// Writes `plan` to `w`, asking `fetch(digest, size, out)` to write each blob's content to `out`.
///
/// Errors: whatever `w` or `fetch` return, and [`io::ErrorKind::InvalidData`] when `fetch` writes a
/// different number of bytes than the plan says (the tarball would be corrupt).
pub fn write_plan<W: Write>(
    plan: &TarPlan,
    w: &mut W,
    mut fetch: impl FnMut(&Digest, u64, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    for piece in &plan.pieces {
        match piece {
            Piece::Inline(bytes) => w.write_all(bytes)?,
            Piece::Blob { digest, size } => {
                let mut out = Exact {
                    inner: &mut *w,
                    left: *size,
                };
                fetch(digest, *size, &mut out)?;
                if out.left != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {digest} gave {} bytes, but the tarball needs {size}",
                            size - out.left
                        ),
                    ));
                }
            }
        }
    }
    w.flush()
}

/// Refuses writes beyond `left` bytes, so a wrong blob cannot corrupt the tarball silently.
struct Exact<'a, W> {
    inner: &'a mut W,
    left: u64,
}

impl<W: Write> Write for Exact<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a blob is longer than the size the tarball plan gives it",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &[u8], layers: &[(&[u8], u64)], tags: &[&str]) -> PlanImage {
        PlanImage {
            id: Digest::of(id),
            config_size: 100,
            parent: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            layers: layers.iter().map(|(d, s)| (Digest::of(d), *s)).collect(),
        }
    }

    #[test]
    fn total_len_counts_headers_padding_blobs_and_end_blocks() {
        let plan = plan_legacy(&[image(b"c", &[(b"l", 1000)], &[])], &HashSet::new());
        // config: header + 100 → 512; dir header; layer header + 1000 → 1024; manifest.json
        // (< 512 bytes) header + 512; end 1024.
        assert_eq!(
            plan.total_len,
            512 + 512 + 512 + 512 + 1024 + 512 + 512 + 1024
        );
        assert_eq!(
            plan.pieces.iter().map(Piece::len).sum::<u64>(),
            plan.total_len
        );
        assert_eq!(plan.total_len % BLOCK, 0);
    }

    #[test]
    fn shared_layers_are_written_once_and_skipped_ones_not_at_all() {
        let a = image(b"a", &[(b"l1", 10), (b"l2", 20)], &["x:1"]);
        let b = image(b"b", &[(b"l1", 10), (b"l2", 20), (b"l1", 10)], &[]);
        let blobs = |plan: &TarPlan| -> Vec<Digest> {
            plan.pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Blob { digest, .. } => Some(*digest),
                    Piece::Inline(_) => None,
                })
                .collect()
        };
        let all = plan_legacy(&[a.clone(), b.clone()], &HashSet::new());
        assert_eq!(
            blobs(&all),
            vec![
                Digest::of(b"a"),
                Digest::of(b"l1"),
                Digest::of(b"l2"),
                Digest::of(b"b")
            ]
        );
        let skipped = plan_legacy(&[a, b], &HashSet::from([Digest::of(b"l1")]));
        assert!(!blobs(&skipped).contains(&Digest::of(b"l1")));
    }

    #[test]
    fn repositories_split_tags_at_the_tag_colon_not_the_registry_port() {
        let img = image(b"c", &[(b"l", 10)], &["reg:5000/web:1", "web", "Not A Ref"]);
        let plan = plan_legacy(&[img], &HashSet::new());
        let inline: Vec<u8> = plan
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Inline(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        let text = String::from_utf8_lossy(&inline);
        let top = Digest::of(b"l").hex();
        let want = format!(r#"{{"reg:5000/web":{{"1":"{top}"}},"web":{{"latest":"{top}"}}}}"#);
        assert!(text.contains(&want), "{text}");
        assert!(!text.contains(r#""Not A Ref":{"#), "{text}");
    }
}
