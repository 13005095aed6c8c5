//! The two Jet-style files, parsed and validated before anything runs.
//!
//! - `layercache-services.yml`: docker-compose syntax, either the v1 shape (a top-level map of
//!   services) or v2+ (`version:` + `services:`). Only the keys we act on are accepted.
//! - `layercache-steps.yml`: a list of steps and `serial` / `parallel` groups, nested to any depth.
//!
//! Every problem is reported as one [`ConfigError`] naming the file, line and column. Problems that
//! are only visible across the whole file (an unknown service, a `depends_on` cycle, a duplicate step
//! name) are found in a first pass and then located by a second pass that re-reads the file with a
//! thread-local [`Checks`] context: the `Deserialize` impl of the offending value fails, and
//! `serde_yaml_ng` attaches the position of that value to the error.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// What went wrong while reading or validating a services or steps file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error(
        "failed to read `{}` ({error}); create it or point to it with --services / --steps",
        path.display()
    )]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`: one line says it all).
        error: std::io::Error,
    },
    /// The file is not valid YAML, or a value is wrong; `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file holding the problem.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong and what to do about it.
        message: String,
    },
    /// A problem the parser could not attach a position to (should be rare: an empty file).
    #[error("{}: {message}", path.display())]
    Unlocated {
        /// The file holding the problem.
        path: PathBuf,
        /// What is wrong and what to do about it.
        message: String,
    },
}

impl ConfigError {
    fn from_yaml(path: &Path, err: &serde_yaml_ng::Error) -> ConfigError {
        let text = err.to_string();
        // serde_yaml_ng appends " at line L column C" to the message; we print the position ourselves.
        let message = match text.rfind(" at line ") {
            Some(at) if err.location().is_some() => text[..at].to_string(),
            _ => text,
        };
        // Paths into a top-level list read `.[2].tag`; `[2].tag` is what people write.
        let message = message
            .strip_prefix('.')
            .map(str::to_string)
            .unwrap_or(message);
        match err.location() {
            Some(loc) => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: loc.line(),
                column: loc.column(),
                message,
            },
            None => ConfigError::Unlocated {
                path: path.to_path_buf(),
                message,
            },
        }
    }
}

/// A command as compose writes it: a string run through `sh -c`, or an exec-form list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a command: a string (run with `sh -c`) or a list of strings"
)]
pub enum Command {
    /// Run with `sh -c`, so pipes and `&&` work as in a shell.
    Shell(String),
    /// Exec form, passed to the engine as is.
    Exec(Vec<String>),
}

impl Command {
    /// The argv the container runs.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

/// `build:` of a service: where the context is, which Dockerfile, which build args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The build context, resolved against the services file's directory.
    pub context: PathBuf,
    /// Dockerfile path inside the context (compose default `Dockerfile`).
    pub dockerfile: String,
    /// `--build-arg` values, sorted so the build request is deterministic.
    pub args: BTreeMap<String, String>,
}

/// A bind mount of part of the project into a service container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute host path (relative paths are resolved against the services file's directory).
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub container: String,
    /// `:ro` given: the container cannot write to the project.
    pub read_only: bool,
}

/// One service of the services file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Image to run when the service is not built (or the name a built image is also known by).
    pub image: Option<String>,
    /// How to build the service image, when it is built from the project.
    pub build: Option<BuildSpec>,
    /// Environment of every container of this service, sorted by name.
    pub environment: BTreeMap<String, String>,
    /// Services started before this one, in the order written (`depends_on` then `links`).
    pub depends_on: Vec<String>,
    /// Extra network aliases other services gave this one through `links: [svc:alias]`; filled in
    /// on the *target* service so its container answers to them.
    pub link_aliases: Vec<String>,
    /// Project bind mounts.
    pub volumes: Vec<Volume>,
    /// Working directory inside the container.
    pub working_dir: Option<String>,
    /// Default command, used when a step gives none (and by dependency containers).
    pub command: Option<Command>,
    /// `cached: false` builds without the layer cache; default true.
    pub cached: bool,
}

