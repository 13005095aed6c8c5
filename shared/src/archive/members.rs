//! The members of a `docker save` tarball once streamed, and what its manifests say about them.
//!
//! [`Members`] maps each normalized path to a file (in memory or in the sink), a directory or a
//! link; it resolves links (staying inside the archive) and reads the small JSON documents.
//! [`Members::image_refs`] turns `manifest.json` (legacy layout) or `index.json` → image manifests
//! (OCI layout) into [`ImageRef`]s, every count checked against [`Limits`] before it is used.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;

use super::error::ArchiveError;
use super::format::{
    INDEX_MEDIA_TYPES, ManifestItem, OciIndex, OciManifest, check_count, parse_json,
};
use super::read::{Budget, Limits, normalize_member_path};
use crate::Digest;

/// Links followed before giving up (Docker writes chains of length 1).
const MAX_LINK_HOPS: usize = 32;
/// Nesting of OCI image indexes followed from `index.json`.
const MAX_INDEX_DEPTH: usize = 4;

/// Whether a document without a media type is an index: only the presence of `manifests`.
#[derive(Deserialize)]
struct HasManifests {
    manifests: Option<serde::de::IgnoredAny>,
}

/// A regular file member.
pub(super) struct FileMember<H> {
    /// sha256 of the member's bytes as stored in the tar (compressed, if it is gzip).
    pub(super) raw_digest: Digest,
    /// Its content, in memory or in the sink.
    pub(super) content: Content<H>,
}

/// Where a file member's content is.
pub(super) enum Content<H> {
    /// Small member held in memory, as stored (possibly gzip).
    Inline(Bytes),
    /// Member passed through the sink, uncompressed.
    Stored {
        /// Taken when a layer claims it; `None` afterwards.
        handle: Option<H>,
        /// sha256 of the uncompressed content.
        digest: Digest,
        /// Uncompressed size.
        size: u64,
    },
}

/// One tar member, by kind.
pub(super) enum Member<H> {
    File(FileMember<H>),
    Dir,
    /// Target relative to the link's directory.
    Symlink(String),
    /// Target relative to the archive root.
    Hardlink(String),
}

/// All members of the archive by normalized path.
pub(super) struct Members<H> {
    pub(super) map: HashMap<String, Member<H>>,
    /// What the documents may hold (and [`Limits::inline_threshold`], to report a metadata member
    /// that was too large to keep).
    pub(super) limits: Limits,
    /// Content bytes the sink may still take ([`Limits::max_content_bytes`]).
    pub(super) budget: std::rc::Rc<Budget>,
}

/// Where a link points, as a normalized archive path; `None` if it leaves the archive.
fn link_target(link: &str, member: &Member<impl Sized>) -> Option<(String, String)> {
    let (base, target): (&str, &str) = match member {
        Member::Symlink(t) => (link.rsplit_once('/').map_or("", |(dir, _)| dir), t),
        Member::Hardlink(t) => ("", t),
        _ => return None,
    };
    Some((base.to_string(), target.to_string()))
}

