//! The compose file as written, before it becomes [`super::compose`]'s model: serde types and
//! visitors, one per compose construct.
//!
//! Every mapping that compose defines goes through [`read_keys`]: a key we act on is read into its
//! typed field, an `x-` extension field is skipped, a key that cannot mean anything for a test step
//! (`ports`, `restart`, …) is skipped with a [`RawNotice`] (with its position), and a key compose
//! itself does not know is an error at its position. Merge keys (`<<`), anchors and `${VAR}`
//! interpolation are applied by `serde-saphyr` before any of this sees a value.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::compose_ignored::{BUILD_IGNORED, SERVICE_IGNORED, TOP_IGNORED};
use super::config::{CHECKS, Command, check_service_ref, checked_str};

/// A key that was read and dropped, reported once per key and owner.
#[derive(Debug, Clone)]
pub struct RawNotice {
    /// Key path, `services.web.ports`.
    pub path: String,
    /// Where the key's value starts.
    pub location: Location,
    /// Why it is ignored.
    pub reason: &'static str,
}

/// Records a notice in the active parse context (first pass only: the relocation pass re-reads
/// the same file and would repeat them).
fn notice(path: String, location: Location, reason: &'static str) {
    CHECKS.with(|c| {
        let mut c = c.borrow_mut();
        if c.collect_notices {
            c.notices.push(RawNotice {
                path,
                location,
                reason,
            });
        }
    });
}