/// The parsed services file.
#[derive(Debug, Clone)]
pub struct ServicesFile {
    /// Directory of the file: relative paths and the project name come from it.
    pub dir: PathBuf,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

/// A `tag:` regex, compiled at parse time so a bad pattern is reported before anything runs.
#[derive(Debug, Clone)]
pub struct TagPattern(pub Regex);

impl TagPattern {
    /// Whether the step runs on `branch` (unanchored, like Codeship: write `^main$` for exact).
    pub fn matches(&self, branch: &str) -> bool {
        self.0.is_match(branch)
    }
}

impl PartialEq for TagPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Run `command` (or the service's command) in a fresh container of the service.
    Run {
        /// The command; `None` uses the service's `command` or the image default.
        command: Option<Command>,
    },
    /// Tag the service image as `image_name` and push it.
    Push {
        /// Target repository, `[registry/]name[:tag]`.
        image_name: String,
        /// Registry URL from the steps file (informational: the host comes from `image_name`).
        registry: Option<String>,
    },
}

/// A leaf step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique name: log prefix, summary row, `CI_STEP_NAME`.
    pub name: String,
    /// Service the step runs in (or pushes).
    pub service: String,
    /// Run only when the branch matches.
    pub tag: Option<TagPattern>,
    /// Run a command or push an image.
    pub action: StepAction,
}

/// How a group runs its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// In order, stopping at the first failure.
    Serial,
    /// All at once (bounded by `--jobs`).
    Parallel,
}

/// A group of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Optional name, only for messages.
    pub name: Option<String>,
    /// Serial or parallel.
    pub kind: GroupKind,
    /// Skip the whole group unless the branch matches.
    pub tag: Option<TagPattern>,
    /// Children, at least one.
    pub steps: Vec<StepNode>,
}

/// A node of the steps tree.
#[derive(Debug, Clone, PartialEq)]
pub enum StepNode {
    /// A leaf.
    Step(Step),
    /// A serial or parallel group.
    Group(Group),
}

// ---------------------------------------------------------------------------------------------
// Cross-file checks, located by a second pass.

/// Checks a second parsing pass applies, so the failing value carries its line and column.
#[derive(Default)]
struct Checks {
    /// Service names the steps file (or `depends_on`) may name; `None` in the first pass.
    known_services: Option<BTreeSet<String>>,
    /// In the services file: the `(owner, dependency)` edge to flag, with the message.
    bad_edge: Option<(String, String, String)>,
    /// The service whose value is being read (set by the services map visitor).
    current_service: Option<String>,
    /// Step names seen so far in this pass, for the duplicate check.
    seen_steps: Option<BTreeSet<String>>,
}

thread_local! {
    static CHECKS: RefCell<Checks> = RefCell::new(Checks::default());
}

/// Installs `checks` for the duration of one parse; restores the empty context when dropped, so a
/// panic or early return cannot leak state into the next parse on this thread.
struct ChecksGuard;

impl ChecksGuard {
    fn install(checks: Checks) -> ChecksGuard {
        CHECKS.with(|c| *c.borrow_mut() = checks);
        ChecksGuard
    }
}

impl Drop for ChecksGuard {
    fn drop(&mut self) {
        CHECKS.with(|c| *c.borrow_mut() = Checks::default());
    }
}

/// Deserializes a string and checks it inside the visitor, so `serde_yaml_ng` attaches the
/// position of the scalar itself (an error raised after `deserialize` returns gets the position
/// of the enclosing map or list instead).
fn checked_str<'de, D, T>(
    d: D,
    check: impl FnOnce(String) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(String) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v.to_string()).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

/// Deserializes a map as `R`, then checks it inside the map visitor, so the error carries the
/// position of the map (the step or service) rather than of the enclosing list.
fn checked_map<'de, D, R, T>(
    d: D,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct V<F, R>(F, std::marker::PhantomData<R>);
    impl<'de, R: Deserialize<'de>, T, F: FnOnce(R) -> Result<T, String>> Visitor<'de> for V<F, R> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.0)(raw).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(V(check, std::marker::PhantomData))
}

