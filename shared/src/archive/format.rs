//! The JSON documents of a `docker save` tarball, as serde types.
//!
//! Only the fields layercache needs are modelled; unknown fields are ignored so newer engines'
//! additions do not break reading. `manifest.json` uses Docker's PascalCase names, the OCI documents
//! the camelCase names of the OCI image spec.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ArchiveError;
use crate::Digest;

/// One element of `manifest.json` (an image), as Docker writes and reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ManifestItem {
    /// Path of the config member (`<hex>.json` or `blobs/sha256/<hex>`).
    pub config: String,
    /// `repo:tag` names; Docker writes `null` for an untagged image.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer members, bottom-up.
    #[serde(default)]
    pub layers: Vec<String>,
    /// The parent image ID, when the parent was saved too; the legacy builder's cache relies on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
}

/// An OCI content descriptor: which blob, and what it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Tells an image index from an image manifest, and gzip layers from plain ones.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The blob's digest (of its bytes as stored, i.e. compressed for gzip layers).
    pub digest: Digest,
    /// Image names (`io.containerd.image.name`, `org.opencontainers.image.ref.name`) and
    /// attestation markers.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// `index.json` or a nested image index: a list of descriptors.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciIndex {
    /// Image manifests or nested indexes.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI (or Docker v2) image manifest: one config, layers bottom-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom-up.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config layercache reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    /// The layer diff_ids, which the image ID (config digest) covers.
    pub rootfs: RootFs,
    /// Build steps; `docker load` compares them to accept a `Parent` link, so the reader does too.
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// sha256 of each uncompressed layer tar, bottom-up.
    pub diff_ids: Vec<Digest>,
}

/// Media types of image indexes (OCI and Docker manifest lists).
pub const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Parses an image config and returns its `rootfs.diff_ids`, bottom-up.
///
/// For callers that hold a config blob outside a tarball (the server committing an entry from
/// uploaded blobs). `path` only names the config in the error.
pub fn config_diff_ids(path: &str, config: &[u8]) -> Result<Vec<Digest>, ArchiveError> {
    Ok(parse_json::<ImageConfig>(path, config)?.rootfs.diff_ids)
}

/// Parses a JSON member, naming it in the error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &[u8],
) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadJson {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_item_reads_dockers_names_and_null_tags() {
        let items: Vec<ManifestItem> = serde_json::from_str(
            r#"[{"Config":"a.json","RepoTags":null,"Layers":["x/layer.tar"],"Extra":1}]"#,
        )
        .unwrap();
        assert_eq!(items[0].config, "a.json");
        assert_eq!(items[0].repo_tags, None);
        assert_eq!(items[0].parent, None);
    }

    #[test]
    fn config_without_diff_ids_is_bad_json() {
        let err = config_diff_ids("c.json", br#"{"rootfs":{"type":"layers"}}"#).unwrap_err();
        assert!(matches!(err, ArchiveError::BadJson { ref path, .. } if path == "c.json"));
        let ok = config_diff_ids(
            "c.json",
            format!(r#"{{"rootfs":{{"diff_ids":["{}"]}}}}"#, Digest::of(b"")).as_bytes(),
        )
        .unwrap();
        assert_eq!(ok, vec![Digest::of(b"")]);
    }
}
