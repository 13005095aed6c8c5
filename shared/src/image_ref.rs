//! [`ImageRef`]: an image reference (`[host[:port]/]path[:tag][@digest]`) parsed once, at the edge,
//! with distribution/reference's grammar (the `oci-spec` crate's `Reference`), and the parts both
//! the runner and the tarball writer need: the repository as Docker shows it and the tag.
//!
//! The first path part is a registry host when it has a `.` or a `:` or is `localhost`
//! (`reg:5000/app`, `ghcr.io/acme/app`); otherwise the image is on Docker Hub (`acme/app`, `app`).
//! A missing tag is `latest`. Repository names are lowercase; tags are up to 128 of
//! `[A-Za-z0-9_.-]`, not starting with `.` or `-`.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Docker Hub's registry name, as references resolve it.
pub const DOCKER_HUB: &str = "docker.io";

/// Why a text is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not an image reference ({reason}): write `name[:tag]`, `host[:port]/name[:tag]` \
     or `name@sha256:<64 hex>`, with a lowercase name"
)]
pub struct ImageRefError {
    pub text: String,
    pub reason: String,
}

/// A validated image reference; displays as it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The text as given (what error messages and logs show).
    text: String,
    /// Its parts, Docker Hub names completed (`app` → `docker.io/library/app`). Boxed: five
    /// strings would make every enum holding a reference large.
    parsed: Box<Reference>,
}

impl ImageRef {
    /// The registry host: [`DOCKER_HUB`] unless the reference names one.
    pub fn registry(&self) -> &str {
        self.parsed.registry()
    }

    /// The repository as Docker shows and tags it: with its registry host unless that is Docker
    /// Hub, without Docker Hub's `library/` (`reg:5000/app`, `acme/app`, `app`).
    pub fn name(&self) -> String {
        let repo = self.parsed.repository();
        if self.registry() == DOCKER_HUB {
            match repo.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short.to_string(),
                _ => repo.to_string(),
            }
        } else {
            format!("{}/{repo}", self.registry())
        }
    }

    /// The tag; `latest` when none was written (and no digest was).
    pub fn tag(&self) -> Option<&str> {
        self.parsed.tag()
    }

    /// The tag, `latest` also for a reference by digest only.
    pub fn tag_or_latest(&self) -> &str {
        self.tag().unwrap_or("latest")
    }

    /// The `algorithm:hex` digest, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.parsed.digest()
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Reference::from_str(s) {
            Ok(parsed) => Ok(ImageRef {
                text: s.to_string(),
                parsed: Box::new(parsed),
            }),
            Err(e) => Err(ImageRefError {
                text: s.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, String) {
        let r: ImageRef = s.parse().unwrap_or_else(|e| panic!("{e}"));
        (
            r.registry().to_string(),
            r.name(),
            r.tag_or_latest().to_string(),
        )
    }

    #[test]
    fn names_split_at_the_tag_not_the_port() {
        let p = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(parts("app"), p(DOCKER_HUB, "app", "latest"));
        assert_eq!(parts("app:v2"), p(DOCKER_HUB, "app", "v2"));
        assert_eq!(parts("e2e/app:latest"), p(DOCKER_HUB, "e2e/app", "latest"));
        assert_eq!(
            parts("reg:5000/app"),
            p("reg:5000", "reg:5000/app", "latest")
        );
        assert_eq!(
            parts("reg:5000/app:v1"),
            p("reg:5000", "reg:5000/app", "v1")
        );
        assert_eq!(
            parts("127.0.0.1:5000/a/b:ci"),
            p("127.0.0.1:5000", "127.0.0.1:5000/a/b", "ci")
        );
        assert_eq!(
            parts("ghcr.io/acme/app"),
            p("ghcr.io", "ghcr.io/acme/app", "latest")
        );
        assert_eq!(
            parts("localhost/app"),
            p("localhost", "localhost/app", "latest")
        );
        assert_eq!(parts("docker.io/library/app:1"), p(DOCKER_HUB, "app", "1"));
        // A first part without `.`, `:` or `localhost` is a path, not a host.
        assert_eq!(parts("acme/app:1.0"), p(DOCKER_HUB, "acme/app", "1.0"));
        assert_eq!(
            parts("layercache-steps/jet-sample-db:latest"),
            p(DOCKER_HUB, "layercache-steps/jet-sample-db", "latest")
        );
    }

    #[test]
    fn digests_are_kept_and_checked() {
        let hex = "a".repeat(64);
        let r: ImageRef = format!("app@sha256:{hex}").parse().unwrap();
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(r.tag(), None);
        assert_eq!(r.tag_or_latest(), "latest");
        assert!("app@sha256:abc".parse::<ImageRef>().is_err());
    }

    #[test]
    fn invalid_references_are_refused_with_the_syntax() {
        for bad in [
            "", "App", "app:", "app:-x", ":tag", "a//b", "app:t/x", "-app",
        ] {
            let e = bad.parse::<ImageRef>().unwrap_err();
            assert!(e.to_string().contains("name[:tag]"), "{bad}: {e}");
        }
        let long_tag = format!("app:{}", "t".repeat(129));
        assert!(long_tag.parse::<ImageRef>().is_err());
    }

    #[test]
    fn displays_and_serializes_as_written() {
        let r: ImageRef = "reg:5000/app:v1".parse().unwrap();
        assert_eq!(r.to_string(), "reg:5000/app:v1");
        assert_eq!(serde_json::to_string(&r).unwrap(), r#""reg:5000/app:v1""#);
        let back: ImageRef = serde_json::from_str(r#""app""#).unwrap();
        assert_eq!(back.name(), "app");
        assert!(serde_json::from_str::<ImageRef>(r#""Bad""#).is_err());
    }
}