/// Fails a `depends_on`/`links`/`service:` reference the active [`Checks`] reject.
fn check_service_ref(name: &str) -> Result<(), String> {
    CHECKS.with(|c| {
        let c = c.borrow();
        if let Some(known) = &c.known_services
            && !known.contains(name)
        {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(format!(
                "unknown service `{name}`; the services file defines: {}",
                list.join(", ")
            ));
        }
        if let (Some((owner, dep, msg)), Some(current)) = (&c.bad_edge, &c.current_service)
            && owner == current
            && dep == name
        {
            return Err(msg.clone());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Services file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Option<String>,
    build: Option<RawBuild>,
    #[serde(default)]
    environment: Option<RawEnv>,
    #[serde(default)]
    depends_on: Option<RawDependsOn>,
    #[serde(default)]
    links: Vec<LinkRef>,
    #[serde(default)]
    volumes: Vec<RawVolume>,
    working_dir: Option<String>,
    command: Option<Command>,
    cached: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`build:` as a context path or a map with `context`, `dockerfile`, `args`"
)]
enum RawBuild {
    Context(String),
    Full(RawBuildFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuildFull {
    context: Option<String>,
    dockerfile: Option<String>,
    #[serde(default)]
    args: Option<RawEnv>,
}

/// `environment` / build `args`: a map or a `KEY=value` list.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a map of NAME: value, or a list of `NAME=value` strings"
)]
enum RawEnv {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

impl RawEnv {
    /// Compose rules: `NAME` alone (list) or `NAME:` with no value (map) passes the host's value
    /// through, and is left out when the host does not set it.
    fn resolve(self) -> BTreeMap<String, String> {
        let host = |k: &str| std::env::var(k).ok();
        match self {
            RawEnv::Map(m) => m
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Some(Scalar(v)) => Some((k, v)),
                    None => host(&k).map(|v| (k, v)),
                })
                .collect(),
            RawEnv::List(l) => l
                .into_iter()
                .filter_map(|item| match item.split_once('=') {
                    Some((k, v)) => Some((k.to_string(), v.to_string())),
                    None => host(&item).map(|v| (item, v)),
                })
                .collect(),
        }
    }
}

/// A YAML scalar (string, number, bool) kept as the string the container sees.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `depends_on`: a list of names, or the compose 2.1+ map `name: {condition: ...}`. Written by
/// hand rather than `untagged`, so an unknown name keeps its own position and message.
enum RawDependsOn {
    List(Vec<LinkRef>),
    Map(Vec<LinkRef>),
}

impl<'de> Deserialize<'de> for RawDependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDependsOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`depends_on` as a list of service names or a map of service names")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawDependsOn, A::Error> {
                let mut out = Vec::new();
                while let Some(l) = seq.next_element::<LinkRef>()? {
                    out.push(l);
                }
                Ok(RawDependsOn::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDependsOn, A::Error> {
                let mut out = Vec::new();
                while let Some(l) = map.next_key::<LinkRef>()? {
                    map.next_value::<de::IgnoredAny>()?;
                    out.push(l);
                }
                Ok(RawDependsOn::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `links` / `depends_on` entry: `service` or `service:alias`, checked when [`Checks`] asks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LinkRef(String, Option<String>);

impl<'de> Deserialize<'de> for LinkRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |raw| {
            let (name, alias) = match raw.split_once(':') {
                Some((n, a)) => (n.to_string(), Some(a.to_string())),
                None => (raw, None),
            };
            check_service_ref(&name)?;
            Ok(LinkRef(name, alias))
        })
    }
}

/// A service whose `image`/`build` presence is checked while its position is known.
struct CheckedService(RawService);

impl<'de> Deserialize<'de> for CheckedService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, |raw: RawService| {
            if raw.image.is_none() && raw.build.is_none() {
                return Err(
                    "service has neither `image` nor `build`; give it one of the two".into(),
                );
            }
            Ok(CheckedService(raw))
        })
    }
}

