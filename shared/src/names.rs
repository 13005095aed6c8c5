//! Entry names: a [`Namespace`] (a project or branch) and a [`CacheKey`] (a Dockerfile hash).
//!
//! Both are validated once when made, so the server can put them in SQL and logs, and the runner in
//! URLs, without re-checking.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid namespace or key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "namespace `{0}` is invalid: use 1-128 characters from `a-z A-Z 0-9 . _ -` in `/`-separated \
         parts, none of them empty, `.` or `..` (e.g. `acme/web` or `acme-web`)"
    )]
    Namespace(String),
    #[error(
        "cache key `{0}` is invalid: use 1-128 characters from `a-z A-Z 0-9 . _ - :` (e.g. the key `layercache key` prints)"
    )]
    Key(String),
}

/// A namespace such as `acme/web` or `acme-web/feature-x`: where entries of one project or branch live.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Namespace(String);

/// The key of an entry inside its namespace, usually the `sha256:…` hash of a Dockerfile.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CacheKey(String);

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Turns a git branch or free text into a valid namespace by replacing other characters with `-`.
    pub fn sanitize(text: &str) -> Option<Namespace> {
        let cleaned: String = text
            .trim_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii() && (name_char(c as u8) || c == '/') {
                    c
                } else {
                    '-'
                }
            })
            .take(128)
            .collect();
        let parts: Vec<&str> = cleaned
            .split('/')
            .filter(|p| !p.is_empty() && *p != "." && *p != "..")
            .collect();
        parts.join("/").parse().ok()
    }
}

impl FromStr for Namespace {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && p.bytes().all(name_char));
        if ok {
            Ok(Namespace(s.to_string()))
        } else {
            Err(NameError::Namespace(s.to_string()))
        }
    }
}

impl CacheKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CacheKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| name_char(b) || b == b':');
        if ok {
            Ok(CacheKey(s.to_string()))
        } else {
            Err(NameError::Key(s.to_string()))
        }
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype_impls!(Namespace);
string_newtype_impls!(CacheKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_accept_projects_and_branches() {
        for ok in ["acme", "acme/web", "acme-web", "acme/web/feature_x.2"] {
            assert_eq!(ok.parse::<Namespace>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn namespaces_refuse_traversal_and_odd_characters() {
        for bad in [
            "",
            "/acme",
            "acme/",
            "acme//web",
            "..",
            "acme/../x",
            "a b",
            "acme;drop",
            &"x".repeat(129),
        ] {
            assert!(
                bad.parse::<Namespace>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn sanitize_turns_branches_into_namespaces() {
        assert_eq!(
            Namespace::sanitize("feature/new thing").unwrap().as_str(),
            "feature/new-thing"
        );
        assert_eq!(Namespace::sanitize("/main/").unwrap().as_str(), "main");
        assert!(Namespace::sanitize("///").is_none());
    }

    #[test]
    fn keys_accept_digests_and_refuse_slashes() {
        let k = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(k.parse::<CacheKey>().is_ok());
        assert!("v1.2_x-y".parse::<CacheKey>().is_ok());
        for bad in ["", "a/b", "a b", "..%2f", &"k".repeat(129)] {
            assert!(
                bad.parse::<CacheKey>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
