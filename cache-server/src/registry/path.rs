//! What a `/v2/...` path names: a repository and a resource in it, parsed once (by the auth
//! middleware and the dispatcher alike) into [`Target`].
//!
//! Repository names contain `/`, so axum cannot route on them; the resource is found from the
//! end of the path instead (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...), as the
//! distribution spec's endpoint table reads.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use layercache_shared::{Digest, Namespace};
use regex::Regex;

use crate::error::ServerError;
use crate::registry::error::OciCode;

/// A repository name as the distribution spec allows it: lowercase path components separated by
/// `/`, each made of `[a-z0-9]` runs joined by `.`, `_`, `__` or dashes. Repositories are
/// layercache namespaces: a token's `acme/*` covers `acme/web/main`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("valid regex")
});

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("valid regex"));

/// Longest repository name accepted (distribution's limit).
const MAX_NAME: usize = 255;

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace the repository is, for auth, statistics and quotas.
    pub fn namespace(&self) -> Option<Namespace> {
        self.0.parse().ok()
    }
}

impl FromStr for RepoName {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() <= MAX_NAME && NAME.is_match(s) {
            Ok(RepoName(s.to_string()))
        } else {
            Err(OciCode::NameInvalid.err(format!(
                "repository name `{s}` is invalid: use lowercase letters, digits and `._-` \
                 separators in `/`-separated components (e.g. `acme/web/main`)"
            )))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag, or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

impl FromStr for ManifestRef {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return s
                .parse()
                .map(ManifestRef::Digest)
                .map_err(|e| OciCode::DigestInvalid.err(format!("manifest reference `{s}`: {e}")));
        }
        if TAG.is_match(s) {
            Ok(ManifestRef::Tag(s.to_string()))
        } else {
            Err(OciCode::ManifestInvalid.err(format!(
                "tag `{s}` is invalid: use up to 128 characters from `a-zA-Z0-9._-`, not starting \
                 with `.` or `-`"
            )))
        }
    }
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => f.write_str(t),
            ManifestRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// The resource a `/v2/<name>/...` path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `manifests/<reference>`
    Manifest(ManifestRef),
    /// `manifests/<text>` where the text is neither a tag nor a digest: no manifest has that name
    /// (404 to readers), and none can be pushed under it (400).
    BadManifestRef(String),
    /// `blobs/<digest>`
    Blob(Digest),
    /// `blobs/uploads/`: starts an upload.
    Uploads,
    /// `blobs/uploads/<id>`: an upload session.
    Upload(String),
    /// `tags/list`
    Tags,
    /// `referrers/<digest>`
    Referrers(Digest),
}

/// What a path under `/v2/` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/v2/_catalog`
    Catalog,
    /// A resource in a repository.
    Repo(RepoName, Resource),
}