/// A compose short-syntax bind mount, syntax-checked while its position is known.
struct RawVolume {
    host: String,
    container: String,
    read_only: bool,
}

impl<'de> Deserialize<'de> for RawVolume {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |spec| parse_volume(&spec))
    }
}

/// The services map; its visitor tells [`Checks`] which service is being read.
struct RawServices(Vec<(String, RawService)>);

impl<'de> Deserialize<'de> for RawServices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawServices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of service name to service definition")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServices, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| n == &name) {
                        return Err(de::Error::custom(format!(
                            "service `{name}` is defined twice"
                        )));
                    }
                    CHECKS.with(|c| c.borrow_mut().current_service = Some(name.clone()));
                    let CheckedService(svc) = map.next_value::<CheckedService>()?;
                    out.push((name, svc));
                }
                CHECKS.with(|c| c.borrow_mut().current_service = None);
                Ok(RawServices(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// v2+: `version` + `services`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeV2 {
    #[allow(dead_code)]
    version: Option<serde::de::IgnoredAny>,
    services: RawServices,
}

fn parse_services_raw(path: &Path, text: &str) -> Result<RawServices, ConfigError> {
    // Decide the shape from the top-level keys: v2+ files have `services:` (and usually `version:`).
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::from_yaml(path, &e))?;
    let is_v2 = value
        .as_mapping()
        .is_some_and(|m| m.get("services").is_some_and(|s| s.is_mapping()));
    let result = if is_v2 {
        serde_yaml_ng::from_str::<ComposeV2>(text).map(|c| c.services)
    } else {
        serde_yaml_ng::from_str::<RawServices>(text)
    };
    result.map_err(|e| ConfigError::from_yaml(path, &e))
}

/// Parses and validates a services file read from `path`.
///
/// Errors: [`ConfigError::Read`] when the file cannot be read, otherwise a located
/// [`ConfigError::Invalid`] for YAML syntax, unknown keys, a bad volume, a `depends_on`/`links`
/// entry naming no service, or a dependency cycle.
pub fn load_services(path: &Path) -> Result<ServicesFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let dir = normalize(&std::path::absolute(&dir).unwrap_or(dir));
    parse_services(path, &dir, &text)
}

/// Parses services-file `text` (named `path` in errors, relative paths resolved against `dir`).
pub fn parse_services(path: &Path, dir: &Path, text: &str) -> Result<ServicesFile, ConfigError> {
    let raw = {
        let _guard = ChecksGuard::install(Checks::default());
        parse_services_raw(path, text)?
    };
    let names: BTreeSet<String> = raw.0.iter().map(|(n, _)| n.clone()).collect();
    let mut services = BTreeMap::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    let mut unknown_ref = false;
    for (name, rs) in raw.0 {
        let mut depends_on: Vec<String> = Vec::new();
        let mut push_dep = |d: &LinkRef| {
            if !depends_on.contains(&d.0) {
                depends_on.push(d.0.clone());
            }
        };
        match &rs.depends_on {
            Some(RawDependsOn::List(l)) => l.iter().for_each(&mut push_dep),
            Some(RawDependsOn::Map(m)) => m.iter().for_each(&mut push_dep),
            None => {}
        }
        for link in &rs.links {
            push_dep(link);
            if let Some(alias) = &link.1 {
                aliases.push((link.0.clone(), alias.clone()));
            }
        }
        unknown_ref |= depends_on.iter().any(|d| !names.contains(d));
        let build = rs.build.map(|b| match b {
            RawBuild::Context(c) => BuildSpec {
                context: normalize(&dir.join(c)),
                dockerfile: "Dockerfile".into(),
                args: BTreeMap::new(),
            },
            RawBuild::Full(f) => BuildSpec {
                context: normalize(&dir.join(f.context.unwrap_or_else(|| ".".into()))),
                dockerfile: f.dockerfile.unwrap_or_else(|| "Dockerfile".into()),
                args: f.args.map(RawEnv::resolve).unwrap_or_default(),
            },
        });
        let volumes = rs
            .volumes
            .into_iter()
            .map(|v| Volume {
                host: normalize(&dir.join(v.host)),
                container: v.container,
                read_only: v.read_only,
            })
            .collect();
        services.insert(
            name,
            Service {
                image: rs.image,
                build,
                environment: rs.environment.map(RawEnv::resolve).unwrap_or_default(),
                depends_on,
                link_aliases: Vec::new(),
                volumes,
                working_dir: rs.working_dir,
                command: rs.command,
                cached: rs.cached.unwrap_or(true),
            },
        );
    }
    if unknown_ref {
        return Err(relocate(
            path,
            text,
            &names,
            None,
            "a dependency names no service".into(),
        ));
    }
    if let Some(cycle) = super::plan::find_cycle(&services) {
        let message = format!(
            "`depends_on`/`links` cycle: {}; services must start in some order, remove one of these dependencies",
            cycle.join(" -> ")
        );
        let edge = (cycle[0].clone(), cycle[1].clone(), message.clone());
        return Err(relocate(path, text, &names, Some(edge), message));
    }
    for (target, alias) in aliases {
        if let Some(svc) = services.get_mut(&target)
            && !svc.link_aliases.contains(&alias)
        {
            svc.link_aliases.push(alias);
        }
    }
    Ok(ServicesFile {
        dir: dir.to_path_buf(),
        services,
    })
}

