//! The services file: the compose specification as projects already write it.
//!
//! Every key is either honoured or, when it cannot mean anything for a test step (`ports`,
//! `restart`, `container_name`, …), ignored with one [`Notice`] per key and service. `x-` extension
//! fields, anchors and merge keys (`<<`), the top-level `name:` and the obsolete `version:` are
//! accepted; `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` are interpolated from the
//! environment and the project's `.env` file as compose does (`serde-saphyr` does both, so errors
//! keep their line and column). The v1 shape (services at the top level) still works.
//!
//! Raw serde types are in [`super::compose_raw`]; this module turns them into the model the
//! scheduler and the engine side use, resolving paths against the file's directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Location;

use super::compose_raw::{
    RawBuild, RawCompose, RawDependsOn, RawEnv, RawService, RawServices, RawUlimit,
};
use super::compose_values::{
    convert_healthcheck, convert_mount, normalize, parse_bytes, resolve_env,
};
use super::config::{CHECKS, Checks, ChecksGuard, Command, ConfigError};

/// How long a dependency may take to become healthy when its healthcheck gives no bound.
const DEFAULT_HEALTH_WAIT: Duration = Duration::from_secs(120);

/// `build:` of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The build context, resolved against the services file's directory.
    pub context: PathBuf,
    /// Dockerfile path inside the context (compose default `Dockerfile`).
    pub dockerfile: String,
    /// `--build-arg` values, sorted so the build request is deterministic.
    pub args: BTreeMap<String, String>,
    /// Multi-stage target (`build.target`).
    pub target: Option<String>,
    /// `build.cache_from` images, pulled when present so the classic builder can reuse them.
    pub cache_from: Vec<String>,
}

/// What a container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host path (relative paths resolved against the services file's directory).
    Bind {
        /// Absolute host path.
        host: PathBuf,
        /// Absolute path inside the container.
        container: String,
        /// `ro`.
        read_only: bool,
        /// `z` or `Z` (SELinux relabelling).
        selinux: Option<String>,
    },
    /// A named volume of the top-level `volumes:`: created per step environment, removed after.
    Named {
        /// The name in the file.
        volume: String,
        /// Absolute path inside the container.
        container: String,
        /// `ro`.
        read_only: bool,
    },
    /// A fresh anonymous volume, removed with its container.
    Anonymous {
        /// Absolute path inside the container.
        container: String,
    },
    /// A tmpfs mount.
    Tmpfs {
        /// Absolute path inside the container.
        container: String,
        /// Size in bytes, when given.
        size: Option<i64>,
    },
}

/// The readiness a `depends_on` entry waits for before the next container starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Started (the default, and what `links` mean).
    Started,
    /// Its healthcheck passed.
    Healthy,
    /// It ran to the end with exit code 0.
    CompletedSuccessfully,
}

/// A healthcheck, in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]` (`disable: true`).
    pub test: Option<Vec<String>>,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time one check may take.
    pub timeout: Option<Duration>,
    /// Failures in a row that make the container unhealthy.
    pub retries: Option<u32>,
    /// Grace period at start.
    pub start_period: Option<Duration>,
    /// Interval during the start period.
    pub start_interval: Option<Duration>,
}

impl Healthcheck {
    /// How long a dependent waits for `healthy`: the start period plus every retry at its
    /// interval and timeout, plus a margin; never less than [`DEFAULT_HEALTH_WAIT`].
    pub fn wait_limit(&self) -> Duration {
        let interval = self.interval.unwrap_or(Duration::from_secs(30));
        let timeout = self.timeout.unwrap_or(Duration::from_secs(30));
        let retries = self.retries.unwrap_or(3);
        let bound = self.start_period.unwrap_or_default() + (interval + timeout) * (retries + 1);
        bound.max(DEFAULT_HEALTH_WAIT)
    }
}

