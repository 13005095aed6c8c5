//! Engine detection and the build path chosen from it, in one place.
//!
//! [`EngineFacts`] is what the engine says about itself (`docker version`, `docker info`): version,
//! platform, image store. [`choose`] turns those and `--builder` into a [`BuildPath`]:
//!
//! | engine | `auto` | why |
//! | --- | --- | --- |
//! | before 23 | classic builder, restored images as `cachefrom` | `docker build`'s default there |
//! | 23+, containerd store | BuildKit, registry cache on the server | `docker build`'s default; `docker load` carries no BuildKit cache |
//! | 23+, classic store | classic builder, restored images as `cachefrom` | BuildKit's `docker` driver refuses registry cache export on this store ("turn on the containerd image store"); `type=inline` caches the final stage only, so the classic builder caches more |
//!
//! `--builder buildkit` on a classic store is refused with that reason, and `--builder buildkit` on
//! an engine before 23 too (its BuildKit has no registry cache export through the `docker` driver).

use std::fmt;

use layercache_shared::key::Platform;
use serde::Serialize;

/// `--builder`: which builder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    /// What `docker build` would use on this engine, where it can hit the cache (see the module docs).
    #[default]
    Auto,
    /// The classic (legacy) builder with the restored images as `cachefrom`.
    Classic,
    /// BuildKit through `docker buildx build`, with a registry cache on the server.
    Buildkit,
}

/// What the engine says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineFacts {
    /// `docker version`'s `Version` (`26.1.5+dfsg1`).
    pub version: String,
    /// The major version (`26`); 0 when unreadable.
    #[serde(skip)]
    pub major: u32,
    /// The API version negotiated (`1.45`).
    pub api_version: String,
    /// `linux/amd64`: what BuildKit's platform args say.
    #[serde(skip)]
    pub platform: Platform,
    /// Whether images live in containerd (`docker info` → `DriverStatus` `driver-type
    /// io.containerd.snapshotter.v1`) rather than the classic graph driver store.
    pub containerd_store: bool,
}

impl EngineFacts {
    /// From `docker version`'s version and platform and `docker info`'s driver status pairs.
    pub fn new(
        version: &str,
        api_version: &str,
        os: &str,
        arch: &str,
        driver_status: &[Vec<String>],
    ) -> EngineFacts {
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let containerd_store = driver_status.iter().any(|pair| {
            pair.first().is_some_and(|k| k == "driver-type")
                && pair
                    .get(1)
                    .is_some_and(|v| v == "io.containerd.snapshotter.v1")
        });
        EngineFacts {
            version: version.to_string(),
            major,
            api_version: api_version.to_string(),
            platform: Platform::new(os, arch),
            containerd_store,
        }
    }

    /// `docker build` is BuildKit from Engine 23 on.
    pub fn buildkit_default(&self) -> bool {
        self.major >= 23
    }

    /// `26.1.5 (containerd store)`.
    pub fn describe(&self) -> String {
        let store = if self.containerd_store {
            "containerd store"
        } else {
            "classic store"
        };
        format!("{} ({store})", self.version)
    }
}

/// How the build runs and where its cache comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildPath {
    /// Classic builder; the entry restored by `docker load`, its images passed as `cachefrom`.
    ClassicCachefrom,
    /// BuildKit; cache imported from and exported to the server's registry (`mode=max`).
    BuildkitRegistry,
}

impl BuildPath {
    /// `classic` or `buildkit`, for the summary.
    pub fn builder(self) -> &'static str {
        match self {
            BuildPath::ClassicCachefrom => "classic",
            BuildPath::BuildkitRegistry => "buildkit",
        }
    }
}

impl fmt::Display for BuildPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildPath::ClassicCachefrom => "classic builder, restored images as cachefrom",
            BuildPath::BuildkitRegistry => "BuildKit, registry cache on the cache server",
        })
    }
}