/// Re-parses the services file with checks on, so the error comes back with a position. Falls back
/// to an unlocated error with `fallback` when the second pass does not trip (it always should).
fn relocate(
    path: &Path,
    text: &str,
    names: &BTreeSet<String>,
    bad_edge: Option<(String, String, String)>,
    fallback: String,
) -> ConfigError {
    let checks = Checks {
        known_services: Some(names.clone()),
        bad_edge,
        ..Checks::default()
    };
    let _guard = ChecksGuard::install(checks);
    match parse_services_raw(path, text) {
        Err(e) => e,
        Ok(_) => ConfigError::Unlocated {
            path: path.to_path_buf(),
            message: fallback,
        },
    }
}

/// Parses a compose short-syntax bind mount `host:container[:ro|:rw]`.
fn parse_volume(spec: &str) -> Result<RawVolume, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, None),
        [h, c, m] => (*h, *c, Some(*m)),
        _ => {
            return Err(format!(
                "volume `{spec}` is not `host_path:container_path[:ro]`; only bind mounts of the project are supported"
            ));
        }
    };
    if !(host.starts_with('.') || host.starts_with('/')) {
        return Err(format!(
            "volume `{spec}`: named volumes are not supported; bind-mount a path (`./dir:{container}`)"
        ));
    }
    if !container.starts_with('/') {
        return Err(format!(
            "volume `{spec}`: the container path must be absolute"
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "volume `{spec}`: unknown mode `{other}`, use `ro` or `rw`"
            ));
        }
    };
    Ok(RawVolume {
        host: host.to_string(),
        container: container.to_string(),
        read_only,
    })
}

/// Removes `.` and `..` components without touching the disk (the path may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Steps file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    service: Option<StepServiceRef>,
    command: Option<Command>,
    tag: Option<TagPattern>,
    #[serde(rename = "type")]
    kind: Option<String>,
    steps: Option<Vec<StepNode>>,
    image_name: Option<String>,
    registry: Option<String>,
}

/// A step's `service:`, checked against the services file in the (only) steps pass.
struct StepServiceRef(String);

impl<'de> Deserialize<'de> for StepServiceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |name| {
            check_service_ref(&name)?;
            Ok(StepServiceRef(name))
        })
    }
}

impl<'de> Deserialize<'de> for TagPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |pattern| {
            Regex::new(&pattern).map(TagPattern).map_err(|e| {
                // regex's syntax errors span several lines (pattern, caret, reason): keep the reason.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                format!("`tag` `{pattern}` is not a valid regex: {reason}; fix the pattern")
            })
        })
    }
}

