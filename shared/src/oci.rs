//! The OCI image-spec and Docker distribution documents the registry protocol reads: typed
//! [`MediaType`]s, [`Descriptor`]s, and [`ManifestDoc`], one shape for image manifests, indexes
//! (Docker manifest lists), artifact manifests and BuildKit's cache indexes.
//!
//! A registry needs little of a manifest: its media type, what it references (so the blobs and
//! child manifests exist before it does and survive while it lives), its `subject` and
//! `artifactType` (the referrers API). [`ManifestDoc::parse`] checks exactly that much; fields it
//! does not know are kept in the stored bytes, which the registry serves back unchanged.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Digest;

/// A media type as found in `mediaType` fields and `Content-Type` headers. Types the registry
/// treats specially have their own variant; every other one is kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MediaType {
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
    /// `application/vnd.oci.empty.v1+json`: the empty config of artifacts.
    OciEmpty,
    /// `application/vnd.buildkit.cacheconfig.v0`: the config of BuildKit's registry cache.
    BuildkitCacheConfig,
    /// Anything else (layers, configs, artifact types), as written.
    Other(String),
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const BUILDKIT_CACHE: &str = "application/vnd.buildkit.cacheconfig.v0";

impl MediaType {
    /// The media type as text.
    pub fn as_str(&self) -> &str {
        match self {
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
            MediaType::DockerManifest => DOCKER_MANIFEST,
            MediaType::DockerManifestList => DOCKER_LIST,
            MediaType::OciEmpty => OCI_EMPTY,
            MediaType::BuildkitCacheConfig => BUILDKIT_CACHE,
            MediaType::Other(s) => s,
        }
    }

    /// Parses a media type, dropping parameters (`; charset=utf-8`) and surrounding blanks.
    pub fn parse(text: &str) -> MediaType {
        let bare = text.split(';').next().unwrap_or("").trim();
        match bare {
            OCI_MANIFEST => MediaType::OciManifest,
            OCI_INDEX => MediaType::OciIndex,
            DOCKER_MANIFEST => MediaType::DockerManifest,
            DOCKER_LIST => MediaType::DockerManifestList,
            OCI_EMPTY => MediaType::OciEmpty,
            BUILDKIT_CACHE => MediaType::BuildkitCacheConfig,
            other => MediaType::Other(other.to_string()),
        }
    }

    /// An image (or artifact) manifest: references a config and layers.
    pub fn is_image_manifest(&self) -> bool {
        matches!(self, MediaType::OciManifest | MediaType::DockerManifest)
    }

    /// An index or manifest list: references other manifests (or, in BuildKit's cache, blobs).
    pub fn is_index(&self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerManifestList)
    }

    /// A document the manifests endpoint stores.
    pub fn is_manifest(&self) -> bool {
        self.is_image_manifest() || self.is_index()
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MediaType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MediaType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(MediaType::parse(&text))
    }
}

/// A reference to content: what it is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: MediaType,
    /// Its sha256 digest.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// Where a client may fetch it besides the registry (foreign layers); such content need not
    /// be in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Free-form metadata, shown by the referrers API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The artifact type of a referenced manifest (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Platform of an index entry, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// Image manifest, index, manifest list or artifact manifest: the fields a registry reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    /// Must be 2 (schema 1 manifests are long deprecated and not accepted).
    pub schema_version: u32,
    /// Optional in OCI documents (then the `Content-Type` of the upload says it).
    #[serde(default)]
    pub media_type: Option<MediaType>,
    /// The artifact type of an artifact manifest or index.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The config of an image manifest.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// The layers of an image manifest.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// The entries of an index: manifests, or (BuildKit's cache) layer blobs.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// The manifest this one refers to (referrers API).
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Free-form metadata, shown by the referrers API.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest needs to exist before it can be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A blob (config or layer, or a BuildKit cache index's layer entry).
    Blob(Digest),
    /// Another manifest in the same repository (an index's child).
    Manifest(Digest),
}

/// Why a manifest upload is not a usable manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of an image manifest or index: {0}")]
    Json(String),
    #[error("schemaVersion {0} is not supported: push a schema 2 (Docker v2 or OCI) manifest")]
    SchemaVersion(u32),
    #[error("the manifest has no media type: set `mediaType` in it or send it as the Content-Type")]
    NoMediaType,
    #[error(
        "media type `{0}` is not a manifest type the registry stores (OCI image manifest or index, \
         Docker manifest v2 or manifest list)"
    )]
    NotAManifest(String),
    #[error("the manifest's `mediaType` `{body}` differs from its Content-Type `{header}`")]
    TypeMismatch { body: String, header: String },
    #[error("an image manifest needs a `config` descriptor")]
    NoConfig,
    #[error("an index needs a `manifests` list")]
    NoManifests,
}

/// A parsed manifest with its resolved media type.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The media type it is stored and served with.
    pub media_type: MediaType,
    /// The document.
    pub doc: ManifestDoc,
}