/// Why `--builder buildkit` cannot run on this engine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChoiceError {
    #[error(
        "--builder buildkit: Engine {0} keeps images in the classic store, where BuildKit's docker \
         driver refuses registry cache export (only `type=inline`, final stage only); turn on the \
         containerd image store (daemon.json `\"features\": {{\"containerd-snapshotter\": true}}`) or \
         use --builder classic (what --builder auto picks here)"
    )]
    ClassicStore(String),
    #[error(
        "--builder buildkit: Engine {0} predates Engine 23's BuildKit with registry cache export \
         through the docker driver; use --builder classic (what --builder auto picks here)"
    )]
    TooOld(String),
}

/// The path for `builder` on the engine `facts` describes, and a note on why when `auto` chose a
/// builder other than `docker build`'s default.
pub fn choose(
    builder: Builder,
    facts: &EngineFacts,
) -> Result<(BuildPath, Option<String>), ChoiceError> {
    match builder {
        Builder::Classic => Ok((BuildPath::ClassicCachefrom, None)),
        Builder::Buildkit if !facts.buildkit_default() => {
            Err(ChoiceError::TooOld(facts.version.clone()))
        }
        Builder::Buildkit if !facts.containerd_store => {
            Err(ChoiceError::ClassicStore(facts.version.clone()))
        }
        Builder::Buildkit => Ok((BuildPath::BuildkitRegistry, None)),
        Builder::Auto if !facts.buildkit_default() => Ok((BuildPath::ClassicCachefrom, None)),
        Builder::Auto if facts.containerd_store => Ok((BuildPath::BuildkitRegistry, None)),
        Builder::Auto => Ok((
            BuildPath::ClassicCachefrom,
            Some(
                "using the classic builder: on the classic image store BuildKit cannot export a \
                 registry cache (only inline, final stage only), the classic builder with the \
                 restored images as cachefrom reuses every stage"
                    .into(),
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: &str, containerd: bool) -> EngineFacts {
        let status = if containerd {
            vec![vec![
                "driver-type".to_string(),
                "io.containerd.snapshotter.v1".to_string(),
            ]]
        } else {
            vec![vec!["Backing Filesystem".to_string(), "extfs".to_string()]]
        };
        EngineFacts::new(version, "1.45", "linux", "amd64", &status)
    }

    #[test]
    fn facts_read_the_major_version_and_the_image_store() {
        let f = facts("26.1.5+dfsg1", true);
        assert_eq!(f.major, 26);
        assert!(f.containerd_store && f.buildkit_default());
        assert_eq!(f.describe(), "26.1.5+dfsg1 (containerd store)");
        let old = facts("20.10.24+dfsg1", false);
        assert_eq!(old.major, 20);
        assert!(!old.containerd_store && !old.buildkit_default());
        assert_eq!(facts("garbage", false).major, 0);
    }

    #[test]
    fn auto_picks_the_path_that_hits_on_each_engine() {
        let pick = |v, c| choose(Builder::Auto, &facts(v, c)).unwrap();
        assert_eq!(pick("20.10.24", false).0, BuildPath::ClassicCachefrom);
        assert_eq!(pick("26.1.5", true), (BuildPath::BuildkitRegistry, None));
        let (path, note) = pick("26.1.5", false);
        assert_eq!(path, BuildPath::ClassicCachefrom);
        assert!(note.unwrap().contains("classic image store"));
    }

    #[test]
    fn explicit_builders_are_honoured_or_refused_with_the_reason() {
        for (v, c) in [("20.10.24", false), ("26.1.5", false), ("26.1.5", true)] {
            let (path, _) = choose(Builder::Classic, &facts(v, c)).unwrap();
            assert_eq!(path, BuildPath::ClassicCachefrom);
        }
        let err = choose(Builder::Buildkit, &facts("26.1.5", false)).unwrap_err();
        assert!(err.to_string().contains("containerd image store"), "{err}");
        let err = choose(Builder::Buildkit, &facts("20.10.24", false)).unwrap_err();
        assert!(err.to_string().contains("--builder classic"), "{err}");
        let (path, _) = choose(Builder::Buildkit, &facts("26.1.5", true)).unwrap();
        assert_eq!(path, BuildPath::BuildkitRegistry);
    }
}