/// One service of the services file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// Image to run when the service is not built.
    pub image: Option<String>,
    /// How to build the service image, when it is built from the project.
    pub build: Option<BuildSpec>,
    /// Environment of every container: `env_file` entries, then `environment` on top.
    pub environment: BTreeMap<String, String>,
    /// Services started before this one, in the order written (`depends_on` then `links`).
    pub depends_on: Vec<String>,
    /// What each dependency must reach before this service starts (missing: started).
    pub conditions: BTreeMap<String, Condition>,
    /// Names this service also answers to on the step network: `links` aliases other services
    /// gave it and its own `networks.*.aliases`.
    pub link_aliases: Vec<String>,
    /// Mounts: binds, named, anonymous and tmpfs volumes, and secrets (read-only binds).
    pub mounts: Vec<Mount>,
    /// Working directory inside the container.
    pub working_dir: Option<String>,
    /// Default command, used when a step gives none (and by dependency containers).
    pub command: Option<Command>,
    /// Entrypoint override.
    pub entrypoint: Option<Command>,
    /// `user`.
    pub user: Option<String>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// Healthcheck override.
    pub healthcheck: Option<Healthcheck>,
    /// `cap_add`.
    pub cap_add: Vec<String>,
    /// `cap_drop`.
    pub cap_drop: Vec<String>,
    /// `privileged`.
    pub privileged: bool,
    /// `read_only` root filesystem.
    pub read_only: bool,
    /// `shm_size` in bytes.
    pub shm_size: Option<i64>,
    /// `ulimits`: (name, soft, hard).
    pub ulimits: Vec<(String, i64, i64)>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// `extra_hosts` as `host:ip`.
    pub extra_hosts: Vec<String>,
    /// `init`.
    pub init: Option<bool>,
    /// `platform` of the container (and its pull).
    pub platform: Option<String>,
    /// `profiles`: such a service starts only when a step needs it (as its service or dependency).
    pub profiles: Vec<String>,
    /// `cached: false` builds without the layer cache; default true (a layercache extension).
    pub cached: bool,
}

/// A top-level named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedVolume {
    /// `external: true`: an existing engine volume with this name, used as is and never removed.
    pub external: Option<String>,
}

/// A key read and dropped, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// 1-based line of the key's value.
    pub line: u64,
    /// 1-based column of the key's value.
    pub column: u64,
    /// Key path, `services.web.ports`.
    pub path: String,
    /// What happens to it.
    pub message: String,
}

/// The parsed services file.
#[derive(Debug, Clone)]
pub struct ServicesFile {
    /// The file itself (for messages).
    pub path: PathBuf,
    /// Directory of the file: relative paths and the project name come from it.
    pub dir: PathBuf,
    /// The top-level `name:`, when given (the project name otherwise comes from `dir`).
    pub name: Option<String>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Top-level named volumes by name.
    pub volumes: BTreeMap<String, NamedVolume>,
    /// Every key that was ignored, in file order.
    pub notices: Vec<Notice>,
}

/// Parses and validates a services file read from `path`; `${VAR}` come from the process
/// environment, then from `.env` beside the file.
///
/// Errors: [`ConfigError::Read`] when the file (or a required `env_file`) cannot be read, otherwise
/// a located [`ConfigError::Invalid`] for YAML syntax, an unknown key, a bad value, a missing
/// `${VAR:?}`, a `depends_on`/`links` entry naming no service, or a dependency cycle.
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
    let vars = interpolation_vars(&dir)?;
    parse_services_with(path, &dir, &text, vars)
}

/// The variables `${VAR}` sees: the project's `.env` file, overridden by the process environment
/// (compose's order).
fn interpolation_vars(dir: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    let dotenv = dir.join(".env");
    if dotenv.is_file() {
        vars.extend(read_env_file(&dotenv)?);
    }
    vars.extend(std::env::vars());
    Ok(vars)
}

/// Reads an env file (`.env`, `env_file:`) as compose does: `dotenvy` parses it after unquoted
/// values with spaces (`GREETING=hello world`, which compose accepts and `dotenvy` refuses) are
/// put in double quotes.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let text = quote_unquoted_values(&text);
    dotenvy::from_read_iter(text.as_bytes())
        .map(|item| item.map_err(|e| env_file_error(path, &e)))
        .collect()
}