/// Reads a compose mapping key by key. `take` reads the value of a key it knows and returns
/// `true`; other keys are `x-` extensions (skipped), in `ignorable` (skipped with a notice naming
/// `owner.key`), or an error naming the key and what `owner` accepts.
fn read_keys<'de, A: MapAccess<'de>>(
    mut map: A,
    owner: &str,
    ignorable: &[(&str, &'static str)],
    mut take: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<String>()? {
        if take(&key, &mut map)? {
            continue;
        }
        if key.starts_with("x-") {
            map.next_value::<IgnoredAny>()?;
            continue;
        }
        match ignorable.iter().find(|(k, _)| *k == key) {
            Some((_, reason)) => {
                let value: Spanned<IgnoredAny> = map.next_value()?;
                let path = if owner.is_empty() {
                    key.clone()
                } else {
                    format!("{owner}.{key}")
                };
                notice(path, value.referenced, reason);
            }
            None => {
                let owner = if owner.is_empty() {
                    "the top level".to_string()
                } else {
                    format!("`{owner}`")
                };
                let message = format!(
                    "{owner} has unknown key `{key}`; compose does not define it either (check the spelling, or prefix it with `x-` to keep it as an extension field)"
                );
                // The deserializer would place the error at the enclosing map: point at the
                // key's value instead (keys are read as plain strings so error paths stay named).
                let value: Spanned<IgnoredAny> = map.next_value()?;
                CHECKS.with(|c| c.borrow_mut().error_at = Some(value.referenced));
                return Err(de::Error::custom(message));
            }
        }
    }
    Ok(())
}

/// One service, every key compose defines either read or noticed.
#[derive(Default)]
pub struct RawService {
    pub image: Option<String>,
    pub build: Option<RawBuild>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    pub environment: Option<RawEnv>,
    pub env_file: Option<OneOrMany<RawEnvFile>>,
    pub working_dir: Option<String>,
    pub user: Option<Scalar>,
    pub hostname: Option<String>,
    pub depends_on: Option<RawDependsOn>,
    pub links: Vec<LinkRef>,
    pub volumes: Vec<Spanned<RawMount>>,
    pub networks: Option<RawNetworks>,
    pub healthcheck: Option<RawHealthcheck>,
    pub tmpfs: Option<OneOrMany<String>>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: Option<bool>,
    pub read_only: Option<bool>,
    pub shm_size: Option<Spanned<Scalar>>,
    pub ulimits: BTreeMap<String, RawUlimit>,
    pub labels: Option<RawEnv>,
    pub extra_hosts: Option<RawEnv>,
    pub init: Option<bool>,
    pub platform: Option<String>,
    pub secrets: Vec<Spanned<RawSecretRef>>,
    pub profiles: Vec<String>,
    pub cached: Option<bool>,
}

impl<'de> Deserialize<'de> for RawService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawService;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a service definition (a map of compose keys)")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawService, A::Error> {
                let owner = CHECKS.with(|c| {
                    format!(
                        "services.{}",
                        c.borrow().current_service.clone().unwrap_or_default()
                    )
                });
                let mut s = RawService::default();
                read_keys(map, &owner, SERVICE_IGNORED, |key, m| {
                    match key {
                        "image" => s.image = Some(m.next_value()?),
                        "build" => s.build = Some(m.next_value()?),
                        "command" => s.command = m.next_value()?,
                        "entrypoint" => s.entrypoint = m.next_value()?,
                        "environment" => s.environment = m.next_value()?,
                        "env_file" => s.env_file = m.next_value()?,
                        "working_dir" => s.working_dir = m.next_value()?,
                        "user" => s.user = m.next_value()?,
                        "hostname" => s.hostname = m.next_value()?,
                        "depends_on" => s.depends_on = m.next_value()?,
                        "links" => s.links = m.next_value()?,
                        "volumes" => s.volumes = m.next_value()?,
                        "networks" => s.networks = m.next_value()?,
                        "healthcheck" => s.healthcheck = m.next_value()?,
                        "tmpfs" => s.tmpfs = m.next_value()?,
                        "cap_add" => s.cap_add = m.next_value()?,
                        "cap_drop" => s.cap_drop = m.next_value()?,
                        "privileged" => s.privileged = m.next_value()?,
                        "read_only" => s.read_only = m.next_value()?,
                        "shm_size" => s.shm_size = m.next_value()?,
                        "ulimits" => s.ulimits = m.next_value()?,
                        "labels" => s.labels = m.next_value()?,
                        "extra_hosts" => s.extra_hosts = m.next_value()?,
                        "init" => s.init = m.next_value()?,
                        "platform" => s.platform = m.next_value()?,
                        "secrets" => s.secrets = m.next_value()?,
                        "profiles" => s.profiles = m.next_value()?,
                        "cached" => s.cached = m.next_value()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                if s.image.is_none() && s.build.is_none() {
                    return Err(de::Error::custom(format!(
                        "`{owner}` has neither `image` nor `build`; give it one of the two"
                    )));
                }
                Ok(s)
            }
        }
        d.deserialize_map(V)
    }
}

/// `build:` as a context path or a map.
pub enum RawBuild {
    Context(String),
    Full(RawBuildFull),
}

/// The map form of `build:`.
#[derive(Default)]
pub struct RawBuildFull {
    pub context: Option<String>,
    pub dockerfile: Option<String>,
    pub args: Option<RawEnv>,
    pub target: Option<String>,
    pub cache_from: Vec<String>,
}

impl<'de> Deserialize<'de> for RawBuild {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBuild;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`build:` as a context path or a map with `context`, `dockerfile`, `args`, `target`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBuild, E> {
                Ok(RawBuild::Context(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBuild, A::Error> {
                let owner = CHECKS.with(|c| {
                    format!(
                        "services.{}.build",
                        c.borrow().current_service.clone().unwrap_or_default()
                    )
                });
                let mut b = RawBuildFull::default();
                read_keys(map, &owner, BUILD_IGNORED, |key, m| {
                    match key {
                        "context" => b.context = m.next_value()?,
                        "dockerfile" => b.dockerfile = m.next_value()?,
                        "args" => b.args = m.next_value()?,
                        "target" => b.target = m.next_value()?,
                        "cache_from" => b.cache_from = m.next_value()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(RawBuild::Full(b))
            }
        }
        d.deserialize_any(V)
    }
}

/// `environment`, `labels`, `extra_hosts`, build `args`: a map, or a list of `NAME=value`
/// (`NAME:value` for `extra_hosts`).
pub enum RawEnv {
    Map(Vec<(String, Option<String>)>),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of NAME: value, or a list of `NAME=value` strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: Option<Scalar> = map.next_value()?;
                    out.push((k, v.map(|s| s.0)));
                }
                Ok(RawEnv::Map(out))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawEnv, A::Error> {
                let mut out = Vec::new();
                while let Some(Scalar(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(RawEnv::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value that is one item or a list of them (`env_file`, `tmpfs`).
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one value or a list of values")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| OneOrMany(vec![t]))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An `env_file` entry: a path, or `{path, required}`.
pub struct RawEnvFile {
    pub path: String,
    pub required: bool,
}

impl<'de> Deserialize<'de> for RawEnvFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            path: String,
            #[serde(default = "yes")]
            required: bool,
            #[allow(dead_code)]
            format: Option<IgnoredAny>,
        }
        fn yes() -> bool {
            true
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnvFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a path, or a map with `path` and `required`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEnvFile, E> {
                Ok(RawEnvFile {
                    path: v.to_string(),
                    required: true,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEnvFile, A::Error> {
                let l = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEnvFile {
                    path: l.path,
                    required: l.required,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML scalar (string, number, bool) kept as the string the container sees.
pub struct Scalar(pub String);

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

/// `depends_on`: a list of names, or the map `name: {condition, restart, required}`.
pub enum RawDependsOn {
    List(Vec<LinkRef>),
    Map(Vec<(LinkRef, Option<Spanned<String>>)>),
}

impl<'de> Deserialize<'de> for RawDependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            condition: Option<Spanned<String>>,
            #[allow(dead_code)]
            restart: Option<IgnoredAny>,
            #[allow(dead_code)]
            required: Option<IgnoredAny>,
        }
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
                    let entry: Option<Entry> = map.next_value()?;
                    out.push((l, entry.and_then(|e| e.condition)));
                }
                Ok(RawDependsOn::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `links` / `depends_on` entry: `service` or `service:alias`, checked when [`CHECKS`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRef(pub String, pub Option<String>);

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

/// A `volumes:` entry: the short string form or the long map form.
pub enum RawMount {
    Short(String),
    Long(RawMountLong),
}

/// The long form of a `volumes:` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMountLong {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    pub bind: Option<RawBindOptions>,
    pub tmpfs: Option<RawTmpfsOptions>,
    #[allow(dead_code)]
    pub volume: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub consistency: Option<IgnoredAny>,
}

/// `bind:` options of a long-form mount.
#[derive(Deserialize)]
pub struct RawBindOptions {
    pub selinux: Option<String>,
    #[allow(dead_code)]
    pub propagation: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub create_host_path: Option<IgnoredAny>,
}

/// `tmpfs:` options of a long-form mount.
#[derive(Deserialize)]
pub struct RawTmpfsOptions {
    pub size: Option<Scalar>,
    #[allow(dead_code)]
    pub mode: Option<IgnoredAny>,
}

impl<'de> Deserialize<'de> for RawMount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a volume as `source:target[:mode]` or a map with `type`, `source`, `target`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMount, E> {
                Ok(RawMount::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMount, A::Error> {
                RawMountLong::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawMount::Long)
            }
        }
        d.deserialize_any(V)
    }
}

/// A service's `networks:`: a list of names or a map of name to `{aliases, …}`.
pub struct RawNetworks {
    /// Aliases from every network: all of them answer on the step's one network.
    pub aliases: Vec<String>,
}

impl<'de> Deserialize<'de> for RawNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        struct Attach {
            #[serde(default)]
            aliases: Vec<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNetworks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of network names or a map of network name to settings")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawNetworks, A::Error> {
                while seq.next_element::<String>()?.is_some() {}
                Ok(RawNetworks {
                    aliases: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNetworks, A::Error> {
                let mut aliases = Vec::new();
                while map.next_key::<String>()?.is_some() {
                    let a: Option<Attach> = map.next_value()?;
                    aliases.extend(a.unwrap_or_default().aliases);
                }
                Ok(RawNetworks { aliases })
            }
        }
        d.deserialize_any(V)
    }
}

/// `healthcheck:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthcheck {
    pub test: Option<Command>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub start_period: Option<Spanned<String>>,
    pub start_interval: Option<Spanned<String>>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub disable: bool,
}

/// A `ulimits:` value: one number for both limits, or `{soft, hard}`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a number, or a map with `soft` and `hard`")]
pub enum RawUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

/// A service's `secrets:` entry: a name, or `{source, target, …}`.
pub struct RawSecretRef {
    pub source: String,
    pub target: Option<String>,
}

impl<'de> Deserialize<'de> for RawSecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            source: String,
            target: Option<String>,
            #[allow(dead_code)]
            uid: Option<IgnoredAny>,
            #[allow(dead_code)]
            gid: Option<IgnoredAny>,
            #[allow(dead_code)]
            mode: Option<IgnoredAny>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret name, or a map with `source` and `target`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecretRef, E> {
                Ok(RawSecretRef {
                    source: v.to_string(),
                    target: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecretRef, A::Error> {
                let l = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSecretRef {
                    source: l.source,
                    target: l.target,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A top-level `volumes:` entry (empty for a plain named volume).
#[derive(Deserialize, Default)]
pub struct RawVolumeDef {
    #[serde(default)]
    pub external: Option<RawExternal>,
    pub name: Option<String>,
    #[allow(dead_code)]
    pub driver: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub driver_opts: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub labels: Option<IgnoredAny>,
}

/// `external: true`, or the obsolete `external: {name: x}`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "`external: true` or `external: {name: ...}`")]
pub enum RawExternal {
    Flag(bool),
    Named { name: String },
}

/// A top-level `secrets:` entry.
#[derive(Deserialize, Default)]
pub struct RawSecretDef {
    pub file: Option<String>,
    pub environment: Option<String>,
    #[allow(dead_code)]
    pub external: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub name: Option<IgnoredAny>,
}

/// The services map; its visitor tells [`CHECKS`] which service is being read.
pub struct RawServices(pub Vec<(String, RawService)>);

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
                    if name.starts_with("x-") {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if out.iter().any(|(n, _)| n == &name) {
                        return Err(de::Error::custom(format!(
                            "service `{name}` is defined twice"
                        )));
                    }
                    CHECKS.with(|c| c.borrow_mut().current_service = Some(name.clone()));
                    let svc = map.next_value::<RawService>()?;
                    out.push((name, svc));
                }
                CHECKS.with(|c| c.borrow_mut().current_service = None);
                Ok(RawServices(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The whole file: the compose specification's top level.
#[derive(Default)]
pub struct RawCompose {
    pub name: Option<String>,
    pub services: Option<RawServices>,
    pub volumes: BTreeMap<String, Option<RawVolumeDef>>,
    pub secrets: BTreeMap<String, Option<RawSecretDef>>,
    /// Whether a top-level `networks:` was given (every service still shares the step's network).
    pub networks: Option<Location>,
}

impl<'de> Deserialize<'de> for RawCompose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCompose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a compose file: a map with `services:`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCompose, A::Error> {
                let mut c = RawCompose::default();
                read_keys(map, "", TOP_IGNORED, |key, m| {
                    match key {
                        "name" => c.name = m.next_value()?,
                        "services" => c.services = Some(m.next_value()?),
                        "volumes" => c.volumes = m.next_value::<Option<_>>()?.unwrap_or_default(),
                        "secrets" => c.secrets = m.next_value::<Option<_>>()?.unwrap_or_default(),
                        "networks" => {
                            let v: Spanned<IgnoredAny> = m.next_value()?;
                            c.networks = Some(v.referenced);
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}
