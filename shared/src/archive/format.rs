//! The JSON documents of a `docker save` tarball, as serde types.
//!
//! Only the fields layercache needs are modelled; unknown fields are ignored so newer engines'
//! additions do not break reading. `manifest.json` uses Docker's PascalCase names, the OCI documents
//! the camelCase names of the OCI image spec.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{ArchiveError, Limits};
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
    pub history: Vec<HistoryEntry>,
}

/// One build step of a config's `history`: the fields `docker load` compares (moby's
/// `image.History.Equal`) to accept a `Parent` link; anything else in an entry is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub empty_layer: Option<bool>,
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
/// uploaded blobs). `path` only names the config in the error. The config must stay within
/// `limits` ([`Limits::max_json_bytes`], [`Limits::max_json_values`], [`Limits::max_layers`]).
pub fn config_diff_ids(
    path: &str,
    config: &[u8],
    limits: &Limits,
) -> Result<Vec<Digest>, ArchiveError> {
    let diff_ids = parse_json::<ImageConfig>(path, config, limits)?
        .rootfs
        .diff_ids;
    check_count(diff_ids.len(), limits.max_layers, || {
        format!("layers (`rootfs.diff_ids`) in `{path}`")
    })?;
    Ok(diff_ids)
}

/// Parses a JSON member, naming it in the error.
///
/// Before anything is built from it, the document's size and its number of values (array
/// elements and object members at any depth, counted without allocating) are checked against
/// `limits`: a few MiB of `[{},{},…]` would otherwise become millions of heap objects.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, ArchiveError> {
    let bad = |e: serde_json::Error| ArchiveError::BadJson {
        path: path.to_string(),
        reason: e.to_string(),
    };
    if bytes.len() as u64 > limits.max_json_bytes {
        return Err(ArchiveError::TooLarge {
            what: format!("bytes in JSON document `{path}`"),
            limit: limits.max_json_bytes,
        });
    }
    let Counted(values) = serde_json::from_slice(bytes).map_err(bad)?;
    check_count(values, limits.max_json_values, || {
        format!("values in JSON document `{path}`")
    })?;
    serde_json::from_slice(bytes).map_err(bad)
}

/// The number of values (array elements, object members and scalars, at any depth) in a JSON
/// document, counted without building anything: what a caller checks before parsing untrusted
/// JSON into types that allocate per value.
pub fn json_value_count(bytes: &[u8]) -> Result<usize, serde_json::Error> {
    serde_json::from_slice::<Counted>(bytes).map(|Counted(n)| n)
}

/// Refuses `count` items of `what` above `limit`.
pub(crate) fn check_count(
    count: usize,
    limit: usize,
    what: impl FnOnce() -> String,
) -> Result<(), ArchiveError> {
    if count > limit {
        return Err(ArchiveError::TooLarge {
            what: what(),
            limit: limit as u64,
        });
    }
    Ok(())
}

/// The number of values in a JSON document, found by walking it without keeping anything.
struct Counted(usize);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> serde::de::Visitor<'de> for CountVisitor {
    type Value = Counted;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_str<E>(self, _: &str) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_unit<E>(self) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_none<E>(self) -> Result<Counted, E> {
        Ok(Counted(1))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Counted, A::Error> {
        let mut n = 1usize;
        while let Some(Counted(c)) = seq.next_element()? {
            n = n.saturating_add(c);
        }
        Ok(Counted(n))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Counted, A::Error> {
        let mut n = 1usize;
        while let Some((serde::de::IgnoredAny, Counted(c))) = map.next_entry()? {
            n = n.saturating_add(c);
        }
        Ok(Counted(n))
    }
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
        let limits = Limits::default();
        let err =
            config_diff_ids("c.json", br#"{"rootfs":{"type":"layers"}}"#, &limits).unwrap_err();
        assert!(matches!(err, ArchiveError::BadJson { ref path, .. } if path == "c.json"));
        let ok = config_diff_ids(
            "c.json",
            format!(r#"{{"rootfs":{{"diff_ids":["{}"]}}}}"#, Digest::of(b"")).as_bytes(),
            &limits,
        )
        .unwrap();
        assert_eq!(ok, vec![Digest::of(b"")]);
    }

    #[test]
    fn documents_with_too_many_values_are_refused_before_parsing() {
        let limits = Limits {
            max_json_values: 10,
            ..Limits::default()
        };
        let Counted(n) = serde_json::from_slice(br#"{"a":[1,2,{"b":null}],"c":"x"}"#).unwrap();
        assert_eq!(n, 7, "the object, a, its 3 elements, b, c");
        let many = format!("[{}]", ["{}"; 11].join(","));
        let err = parse_json::<Vec<serde_json::Value>>("h.json", many.as_bytes(), &limits);
        assert!(
            matches!(err, Err(ArchiveError::TooLarge { limit: 10, .. })),
            "{err:?}"
        );
        let few = format!("[{}]", ["{}"; 9].join(","));
        assert!(parse_json::<Vec<serde_json::Value>>("h.json", few.as_bytes(), &limits).is_ok());
        let big = Limits {
            max_json_bytes: 4,
            ..Limits::default()
        };
        let err = parse_json::<Vec<u8>>("m.json", b"[1,2,3]", &big);
        assert!(
            matches!(err, Err(ArchiveError::TooLarge { limit: 4, .. })),
            "{err:?}"
        );
    }
}
