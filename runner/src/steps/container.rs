//! One service container of a step environment, as the engine's create request: pure mapping from
//! the compose model ([`super::compose::Service`]) to bollard's types, unit-tested without an
//! engine.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig,
    ResourcesUlimits,
};

use super::compose::{Healthcheck, Mount, Service};
use super::config::Command;

/// What a container of a step environment needs besides its service definition.
pub struct ContainerSpec<'a> {
    /// Service name: the first network alias.
    pub service: &'a str,
    /// Image to run.
    pub image: String,
    /// Step command overriding the service's `command` (the step's own container only).
    pub command: Option<&'a Command>,
    /// `CI_*` variables, added after the service environment.
    pub ci_env: Vec<String>,
    /// The step's network.
    pub network: &'a str,
    /// Run labels (cleanup finds the container by them); service labels are added.
    pub labels: HashMap<String, String>,
    /// Engine name of each named volume of the file (per environment, or the external name).
    pub volume_names: &'a HashMap<String, String>,
}

/// The create request for `svc` in a step environment.
pub fn container_body(svc: &Service, spec: ContainerSpec<'_>) -> ContainerCreateBody {
    let mut env: Vec<String> = svc
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend(spec.ci_env);
    let mut binds = Vec::new();
    let mut anonymous = Vec::new();
    let mut tmpfs = HashMap::new();
    for m in &svc.mounts {
        match m {
            Mount::Bind {
                host,
                container,
                read_only,
                selinux,
            } => {
                let mut opts: Vec<&str> = Vec::new();
                if *read_only {
                    opts.push("ro");
                }
                if let Some(z) = selinux {
                    opts.push(z);
                }
                let opts = if opts.is_empty() {
                    String::new()
                } else {
                    format!(":{}", opts.join(","))
                };
                binds.push(format!("{}:{container}{opts}", host.display()));
            }
            Mount::Named {
                volume,
                container,
                read_only,
            } => {
                let name = spec
                    .volume_names
                    .get(volume)
                    .cloned()
                    .unwrap_or_else(|| volume.clone());
                let ro = if *read_only { ":ro" } else { "" };
                binds.push(format!("{name}:{container}{ro}"));
            }
            Mount::Anonymous { container } => anonymous.push(container.clone()),
            Mount::Tmpfs { container, size } => {
                let opts = size.map(|s| format!("size={s}")).unwrap_or_default();
                tmpfs.insert(container.clone(), opts);
            }
        }
    }
    let mut aliases = vec![spec.service.to_string()];
    aliases.extend(svc.link_aliases.iter().cloned());
    let mut labels: HashMap<String, String> = svc
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(spec.labels);
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ContainerCreateBody {
        image: Some(spec.image),
        cmd: spec.command.or(svc.command.as_ref()).map(Command::argv),
        entrypoint: svc.entrypoint.as_ref().map(Command::argv),
        env: Some(env),
        working_dir: svc.working_dir.clone(),
        user: svc.user.clone(),
        hostname: svc.hostname.clone(),
        healthcheck: svc.healthcheck.as_ref().map(health_config),
        volumes: non_empty(&anonymous),
        labels: Some(labels),
        host_config: Some(HostConfig {
            binds: non_empty(&binds),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            network_mode: Some(spec.network.to_string()),
            cap_add: non_empty(&svc.cap_add),
            cap_drop: non_empty(&svc.cap_drop),
            privileged: svc.privileged.then_some(true),
            readonly_rootfs: svc.read_only.then_some(true),
            shm_size: svc.shm_size,
            ulimits: (!svc.ulimits.is_empty()).then(|| {
                svc.ulimits
                    .iter()
                    .map(|(name, soft, hard)| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*soft),
                        hard: Some(*hard),
                    })
                    .collect()
            }),
            extra_hosts: non_empty(&svc.extra_hosts),
            init: svc.init,
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.to_string(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Compose's healthcheck in the engine's units (nanoseconds).
pub fn health_config(h: &Healthcheck) -> HealthConfig {
    HealthConfig {
        test: h.test.clone(),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        start_interval: nanos(h.start_interval),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::steps::compose::parse_services;

    const FILE: &str = "\
services:
  db:
    image: db
    user: '999'
    hostname: dbhost
    entrypoint: [/bin/sh, -c]
    command: run-db
    volumes:
      - data:/var/lib/db
      - ./conf:/etc/db:ro,z
      - /scratch
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 1m}
    tmpfs: /run:size=2m
    healthcheck:
      test: test -f /ready
      interval: 1s
      timeout: 2s
      retries: 5
      start_period: 1m30s
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    privileged: true
    shm_size: 64m
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      nproc: 512
    labels: {team: db}
    extra_hosts: ['example.test:10.0.0.1', 'other.test=10.0.0.2']
    init: true
    networks:
      back:
        aliases: [database]
volumes:
  data:
networks:
  back:
";

    #[test]
    fn every_honoured_key_reaches_the_create_request() {
        let file = parse_services(Path::new("c.yml"), Path::new("/p"), FILE).expect("parses");
        let db = &file.services["db"];
        let names = HashMap::from([("data".to_string(), "env1-data".to_string())]);
        let body = container_body(
            db,
            ContainerSpec {
                service: "db",
                image: "img".into(),
                command: None,
                ci_env: vec!["CI_BRANCH=main".into()],
                network: "env1",
                labels: HashMap::from([("layercache.run".into(), "r".into())]),
                volume_names: &names,
            },
        );
        assert_eq!(body.user.as_deref(), Some("999"));
        assert_eq!(body.hostname.as_deref(), Some("dbhost"));
        assert_eq!(
            body.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(body.volumes, Some(vec!["/scratch".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels["team"], "db");
        assert_eq!(labels["layercache.run"], "r");
        let hc = body.healthcheck.unwrap();
        assert_eq!(
            hc.test,
            Some(vec!["CMD-SHELL".to_string(), "test -f /ready".to_string()])
        );
        assert_eq!(hc.interval, Some(1_000_000_000));
        assert_eq!(hc.retries, Some(5));
        assert_eq!(hc.start_period, Some(90_000_000_000));
        let host = body.host_config.unwrap();
        assert_eq!(
            host.binds,
            Some(vec![
                "env1-data:/var/lib/db".to_string(),
                "/p/conf:/etc/db:ro,z".to_string()
            ])
        );
        let tmpfs = host.tmpfs.unwrap();
        assert_eq!(tmpfs["/tmp"], "size=1048576");
        assert_eq!(tmpfs["/run"], "size=2097152");
        assert_eq!(host.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.privileged, Some(true));
        assert_eq!(host.shm_size, Some(64 * 1024 * 1024));
        let ulimits = host.ulimits.unwrap();
        assert!(ulimits.iter().any(|u| u.name.as_deref() == Some("nofile")
            && u.soft == Some(1024)
            && u.hard == Some(2048)));
        assert_eq!(
            host.extra_hosts,
            Some(vec![
                "example.test:10.0.0.1".to_string(),
                "other.test:10.0.0.2".to_string()
            ])
        );
        assert_eq!(host.init, Some(true));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(
            endpoints["env1"].aliases,
            Some(vec!["db".to_string(), "database".to_string()])
        );
        assert!(body.env.unwrap().contains(&"CI_BRANCH=main".to_string()));
    }
}
