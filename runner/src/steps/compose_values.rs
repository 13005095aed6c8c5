//! Values of the services file that need more than a type: environment lists, sizes (`64m`),
//! durations (`1m30s`), healthchecks and the short and long `volumes:` syntaxes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::compose::{Healthcheck, Mount};
use super::compose_raw::{RawEnv, RawHealthcheck, RawMount};
use super::config::Command;

/// Compose rules for `environment` (and `labels`, build `args`): `NAME` alone (list) or `NAME:`
/// with no value (map) passes the host's value through, and is left out when the host does not
/// set it.
pub fn resolve_env(env: RawEnv) -> BTreeMap<String, String> {
    let host = |k: &str| std::env::var(k).ok();
    match env {
        RawEnv::Map(m) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Some(v) => Some((k, v)),
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

/// A compose size (`64m`, `1gb`, `512000`) in bytes; the units are binary, as the engine reads them.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    layercache_shared::size::parse_binary(s)
        .ok()
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| format!("`{s}` is not a size; write e.g. `64m` or `1gb`"))
}

fn duration(
    s: &Option<Spanned<String>>,
    key: &str,
) -> Result<Option<Duration>, (Location, String)> {
    match s {
        None => Ok(None),
        Some(s) => humantime::parse_duration(&s.value).map(Some).map_err(|e| {
            (
                s.referenced,
                format!(
                    "{key}: `{}` is not a duration ({e}); write e.g. `10s` or `1m30s`",
                    s.value
                ),
            )
        }),
    }
}

pub fn convert_healthcheck(h: RawHealthcheck) -> Result<Healthcheck, (Location, String)> {
    let test = if h.disable {
        Some(vec!["NONE".to_string()])
    } else {
        h.test.map(|t| match t {
            Command::Shell(s) => vec!["CMD-SHELL".into(), s],
            Command::Exec(v) => v,
        })
    };
    Ok(Healthcheck {
        test,
        interval: duration(&h.interval, "interval")?,
        timeout: duration(&h.timeout, "timeout")?,
        retries: h.retries,
        start_period: duration(&h.start_period, "start_period")?,
        start_interval: duration(&h.start_interval, "start_interval")?,
    })
}

/// A `volumes:` entry: short `source:target[:mode]`, `target` alone, or the long form.
pub fn convert_mount(dir: &Path, m: &RawMount) -> Result<Mount, String> {
    let is_path = |s: &str| s.starts_with('.') || s.starts_with('/') || s.starts_with('~');
    let host_path = |s: &str| -> PathBuf {
        match s.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(rest),
            None => normalize(&dir.join(s)),
        }
    };
    let check_target = |t: &str| {
        if t.starts_with('/') {
            Ok(())
        } else {
            Err(format!("the container path `{t}` must be absolute"))
        }
    };
    match m {
        RawMount::Short(spec) => {
            let parts: Vec<&str> = spec.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => {
                    check_target(t)?;
                    return Ok(Mount::Anonymous {
                        container: t.to_string(),
                    });
                }
                [s, t] => (*s, *t, ""),
                [s, t, m] => (*s, *t, *m),
                _ => return Err(format!("`{spec}` is not `source:target[:mode]`")),
            };
            check_target(target)?;
            let mut read_only = false;
            let mut selinux = None;
            for opt in mode.split(',').filter(|o| !o.is_empty()) {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    "z" | "Z" => selinux = Some(opt.to_string()),
                    // Docker Desktop consistency hints and `nocopy` change nothing on Linux.
                    "cached" | "delegated" | "consistent" | "nocopy" => {}
                    other => {
                        return Err(format!(
                            "`{spec}`: unknown mode `{other}`; use ro, rw, z or Z"
                        ));
                    }
                }
            }
            if is_path(source) {
                Ok(Mount::Bind {
                    host: host_path(source),
                    container: target.into(),
                    read_only,
                    selinux,
                })
            } else {
                Ok(Mount::Named {
                    volume: source.into(),
                    container: target.into(),
                    read_only,
                })
            }
        }
        RawMount::Long(l) => {
            check_target(&l.target)?;
            match (l.kind.as_str(), l.source.as_deref()) {
                ("bind", Some(s)) => Ok(Mount::Bind {
                    host: host_path(s),
                    container: l.target.clone(),
                    read_only: l.read_only,
                    selinux: l.bind.as_ref().and_then(|b| b.selinux.clone()),
                }),
                ("bind", None) => Err("a `type: bind` volume needs a `source`".into()),
                ("volume", Some(s)) => Ok(Mount::Named {
                    volume: s.into(),
                    container: l.target.clone(),
                    read_only: l.read_only,
                }),
                ("volume", None) => Ok(Mount::Anonymous {
                    container: l.target.clone(),
                }),
                ("tmpfs", _) => Ok(Mount::Tmpfs {
                    container: l.target.clone(),
                    size: match l.tmpfs.as_ref().and_then(|t| t.size.as_ref()) {
                        Some(s) => Some(parse_bytes(&s.0)?),
                        None => None,
                    },
                }),
                (other, _) => Err(format!(
                    "volume type `{other}` is not supported; use bind, volume or tmpfs"
                )),
            }
        }
    }
}

/// Removes `.` and `..` components without touching the disk (the path may not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
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