/// Joins a link target onto its base directory; `None` when it is absolute or climbs above the root.
fn join_target(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl<H> Members<H> {
    /// Adds a member; a repeated path must have the same content (or link target).
    pub(super) fn insert(&mut self, path: String, member: Member<H>) -> Result<(), ArchiveError> {
        let same = match (self.map.get(&path), &member) {
            (None, _) => {
                self.map.insert(path, member);
                return Ok(());
            }
            (Some(Member::File(a)), Member::File(b)) => a.raw_digest == b.raw_digest,
            (Some(Member::Dir), Member::Dir) => true,
            (Some(Member::Symlink(a)), Member::Symlink(b))
            | (Some(Member::Hardlink(a)), Member::Hardlink(b)) => a == b,
            _ => false,
        };
        if same {
            Ok(()) // the first copy is kept; this one (and its sink handle) is dropped
        } else {
            Err(ArchiveError::DuplicateMember { path })
        }
    }

    /// Follows links from `path` to a file or directory member, returning its path.
    fn resolve(&self, path: &str, referenced_by: &str) -> Result<String, ArchiveError> {
        let mut current = path.to_string();
        let mut referrer = referenced_by.to_string();
        for _ in 0..=MAX_LINK_HOPS {
            let member = self
                .map
                .get(&current)
                .ok_or_else(|| ArchiveError::MissingMember {
                    path: current.clone(),
                    referenced_by: referrer.clone(),
                })?;
            let Some((base, target)) = link_target(&current, member) else {
                return Ok(current);
            };
            let next = join_target(&base, &target).ok_or_else(|| ArchiveError::LinkEscapes {
                path: current.clone(),
                target: target.clone(),
            })?;
            referrer = current;
            current = next;
        }
        Err(ArchiveError::LinkLoop {
            path: path.to_string(),
        })
    }

    /// Every link must stay inside the archive and reach an existing member.
    pub(super) fn check_links(&self) -> Result<(), ArchiveError> {
        let mut links: Vec<&String> = self
            .map
            .iter()
            .filter(|(_, m)| matches!(m, Member::Symlink(_) | Member::Hardlink(_)))
            .map(|(p, _)| p)
            .collect();
        links.sort(); // deterministic error for several bad links
        for link in links {
            self.resolve(link, link)?;
        }
        Ok(())
    }

    /// The regular file `path` (after links) names, for a reference from `referenced_by`.
    pub(super) fn file(
        &mut self,
        path: &str,
        referenced_by: &str,
    ) -> Result<(String, &mut FileMember<H>), ArchiveError> {
        let resolved = self.resolve(path, referenced_by)?;
        match self.map.get_mut(&resolved) {
            Some(Member::File(f)) => Ok((resolved, f)),
            _ => Err(ArchiveError::NotAFile {
                path: resolved,
                referenced_by: referenced_by.to_string(),
            }),
        }
    }

    /// The bytes of a small JSON-ish member (manifest, index, config).
    pub(super) fn small_file(
        &mut self,
        path: &str,
        referenced_by: &str,
    ) -> Result<Bytes, ArchiveError> {
        let (resolved, file) = self.file(path, referenced_by)?;
        match &file.content {
            Content::Inline(b) => Ok(b.clone()),
            Content::Stored { .. } => Err(ArchiveError::TooLarge {
                what: format!("bytes in `{resolved}` (metadata is held in memory)"),
                limit: self.limits.inline_threshold,
            }),
        }
    }

    /// The images `manifest.json` (or else `index.json`) names.
    pub(super) fn image_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        if self.map.contains_key("manifest.json") {
            let mut refs = self.legacy_refs()?;
            // Engine 25+ writes both: `index.json` names the manifests, whose digests are the
            // image IDs of the containerd store. A bad index does not spoil a good manifest.json.
            if self.map.contains_key("index.json")
                && let Ok(oci) = self.oci_refs()
            {
                for r in &mut refs {
                    r.manifest = oci
                        .iter()
                        .find(|o| o.config_digest == r.config_digest)
                        .and_then(|o| o.manifest);
                }
            }
            Ok(refs)
        } else if self.map.contains_key("index.json") {
            self.oci_refs()
        } else {
            Err(ArchiveError::NotDockerSave {
                reason: "it has no `manifest.json` or `index.json` member".to_string(),
            })
        }
    }

    fn legacy_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        const MANIFEST: &str = "manifest.json";
        let bytes = self.small_file(MANIFEST, "the archive root")?;
        let items: Vec<ManifestItem> = parse_json(MANIFEST, &bytes, &self.limits)?;
        if items.is_empty() {
            return Err(ArchiveError::NoImages {
                path: MANIFEST.to_string(),
            });
        }
        check_count(items.len(), self.limits.max_images, || {
            format!("images in `{MANIFEST}`")
        })?;
        items
            .into_iter()
            .map(|item| {
                let config_path = normalize_member_path(item.config.as_bytes())?;
                let expected = digest_from_name(&config_path).ok_or_else(|| {
                    ArchiveError::ConfigNotDigestNamed {
                        path: item.config.clone(),
                        referenced_by: MANIFEST.to_string(),
                    }
                })?;
                check_count(item.layers.len(), self.limits.max_layers, || {
                    format!("layers of image `{}` in `{MANIFEST}`", item.config)
                })?;
                let layers = item
                    .layers
                    .iter()
                    .map(|l| normalize_member_path(l.as_bytes()))
                    .collect::<Result<_, _>>()?;
                Ok(ImageRef {
                    config_path,
                    config_digest: expected,
                    layers,
                    tags: item.repo_tags.unwrap_or_default(),
                    parent: item.parent,
                    referenced_by: MANIFEST.to_string(),
                    manifest: None,
                })
            })
            .collect()
    }

    fn oci_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        const INDEX: &str = "index.json";
        let bytes = self.small_file(INDEX, "the archive root")?;
        let index: OciIndex = parse_json(INDEX, &bytes, &self.limits)?;
        check_count(index.manifests.len(), self.limits.max_images, || {
            format!("manifests in `{INDEX}`")
        })?;
        let mut refs = Vec::new();
        for desc in &index.manifests {
            let tags: Vec<String> = oci_tag(&desc.annotations).into_iter().collect();
            self.walk_oci(desc, &tags, INDEX, 0, true, &mut refs)?;
        }
        if refs.is_empty() {
            return Err(ArchiveError::NoImages {
                path: INDEX.to_string(),
            });
        }
        Ok(refs)
    }

    /// Follows a descriptor of `index.json` or a nested index down to image manifests.
    ///
    /// `required` is false inside nested indexes: `docker save` of a multi-platform image includes
    /// only the platforms the engine has.
    fn walk_oci(
        &mut self,
        desc: &super::format::Descriptor,
        tags: &[String],
        referenced_by: &str,
        depth: usize,
        required: bool,
        out: &mut Vec<ImageRef>,
    ) -> Result<(), ArchiveError> {
        let path = blob_path(&desc.digest);
        if !required && !self.map.contains_key(&path) {
            return Ok(());
        }
        if desc
            .annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
        {
            return Ok(()); // build provenance, not an image
        }
        let bytes = self.small_file(&path, referenced_by)?;
        let found = Digest::of(&bytes);
        if found != desc.digest {
            return Err(ArchiveError::BlobDigestMismatch {
                path,
                expected: desc.digest,
                found,
            });
        }
        let is_index = match desc.media_type.as_deref() {
            Some(mt) => INDEX_MEDIA_TYPES.contains(&mt),
            None => parse_json::<HasManifests>(&path, &bytes, &self.limits)?
                .manifests
                .is_some(),
        };
        if is_index {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ArchiveError::BadJson {
                    path,
                    reason: format!("image indexes are nested more than {MAX_INDEX_DEPTH} deep"),
                });
            }
            let nested: OciIndex = parse_json(&path, &bytes, &self.limits)?;
            check_count(nested.manifests.len(), self.limits.max_images, || {
                format!("manifests in `{path}`")
            })?;
            for child in &nested.manifests {
                self.walk_oci(child, tags, &path, depth + 1, false, out)?;
            }
            return Ok(());
        }
        let manifest: OciManifest = parse_json(&path, &bytes, &self.limits)?;
        check_count(manifest.layers.len(), self.limits.max_layers, || {
            format!("layers in `{path}`")
        })?;
        let is_image_config = manifest.config.media_type.as_deref().is_none_or(|mt| {
            mt == "application/vnd.oci.image.config.v1+json"
                || mt == "application/vnd.docker.container.image.v1+json"
        });
        if !is_image_config {
            return Ok(()); // an artifact (attestation, signature), not an image
        }
        check_count(out.len() + 1, self.limits.max_images, || {
            "images reached from `index.json`".to_string()
        })?;
        out.push(ImageRef {
            config_path: blob_path(&manifest.config.digest),
            config_digest: manifest.config.digest,
            layers: manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect(),
            tags: tags.to_vec(),
            parent: None,
            referenced_by: path,
            manifest: Some(desc.digest),
        });
        Ok(())
    }
}