impl<'de> Deserialize<'de> for StepNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, node_from_raw)
    }
}

fn node_from_raw(raw: RawNode) -> Result<StepNode, String> {
    let label = raw
        .name
        .as_deref()
        .map(|n| format!("`{n}`"))
        .unwrap_or_else(|| "this step".into());
    if let Some(steps) = raw.steps {
        let kind = match raw.kind.as_deref() {
            Some("serial") => GroupKind::Serial,
            Some("parallel") => GroupKind::Parallel,
            Some(other) => {
                return Err(format!(
                    "group {label} has `type: {other}`; a group with `steps` is `type: serial` or `type: parallel`"
                ));
            }
            None => {
                return Err(format!(
                    "group {label} needs `type: serial` or `type: parallel`"
                ));
            }
        };
        for (key, present) in [
            ("service", raw.service.is_some()),
            ("command", raw.command.is_some()),
            ("image_name", raw.image_name.is_some()),
            ("registry", raw.registry.is_some()),
        ] {
            if present {
                return Err(format!(
                    "group {label} has `{key}`; only steps inside the group take `{key}`"
                ));
            }
        }
        if steps.is_empty() {
            return Err(format!(
                "group {label} has no steps; add some or remove the group"
            ));
        }
        return Ok(StepNode::Group(Group {
            name: raw.name,
            kind,
            tag: raw.tag,
            steps,
        }));
    }
    let Some(name) = raw.name else {
        return Err("a step needs a `name` (used as log prefix and in the summary)".into());
    };
    if name.trim().is_empty() {
        return Err("a step's `name` is empty".into());
    }
    let Some(StepServiceRef(service)) = raw.service else {
        return Err(format!("step `{name}` needs a `service` to run in"));
    };
    let action = match raw.kind.as_deref() {
        None | Some("run") => {
            if raw.image_name.is_some() || raw.registry.is_some() {
                return Err(format!(
                    "step `{name}` has `image_name`/`registry` but is not `type: push`"
                ));
            }
            StepAction::Run {
                command: raw.command,
            }
        }
        Some("push") => {
            if raw.command.is_some() {
                return Err(format!("push step `{name}` takes no `command`"));
            }
            let Some(image_name) = raw.image_name else {
                return Err(format!("push step `{name}` needs `image_name`"));
            };
            StepAction::Push {
                image_name,
                registry: raw.registry,
            }
        }
        Some(k @ ("serial" | "parallel")) => {
            return Err(format!("`type: {k}` step `{name}` needs a `steps:` list"));
        }
        Some(other) => {
            return Err(format!(
                "step `{name}` has unknown `type: {other}`; use run, push, serial or parallel"
            ));
        }
    };
    let duplicate = CHECKS.with(|c| {
        let mut c = c.borrow_mut();
        let seen = c.seen_steps.get_or_insert_with(BTreeSet::new);
        !seen.insert(name.clone())
    });
    if duplicate {
        return Err(format!(
            "step name `{name}` is used twice; step names must be unique"
        ));
    }
    Ok(StepNode::Step(Step {
        name,
        service,
        tag: raw.tag,
        action,
    }))
}

/// Parses and validates a steps file read from `path` against the services it may name.
///
/// Errors: [`ConfigError::Read`] when the file cannot be read, otherwise a located
/// [`ConfigError::Invalid`] for YAML syntax, unknown keys, an unknown service, a bad `tag` regex,
/// a malformed step or group, or a duplicate step name.
pub fn load_steps(path: &Path, services: &ServicesFile) -> Result<Vec<StepNode>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_steps(path, &text, services)
}