impl ManifestDoc {
    /// Parses `bytes` uploaded with `content_type` and checks what a registry relies on.
    ///
    /// The media type comes from the document's `mediaType` or, when absent, from the
    /// `Content-Type`; when both are given and both are manifest types, they must agree.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
        let doc: ManifestDoc =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if doc.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(doc.schema_version));
        }
        let header = content_type
            .map(MediaType::parse)
            .filter(MediaType::is_manifest);
        let media_type = match (&doc.media_type, header) {
            (Some(body), Some(header)) if *body != header => {
                return Err(ManifestError::TypeMismatch {
                    body: body.to_string(),
                    header: header.to_string(),
                });
            }
            (Some(body), _) => body.clone(),
            (None, Some(header)) => header,
            // Without either, the document's shape says which it is.
            (None, None) if doc.manifests.is_some() => MediaType::OciIndex,
            (None, None) if doc.config.is_some() => MediaType::OciManifest,
            (None, None) => return Err(ManifestError::NoMediaType),
        };
        if !media_type.is_manifest() {
            return Err(ManifestError::NotAManifest(media_type.to_string()));
        }
        if media_type.is_image_manifest() && doc.config.is_none() {
            return Err(ManifestError::NoConfig);
        }
        if media_type.is_index() && doc.manifests.is_none() {
            return Err(ManifestError::NoManifests);
        }
        Ok(Parsed { media_type, doc })
    }

    /// The blobs and manifests this document references, each once, in document order.
    /// Foreign layers (descriptors with `urls`) are left out: they live elsewhere.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        let blobs = self.config.iter().chain(self.layers.iter().flatten());
        for d in blobs.filter(|d| d.urls.is_none()) {
            out.push(Reference::Blob(d.digest));
        }
        for d in self.manifests.iter().flatten() {
            // BuildKit's default cache format lists layer blobs (and its cache config) as index
            // entries: only entries that are manifests must be manifests.
            if d.media_type.is_manifest() {
                out.push(Reference::Manifest(d.digest));
            } else if d.urls.is_none() {
                out.push(Reference::Blob(d.digest));
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|r| seen.insert(*r));
        out
    }

    /// The artifact type the referrers API lists: `artifactType`, else the config's media type
    /// (OCI image spec, "guidelines for artifact usage").
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn image_manifest(media_type: Option<&str>) -> String {
        let mt = media_type
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                      {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3,"urls":["https://x"]}}]}}"#,
            d("c"),
            d("l"),
            d("foreign")
        )
    }

    #[test]
    fn image_manifests_reference_config_and_layers_but_not_foreign_ones() {
        let p = ManifestDoc::parse(image_manifest(Some(OCI_MANIFEST)).as_bytes(), None).unwrap();
        assert_eq!(p.media_type, MediaType::OciManifest);
        assert_eq!(
            p.doc.references(),
            vec![Reference::Blob(d("c")), Reference::Blob(d("l"))]
        );
        assert_eq!(
            p.doc.effective_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn the_media_type_comes_from_the_body_or_the_content_type() {
        let body = image_manifest(None);
        let p =
            ManifestDoc::parse(body.as_bytes(), Some(&format!("{DOCKER_MANIFEST}; x=y"))).unwrap();
        assert_eq!(p.media_type, MediaType::DockerManifest);
        let err = ManifestDoc::parse(
            image_manifest(Some(OCI_MANIFEST)).as_bytes(),
            Some(OCI_INDEX),
        )
        .unwrap_err();
        assert!(matches!(err, ManifestError::TypeMismatch { .. }), "{err}");
        // A generic Content-Type (curl's default) does not contradict the body.
        let p = ManifestDoc::parse(
            image_manifest(Some(OCI_MANIFEST)).as_bytes(),
            Some("application/octet-stream"),
        )
        .unwrap();
        assert_eq!(p.media_type, MediaType::OciManifest);
    }

    #[test]
    fn buildkit_cache_indexes_reference_layer_blobs_directly() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
                {{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":9}},
                {{"mediaType":"{BUILDKIT_CACHE}","digest":"{}","size":9}},
                {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}]}}"#,
            d("layer"),
            d("cfg"),
            d("child")
        );
        let p = ManifestDoc::parse(body.as_bytes(), None).unwrap();
        assert_eq!(
            p.doc.references(),
            vec![
                Reference::Blob(d("layer")),
                Reference::Blob(d("cfg")),
                Reference::Manifest(d("child"))
            ]
        );
    }

    #[test]
    fn broken_manifests_are_refused_with_the_reason() {
        type Check = fn(&ManifestError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("not json", |e| matches!(e, ManifestError::Json(_))),
            (r#"{"schemaVersion":1}"#, |e| {
                matches!(e, ManifestError::SchemaVersion(1))
            }),
            (r#"{"schemaVersion":2}"#, |e| {
                matches!(e, ManifestError::NoMediaType)
            }),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                |e| matches!(e, ManifestError::NoConfig),
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                |e| matches!(e, ManifestError::NoManifests),
            ),
            (r#"{"schemaVersion":2,"mediaType":"text/plain"}"#, |e| {
                matches!(e, ManifestError::NotAManifest(_))
            }),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:zz","size":1}}"#,
                |e| matches!(e, ManifestError::Json(_)),
            ),
        ];
        for (body, check) in cases {
            let err = ManifestDoc::parse(body.as_bytes(), None).unwrap_err();
            assert!(check(&err), "{body}: {err}");
        }
    }

    #[test]
    fn media_types_round_trip_unknown_ones_as_written() {
        for text in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_LIST,
            "application/x-custom+json",
        ] {
            assert_eq!(MediaType::parse(text).as_str(), text);
        }
    }
}