/// An image as a manifest names it, before verification.
pub(super) struct ImageRef {
    /// Normalized path of the config member.
    pub(super) config_path: String,
    /// The digest the config's name (or descriptor) claims.
    pub(super) config_digest: Digest,
    /// Normalized paths of the layer members, bottom-up.
    pub(super) layers: Vec<String>,
    pub(super) tags: Vec<String>,
    pub(super) parent: Option<Digest>,
    /// The manifest naming this image, for errors.
    pub(super) referenced_by: String,
    /// The OCI manifest's digest (`None` in the legacy layout).
    pub(super) manifest: Option<Digest>,
}

/// `blobs/sha256/<hex>`, where OCI layouts keep a blob.
fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The digest a member's name encodes: `blobs/sha256/<hex>` or `[dir/]<hex>.json`.
fn digest_from_name(path: &str) -> Option<Digest> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex).ok();
    }
    let name = path.rsplit('/').next()?;
    Digest::from_hex(name.strip_suffix(".json")?).ok()
}

/// A `repo:tag` from OCI annotations, in Docker's short form (`docker.io/library/` removed).
fn oci_tag(annotations: &HashMap<String, String>) -> Option<String> {
    let full = match annotations.get("io.containerd.image.name") {
        Some(name) => name.as_str(),
        None => {
            // `ref.name` may be a bare tag (`latest`); only a full `name:tag` is usable.
            let r = annotations.get("org.opencontainers.image.ref.name")?;
            let last = r.rsplit('/').next().unwrap_or(r);
            if !last.contains(':') {
                return None;
            }
            r.as_str()
        }
    };
    if full.contains('@') {
        return None; // a digest reference, not a tag
    }
    let short = full
        .strip_prefix("docker.io/library/")
        .or_else(|| full.strip_prefix("docker.io/"))
        .unwrap_or(full);
    Some(short.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_resolve_relative_to_the_link_and_stay_inside() {
        assert_eq!(join_target("a", "../b/layer.tar").unwrap(), "b/layer.tar");
        assert_eq!(join_target("", "b/./c").unwrap(), "b/c");
        assert_eq!(join_target("a", "../../x"), None);
        assert_eq!(join_target("a", "/etc/passwd"), None);
        assert_eq!(join_target("a", ""), None);
    }

    #[test]
    fn config_names_encode_their_digest() {
        let d = Digest::of(b"c");
        assert_eq!(digest_from_name(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(
            digest_from_name(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_from_name("config.json"), None);
        assert_eq!(digest_from_name(&d.hex()), None);
    }

    #[test]
    fn oci_tags_prefer_the_containerd_name_in_short_form() {
        let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let both = ann(&[
            ("io.containerd.image.name", "docker.io/library/web:2"),
            ("org.opencontainers.image.ref.name", "2"),
        ]);
        assert_eq!(oci_tag(&both).as_deref(), Some("web:2"));
        let bare = ann(&[("org.opencontainers.image.ref.name", "latest")]);
        assert_eq!(oci_tag(&bare), None, "a bare tag has no repository");
        let full = ann(&[("org.opencontainers.image.ref.name", "reg:5000/acme/web:1")]);
        assert_eq!(oci_tag(&full).as_deref(), Some("reg:5000/acme/web:1"));
        let port_only = ann(&[("org.opencontainers.image.ref.name", "reg:5000/web")]);
        assert_eq!(oci_tag(&port_only), None);
    }
}