/// Parses steps-file `text` (named `path` in errors).
pub fn parse_steps(
    path: &Path,
    text: &str,
    services: &ServicesFile,
) -> Result<Vec<StepNode>, ConfigError> {
    let checks = Checks {
        known_services: Some(services.services.keys().cloned().collect()),
        ..Checks::default()
    };
    let _guard = ChecksGuard::install(checks);
    let nodes: Vec<StepNode> =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::from_yaml(path, &e))?;
    if nodes.is_empty() {
        return Err(ConfigError::Unlocated {
            path: path.to_path_buf(),
            message: "the steps file lists no steps; add at least one".into(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES_V1: &str = "\
db:
  image: busybox-db
  command: httpd -f -p 80
app:
  build:
    context: .
    dockerfile: Dockerfile.app
    args:
      VERSION: 3
  links:
    - db:database
  environment:
    - A=1
    - B=two
  volumes:
    - ./src:/app:ro
  working_dir: /app
  cached: false
";

    fn services(text: &str) -> Result<ServicesFile, ConfigError> {
        parse_services(Path::new("svc.yml"), Path::new("/proj"), text)
    }

    fn steps(text: &str) -> Result<Vec<StepNode>, ConfigError> {
        let svc = services(SERVICES_V1).expect("fixture parses");
        parse_steps(Path::new("steps.yml"), text, &svc)
    }

    fn located(err: ConfigError) -> (usize, usize, String) {
        match err {
            ConfigError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected a located error, got {other:?}"),
        }
    }

    #[test]
    fn v1_services_parse_with_all_fields() {
        let s = services(SERVICES_V1).expect("parses");
        let app = &s.services["app"];
        let build = app.build.as_ref().expect("build");
        assert_eq!(build.context, Path::new("/proj"));
        assert_eq!(build.dockerfile, "Dockerfile.app");
        assert_eq!(build.args["VERSION"], "3");
        assert_eq!(app.depends_on, vec!["db"]);
        assert_eq!(app.environment["B"], "two");
        assert_eq!(app.volumes[0].host, Path::new("/proj/src"));
        assert!(app.volumes[0].read_only);
        assert!(!app.cached);
        assert_eq!(s.services["db"].link_aliases, vec!["database"]);
        assert_eq!(
            s.services["db"].command.as_ref().map(Command::argv),
            Some(vec!["sh".into(), "-c".into(), "httpd -f -p 80".into()])
        );
    }

    #[test]
    fn v2_services_parse_with_map_depends_on() {
        let s = services(
            "version: '2.1'\nservices:\n  db:\n    image: x\n  app:\n    build: ./app\n    depends_on:\n      db:\n        condition: service_started\n    environment:\n      N: 1\n",
        )
        .expect("parses");
        assert_eq!(s.services["app"].depends_on, vec!["db"]);
        assert_eq!(s.services["app"].environment["N"], "1");
        assert_eq!(
            s.services["app"].build.as_ref().map(|b| b.context.clone()),
            Some("/proj/app".into())
        );
    }

    #[test]
    fn unknown_service_key_is_located() {
        let (line, col, msg) = located(services("db:\n  image: x\n  imgae: y\n").unwrap_err());
        assert_eq!((line, col), (3, 3), "{msg}");
        assert!(msg.contains("imgae"), "{msg}");
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let (line, _, msg) = located(services("db:\n  image: [x\n  build: y\n").unwrap_err());
        assert!(line >= 2, "{line}: {msg}");
    }

    #[test]
    fn unknown_dependency_is_located_at_the_entry() {
        let (line, col, msg) = located(
            services("db:\n  image: x\napp:\n  image: y\n  depends_on:\n    - dbb\n").unwrap_err(),
        );
        assert_eq!((line, col), (6, 7), "{msg}");
        assert!(msg.contains("unknown service `dbb`"), "{msg}");
    }

    #[test]
    fn dependency_cycle_is_located() {
        let text = "a:\n  image: x\n  depends_on: [b]\nb:\n  image: x\n  links:\n    - c\nc:\n  image: x\n  depends_on: [a]\n";
        let (line, _, msg) = located(services(text).unwrap_err());
        assert!(msg.contains("a -> b -> c -> a"), "{msg}");
        assert_eq!(line, 3, "{msg}");
    }

    #[test]
    fn service_without_image_or_build_is_rejected() {
        let (line, col, msg) =
            located(services("app:\n  image: x\ndb:\n  command: x\n").unwrap_err());
        assert_eq!((line, col), (4, 3), "{msg}");
        assert!(msg.contains("neither `image` nor `build`"), "{msg}");
    }

    #[test]
    fn named_volume_is_rejected() {
        let (line, col, msg) =
            located(services("db:\n  image: x\n  volumes: [data:/var]\n").unwrap_err());
        assert_eq!((line, col), (3, 13), "{msg}");
        assert!(msg.contains("named volumes"), "{msg}");
    }

    #[test]
    fn steps_tree_parses() {
        let nodes = steps(
            "- type: parallel\n  steps:\n  - name: a\n    service: app\n    command: echo a\n  - name: b\n    service: app\n    command: [echo, b]\n- name: deploy\n  service: app\n  tag: ^main$\n  type: push\n  image_name: reg/app\n",
        )
        .expect("parses");
        assert_eq!(nodes.len(), 2);
        let StepNode::Group(g) = &nodes[0] else {
            panic!("group")
        };
        assert_eq!(g.kind, GroupKind::Parallel);
        assert_eq!(g.steps.len(), 2);
        let StepNode::Step(deploy) = &nodes[1] else {
            panic!("step")
        };
        assert!(deploy.tag.as_ref().is_some_and(|t| t.matches("main")));
        assert!(!deploy.tag.as_ref().is_some_and(|t| t.matches("mainline")));
        assert!(matches!(deploy.action, StepAction::Push { .. }));
    }

    #[test]
    fn unknown_step_service_is_located() {
        let (line, col, msg) =
            located(steps("- name: a\n  service: web\n  command: x\n").unwrap_err());
        assert_eq!((line, col), (2, 12), "{msg}");
        assert!(
            msg.contains("unknown service `web`") && msg.contains("app, db"),
            "{msg}"
        );
    }

    #[test]
    fn bad_regex_is_located() {
        let (line, col, msg) =
            located(steps("- name: a\n  service: app\n  tag: '^(main'\n").unwrap_err());
        assert_eq!((line, col), (3, 8), "{msg}");
        assert!(
            msg.ends_with("`tag` `^(main` is not a valid regex: unclosed group; fix the pattern"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_step_key_is_located() {
        let (line, _, msg) = located(
            steps("- type: serial\n  steps:\n  - name: a\n    service: app\n    comand: x\n")
                .unwrap_err(),
        );
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("comand"), "{msg}");
    }

    #[test]
    fn group_without_type_is_rejected() {
        let (line, _, msg) =
            located(steps("- steps:\n  - name: a\n    service: app\n").unwrap_err());
        assert_eq!(line, 1, "{msg}");
        assert!(msg.contains("type: serial"), "{msg}");
    }

    #[test]
    fn duplicate_step_name_is_rejected() {
        let (line, _, msg) =
            located(steps("- name: a\n  service: app\n- name: a\n  service: db\n").unwrap_err());
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("used twice"), "{msg}");
    }

    #[test]
    fn push_step_needs_image_name() {
        let (_, _, msg) = located(steps("- name: p\n  service: app\n  type: push\n").unwrap_err());
        assert!(msg.contains("image_name"), "{msg}");
    }

    #[test]
    fn error_display_names_file_line_and_column() {
        let err = steps("- name: a\n  service: nope\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("steps.yml:2:12: "), "{err}");
    }

    /// Guards the e2e fixture: it must stay a valid project for `layercache steps`.
    #[test]
    fn jet_sample_fixture_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jet-sample");
        let svc = load_services(&dir.join("layercache-services.yml")).expect("services parse");
        assert_eq!(svc.services["app"].depends_on, vec!["db"]);
        assert!(
            svc.services["app"]
                .volumes
                .iter()
                .all(|v| v.host.starts_with(&svc.dir))
        );
        for file in [
            "layercache-steps.yml",
            "layercache-steps-fail.yml",
            "layercache-steps-push.yml",
        ] {
            let nodes = load_steps(&dir.join(file), &svc).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!nodes.is_empty(), "{file}");
        }
    }
}