/// `KEY=a value # comment` → `KEY="a value"`; quoted values, comments and other lines stay.
fn quote_unquoted_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let rewritten = line.split_once('=').and_then(|(key, value)| {
            let name = key.trim().trim_start_matches("export ").trim();
            let value = value.trim_start();
            let plain = !name.is_empty()
                && !name.starts_with('#')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && !value.starts_with(['"', '\'', '`']);
            // An inline comment starts at ` #`, as in compose.
            let value = match value.find(" #") {
                Some(at) => &value[..at],
                None => value,
            }
            .trim_end();
            (plain && value.contains(char::is_whitespace)).then(|| {
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                format!("{name}=\"{escaped}\"")
            })
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn env_file_error(path: &Path, e: &dotenvy::Error) -> ConfigError {
    ConfigError::Unlocated {
        path: path.to_path_buf(),
        message: format!("cannot read this env file: {e}; fix its `NAME=value` lines"),
    }
}

/// Parses services-file `text` (named `path` in errors, relative paths resolved against `dir`),
/// interpolating from the process environment only (tests).
#[cfg(test)]
pub fn parse_services(path: &Path, dir: &Path, text: &str) -> Result<ServicesFile, ConfigError> {
    parse_services_with(path, dir, text, std::env::vars().collect())
}

/// `parse_services` with the interpolation variables given.
pub fn parse_services_with(
    path: &Path,
    dir: &Path,
    text: &str,
    vars: HashMap<String, String>,
) -> Result<ServicesFile, ConfigError> {
    let (raw, notices) = {
        let _guard = ChecksGuard::install(Checks {
            collect_notices: true,
            ..Checks::default()
        });
        let raw = parse_raw(path, text, &vars)?;
        let notices = CHECKS.with(|c| std::mem::take(&mut c.borrow_mut().notices));
        (raw, notices)
    };
    let relocate = |edge: Option<(String, String, String)>, names: &BTreeSet<String>, fallback| {
        let _guard = ChecksGuard::install(Checks {
            known_services: Some(names.clone()),
            bad_edge: edge,
            ..Checks::default()
        });
        match parse_raw(path, text, &vars) {
            Err(e) => e,
            Ok(_) => ConfigError::Unlocated {
                path: path.to_path_buf(),
                message: fallback,
            },
        }
    };
    let mut notices: Vec<Notice> = notices
        .into_iter()
        .map(|n| Notice {
            line: n.location.line(),
            column: n.location.column(),
            path: n.path,
            message: n.reason.to_string(),
        })
        .collect();
    if let Some(at) = raw.networks {
        notices.push(notice_at(
            at,
            "networks",
            "every service of a step shares the step's own network; aliases are kept",
        ));
    }
    notices.sort_by_key(|n| (n.line, n.column));
    let services_raw = raw.services.map(|s| s.0).unwrap_or_default();
    if services_raw.is_empty() {
        return Err(ConfigError::Unlocated {
            path: path.to_path_buf(),
            message: "the services file defines no services; add a `services:` map".into(),
        });
    }
    let names: BTreeSet<String> = services_raw.iter().map(|(n, _)| n.clone()).collect();
    let mut secrets: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for (name, def) in raw.secrets {
        let file = def.as_ref().and_then(|d| d.file.as_ref());
        if def.as_ref().is_some_and(|d| d.environment.is_some()) {
            notices.push(Notice {
                line: 0,
                column: 0,
                path: format!("secrets.{name}.environment"),
                message: "ignored: only secrets from files are mounted".into(),
            });
        }
        secrets.insert(name, file.map(|f| normalize(&dir.join(f))));
    }
    let volumes: BTreeMap<String, NamedVolume> = raw
        .volumes
        .into_iter()
        .map(|(name, def)| {
            let def = def.unwrap_or_default();
            let external = match def.external {
                Some(super::compose_raw::RawExternal::Flag(true)) => {
                    Some(def.name.clone().unwrap_or_else(|| name.clone()))
                }
                Some(super::compose_raw::RawExternal::Named { name }) => Some(name),
                _ => None,
            };
            (name, NamedVolume { external })
        })
        .collect();
    let mut services = BTreeMap::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    let mut unknown_ref = false;
    for (name, rs) in services_raw {
        let svc = convert_service(path, dir, &name, rs, &secrets, &mut aliases)?;
        unknown_ref |= svc.depends_on.iter().any(|d| !names.contains(d));
        services.insert(name, svc);
    }
    if unknown_ref {
        return Err(relocate(
            None,
            &names,
            "a dependency names no service".into(),
        ));
    }
    if let Some(cycle) = super::plan::find_cycle(&services) {
        let message = format!(
            "`depends_on`/`links` cycle: {}; services must start in some order, remove one of these dependencies",
            cycle.join(" -> ")
        );
        let edge = (cycle[0].clone(), cycle[1].clone(), message.clone());
        return Err(relocate(Some(edge), &names, message));
    }
    // Warnings a run would otherwise only show when it gets there.
    for (name, svc) in &services {
        for (dep, condition) in &svc.conditions {
            let has_check = services
                .get(dep)
                .is_some_and(|d| d.healthcheck.as_ref().is_some_and(|h| h.test.is_some()));
            if *condition == Condition::Healthy && !has_check {
                notices.push(Notice {
                    line: 0,
                    column: 0,
                    path: format!("services.{name}.depends_on.{dep}"),
                    message: format!(
                        "waits for `{dep}` to be healthy, but `{dep}` has no `healthcheck.test`: its image must define a HEALTHCHECK"
                    ),
                });
            }
        }
        if svc.build.as_ref().is_some_and(|b| !b.cache_from.is_empty()) {
            notices.push(Notice {
                line: 0,
                column: 0,
                path: format!("services.{name}.build.cache_from"),
                message: "not pulled: the layer cache restores this service's layers".into(),
            });
        }
    }
    for (target, alias) in aliases {
        if let Some(svc) = services.get_mut(&target)
            && !svc.link_aliases.contains(&alias)
        {
            svc.link_aliases.push(alias);
        }
    }
    Ok(ServicesFile {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        name: raw.name,
        services,
        volumes,
        notices,
    })
}

fn notice_at(at: Location, path: &str, message: &str) -> Notice {
    Notice {
        line: at.line(),
        column: at.column(),
        path: path.into(),
        message: message.into(),
    }
}

/// Options for both YAML files: merge keys on (the default), compose interpolation with `vars`.
pub fn yaml_options(vars: Option<HashMap<String, String>>) -> serde_saphyr::Options {
    // Compose files reuse a few anchors many times (getsentry/self-hosted: 142 aliases of 10
    // anchors), which the alias/anchor ratio heuristic takes for an alias bomb; the absolute
    // limits on aliases and events still guard against one.
    let mut budget = serde_saphyr::Budget::default();
    budget.enforce_alias_anchor_ratio = false;
    match vars {
        Some(vars) => serde_saphyr::options! {
            with_snippet: false,
            budget: Some(budget),
            property_syntax: serde_saphyr::PropertySyntax::DockerCompose,
        }
        .with_properties(vars),
        None => serde_saphyr::options! { with_snippet: false, budget: Some(budget) },
    }
}

/// Reads the file into raw types: the compose top level, or the v1 shape (services at the top).
fn parse_raw(
    path: &Path,
    text: &str,
    vars: &HashMap<String, String>,
) -> Result<RawCompose, ConfigError> {
    // The shape, from the top-level keys only (no interpolation: values are not looked at).
    let top: Option<BTreeMap<String, serde::de::IgnoredAny>> =
        serde_saphyr::from_str_with_options(text, yaml_options(None))
            .map_err(|e| ConfigError::from_yaml(path, &e, None))?;
    let top = top.unwrap_or_default();
    let v1 = !top.is_empty()
        && !top.contains_key("services")
        && top.keys().all(|k| {
            !super::compose_ignored::TOP_IGNORED
                .iter()
                .any(|(t, _)| t == k)
                && !["name", "volumes", "networks", "secrets"].contains(&k.as_str())
        });
    let mut key_path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(
        text,
        yaml_options(Some(vars.clone())),
        |de| {
            let r = if v1 {
                serde_path_to_error::deserialize::<_, RawServices>(de).map(|s| RawCompose {
                    services: Some(s),
                    ..RawCompose::default()
                })
            } else {
                serde_path_to_error::deserialize::<_, RawCompose>(de)
            };
            r.map_err(|e| {
                key_path = Some(e.path().to_string());
                e.into_inner()
            })
        },
    );
    result.map_err(|e| ConfigError::from_yaml(path, &e, key_path.as_deref()))
}

fn convert_service(
    path: &Path,
    dir: &Path,
    name: &str,
    rs: RawService,
    secrets: &BTreeMap<String, Option<PathBuf>>,
    aliases: &mut Vec<(String, String)>,
) -> Result<Service, ConfigError> {
    let invalid = |at: Location, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: at.line() as usize,
        column: at.column() as usize,
        message,
    };
    let mut depends_on: Vec<String> = Vec::new();
    let mut conditions = BTreeMap::new();
    match rs.depends_on {
        Some(RawDependsOn::List(l)) => depends_on.extend(l.into_iter().map(|d| d.0)),
        Some(RawDependsOn::Map(m)) => {
            for (dep, cond) in m {
                let condition = match &cond {
                    None => Condition::Started,
                    Some(c) if c.value == "service_started" => Condition::Started,
                    Some(c) if c.value == "service_healthy" => Condition::Healthy,
                    Some(c) if c.value == "service_completed_successfully" => {
                        Condition::CompletedSuccessfully
                    }
                    Some(c) => {
                        let other = &c.value;
                        return Err(invalid(
                            c.referenced,
                            format!(
                                "services.{name}.depends_on.{}.condition: unknown condition `{other}`; use service_started, service_healthy or service_completed_successfully",
                                dep.0
                            ),
                        ));
                    }
                };
                conditions.insert(dep.0.clone(), condition);
                depends_on.push(dep.0);
            }
        }
        None => {}
    }
    for link in &rs.links {
        if !depends_on.contains(&link.0) {
            depends_on.push(link.0.clone());
        }
        if let Some(alias) = &link.1 {
            aliases.push((link.0.clone(), alias.clone()));
        }
    }
    depends_on.dedup();
    let build = rs.build.map(|b| match b {
        RawBuild::Context(c) => BuildSpec {
            context: normalize(&dir.join(c)),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
            cache_from: Vec::new(),
        },
        RawBuild::Full(f) => BuildSpec {
            context: normalize(&dir.join(f.context.unwrap_or_else(|| ".".into()))),
            dockerfile: f.dockerfile.unwrap_or_else(|| "Dockerfile".into()),
            args: f.args.map(resolve_env).unwrap_or_default(),
            target: f.target,
            cache_from: f.cache_from,
        },
    });
    let mut environment = BTreeMap::new();
    for file in rs.env_file.map(|f| f.0).unwrap_or_default() {
        let p = normalize(&dir.join(&file.path));
        if !p.is_file() {
            if file.required {
                return Err(ConfigError::Unlocated {
                    path: path.to_path_buf(),
                    message: format!(
                        "services.{name}.env_file: `{}` does not exist; create it or mark it `required: false`",
                        p.display()
                    ),
                });
            }
            continue;
        }
        environment.extend(read_env_file(&p)?);
    }
    environment.extend(rs.environment.map(resolve_env).unwrap_or_default());
    let mut mounts = Vec::new();
    for m in rs.volumes {
        mounts.push(
            convert_mount(dir, &m.value)
                .map_err(|msg| invalid(m.referenced, format!("services.{name}.volumes: {msg}")))?,
        );
    }
    for t in rs.tmpfs.map(|t| t.0).unwrap_or_default() {
        let (container, opts) = t.split_once(':').unwrap_or((&t, ""));
        let size = opts
            .split(',')
            .find_map(|o| o.strip_prefix("size="))
            .and_then(|s| parse_bytes(s).ok());
        mounts.push(Mount::Tmpfs {
            container: container.to_string(),
            size,
        });
    }
    for s in rs.secrets {
        let source = &s.value.source;
        let host = match secrets.get(source) {
            Some(Some(host)) => host.clone(),
            Some(None) => continue,
            None => {
                return Err(invalid(
                    s.referenced,
                    format!(
                        "services.{name}.secrets: `{source}` is not in the top-level `secrets:`; declare it with `file:`"
                    ),
                ));
            }
        };
        let target = s.value.target.clone().unwrap_or_else(|| source.clone());
        let container = if target.starts_with('/') {
            target
        } else {
            format!("/run/secrets/{target}")
        };
        mounts.push(Mount::Bind {
            host,
            container,
            read_only: true,
            selinux: None,
        });
    }
    let mut link_aliases = Vec::new();
    if let Some(n) = rs.networks {
        link_aliases.extend(n.aliases);
    }
    let shm_size = match rs.shm_size {
        Some(s) => Some(
            parse_bytes(&s.value.0)
                .map_err(|e| invalid(s.referenced, format!("services.{name}.shm_size: {e}")))?,
        ),
        None => None,
    };
    let healthcheck = match rs.healthcheck {
        Some(h) => Some(
            convert_healthcheck(h)
                .map_err(|(at, msg)| invalid(at, format!("services.{name}.healthcheck.{msg}")))?,
        ),
        None => None,
    };
    let extra_hosts = match rs.extra_hosts {
        Some(RawEnv::List(l)) => l.into_iter().map(|h| h.replacen('=', ":", 1)).collect(),
        Some(RawEnv::Map(m)) => m
            .into_iter()
            .map(|(k, v)| format!("{k}:{}", v.unwrap_or_default()))
            .collect(),
        None => Vec::new(),
    };
    Ok(Service {
        image: rs.image,
        build,
        environment,
        depends_on,
        conditions,
        link_aliases,
        mounts,
        working_dir: rs.working_dir,
        command: rs.command,
        entrypoint: rs.entrypoint,
        user: rs.user.map(|u| u.0),
        hostname: rs.hostname,
        healthcheck,
        cap_add: rs.cap_add,
        cap_drop: rs.cap_drop,
        privileged: rs.privileged.unwrap_or(false),
        read_only: rs.read_only.unwrap_or(false),
        shm_size,
        ulimits: rs
            .ulimits
            .into_iter()
            .map(|(k, u)| match u {
                RawUlimit::Single(n) => (k, n, n),
                RawUlimit::Pair { soft, hard } => (k, soft, hard),
            })
            .collect(),
        labels: rs.labels.map(resolve_env).unwrap_or_default(),
        extra_hosts,
        init: rs.init,
        platform: rs.platform,
        profiles: rs.profiles,
        cached: rs.cached.unwrap_or(true),
    })
}