/// Parses the part of the path after `/v2/`. Errors carry the spec's codes: `NAME_INVALID`,
/// `DIGEST_INVALID`, `MANIFEST_INVALID` (a bad tag), and 404 `NAME_UNKNOWN` for paths that name no
/// endpoint at all.
pub fn parse(rest: &str) -> Result<Target, ServerError> {
    if rest == "_catalog" {
        return Ok(Target::Catalog);
    }
    let unknown = || OciCode::NotFound.err(format!("no registry endpoint at `/v2/{rest}`"));
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name_of = |upto: usize| -> Result<RepoName, ServerError> {
        if upto == 0 {
            return Err(unknown());
        }
        segs[..upto].join("/").parse()
    };
    let digest = |s: &str, what: &str| -> Result<Digest, ServerError> {
        s.parse()
            .map_err(|e| OciCode::DigestInvalid.err(format!("{what} `{s}`: {e}")))
    };
    // Uploads first: `blobs/uploads` would otherwise read as a blob named `uploads`.
    if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let name = name_of(n - 3)?;
        return Ok(if segs[n - 1].is_empty() {
            Target::Repo(name, Resource::Uploads)
        } else {
            Target::Repo(name, Resource::Upload(segs[n - 1].to_string()))
        });
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Target::Repo(name_of(n - 2)?, Resource::Uploads));
    }
    if n >= 3 {
        let last = segs[n - 1];
        match segs[n - 2] {
            "manifests" => {
                let name = name_of(n - 2)?;
                let resource = match last.parse() {
                    Ok(r) => Resource::Manifest(r),
                    Err(_) => Resource::BadManifestRef(last.to_string()),
                };
                return Ok(Target::Repo(name, resource));
            }
            "blobs" => {
                let name = name_of(n - 2)?;
                return Ok(Target::Repo(
                    name,
                    Resource::Blob(digest(last, "blob digest")?),
                ));
            }
            "referrers" => {
                let name = name_of(n - 2)?;
                let d = digest(last, "referrers subject")?;
                return Ok(Target::Repo(name, Resource::Referrers(d)));
            }
            "tags" if last == "list" => return Ok(Target::Repo(name_of(n - 2)?, Resource::Tags)),
            _ => {}
        }
    }
    Err(unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn resources_are_found_from_the_end_of_the_path() {
        let d = Digest::of(b"x");
        let cases = [
            (
                "acme/web/manifests/latest".to_string(),
                Target::Repo(
                    repo("acme/web"),
                    Resource::Manifest(ManifestRef::Tag("latest".into())),
                ),
            ),
            (
                format!("a/manifests/{d}"),
                Target::Repo(repo("a"), Resource::Manifest(ManifestRef::Digest(d))),
            ),
            (
                format!("a/b/blobs/{d}"),
                Target::Repo(repo("a/b"), Resource::Blob(d)),
            ),
            (
                "a/blobs/uploads/".into(),
                Target::Repo(repo("a"), Resource::Uploads),
            ),
            (
                "a/blobs/uploads".into(),
                Target::Repo(repo("a"), Resource::Uploads),
            ),
            (
                "a/blobs/uploads/abc".into(),
                Target::Repo(repo("a"), Resource::Upload("abc".into())),
            ),
            (
                "x/tags/list".into(),
                Target::Repo(repo("x"), Resource::Tags),
            ),
            (
                format!("x/referrers/{d}"),
                Target::Repo(repo("x"), Resource::Referrers(d)),
            ),
            // A repository may have `blobs` or `manifests` components of its own.
            (
                "manifests/blobs/manifests/v1".into(),
                Target::Repo(
                    repo("manifests/blobs"),
                    Resource::Manifest(ManifestRef::Tag("v1".into())),
                ),
            ),
            ("_catalog".into(), Target::Catalog),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn bad_names_digests_and_tags_get_the_spec_codes() {
        let code = |p: &str| parse(p).unwrap_err().oci_code();
        assert_eq!(code("Acme/manifests/x"), OciCode::NameInvalid);
        assert_eq!(code("a--/manifests/x"), OciCode::NameInvalid);
        assert_eq!(code("a//b/manifests/x"), OciCode::NameInvalid);
        assert_eq!(code("a/blobs/sha256:12"), OciCode::DigestInvalid);
        for bad in ["-bad", "sha256:totallywrong", ".x"] {
            assert_eq!(
                parse(&format!("a/manifests/{bad}")).unwrap(),
                Target::Repo(repo("a"), Resource::BadManifestRef(bad.into()))
            );
            assert!(bad.parse::<ManifestRef>().is_err());
        }
        assert_eq!(code("a/nothing/here"), OciCode::NotFound);
        assert_eq!(code("manifests/x"), OciCode::NotFound);
        assert!(parse(&format!("{}/manifests/x", "a".repeat(256))).is_err());
    }

    #[test]
    fn names_the_spec_allows_are_accepted() {
        for ok in ["a", "a0/b-c", "a__b", "a.b/c_d", "a---b", "x/y/z/w"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in ["", "A", "a_", "a___b", "-a", "a/", "/a", "a b"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
    }
}
