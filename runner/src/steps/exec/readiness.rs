//! A step environment's own resources and readiness: named volumes created for it, and the
//! `depends_on` conditions (`service_healthy`, `service_completed_successfully`) waited for before
//! the next container starts.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::models::VolumeCreateRequest;
use futures::StreamExt;

use super::{Engine, slug};
use crate::steps::config::{Condition, Mount, Step};
use crate::steps::plan::start_order;

impl Engine {
    /// Creates this environment's named volumes (`<env>-<volume>`, labelled for cleanup) for the
    /// services the step starts; returns the engine name of every named volume of the file
    /// (external volumes keep their own name and are never created or removed).
    pub(super) async fn create_volumes(
        &self,
        step: &Step,
        env_name: &str,
    ) -> anyhow::Result<HashMap<String, String>> {
        let mut names = HashMap::new();
        let mut services = start_order(&self.services.services, &step.service);
        services.push(step.service.clone());
        for service in &services {
            for m in &self.service(service)?.mounts {
                let Mount::Named { volume, .. } = m else {
                    continue;
                };
                if names.contains_key(volume) {
                    continue;
                }
                let external = self
                    .services
                    .volumes
                    .get(volume)
                    .and_then(|v| v.external.clone());
                let engine_name = match external {
                    Some(name) => name,
                    None => {
                        let name = format!("{env_name}-{}", slug(volume));
                        self.docker
                            .create_volume(VolumeCreateRequest {
                                name: Some(name.clone()),
                                labels: Some(self.labels(env_name)),
                                ..Default::default()
                            })
                            .await
                            .with_context(|| {
                                format!("failed to create volume `{name}` for step `{}`", step.name)
                            })?;
                        name
                    }
                };
                names.insert(volume.clone(), engine_name);
            }
        }
        Ok(names)
    }

    /// Waits until every dependency of `service` reached its `depends_on` condition: healthy
    /// (its healthcheck passed) or completed successfully (exited 0). Started needs no wait.
    pub(super) async fn wait_for_dependencies(
        &self,
        step: &Step,
        service: &str,
        started: &HashMap<String, String>,
        slot: usize,
    ) -> anyhow::Result<()> {
        let svc = self.service(service)?;
        for (dep, condition) in &svc.conditions {
            let Some(id) = started.get(dep) else { continue };
            match condition {
                Condition::Started => {}
                Condition::Healthy => {
                    let limit = self
                        .service(dep)?
                        .healthcheck
                        .as_ref()
                        .map(crate::steps::compose::Healthcheck::wait_limit)
                        .unwrap_or(Duration::from_secs(120));
                    self.printer.line(
                        &step.name,
                        slot,
                        &format!(
                            "waiting for `{dep}` to be healthy (at most {}s)",
                            limit.as_secs()
                        ),
                    );
                    self.wait_healthy(dep, id, limit).await.with_context(|| {
                        format!("`{service}` depends on `{dep}` with `condition: service_healthy`")
                    })?;
                    self.printer
                        .line(&step.name, slot, &format!("`{dep}` is healthy"));
                }
                Condition::CompletedSuccessfully => {
                    let mut stream = self.docker.wait_container(id, None);
                    let code = match stream.next().await {
                        Some(Ok(r)) => r.status_code,
                        Some(Err(bollard::errors::Error::DockerContainerWaitError {
                            code,
                            ..
                        })) => code,
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("the engine ended the wait for `{dep}` without an exit code"),
                    };
                    if code != 0 {
                        bail!(
                            "`{service}` depends on `{dep}` with `condition: service_completed_successfully`, but `{dep}` exited with code {code}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls the container's health until `healthy`; fails on `unhealthy`, on exit, when it has no
    /// healthcheck at all, or after `limit`.
    async fn wait_healthy(&self, service: &str, id: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self
                .docker
                .inspect_container(id, None)
                .await
                .with_context(|| format!("failed to inspect the `{service}` container"))?;
            let state = info.state.unwrap_or_default();
            let health = state.health.unwrap_or_default();
            let last_output = || {
                health
                    .log
                    .as_ref()
                    .and_then(|l| l.last())
                    .and_then(|l| l.output.clone())
                    .map(|o| format!(" (last check said: {})", o.trim()))
                    .unwrap_or_default()
            };
            let status = health.status.map(|s| s.to_string()).unwrap_or_default();
            match status.as_str() {
                "healthy" => return Ok(()),
                "unhealthy" => bail!(
                    "service `{service}` is unhealthy{}; fix its healthcheck or what it checks",
                    last_output()
                ),
                "" | "none" => bail!(
                    "service `{service}` has no healthcheck (neither `healthcheck:` nor a HEALTHCHECK in its image); add one or use `condition: service_started`"
                ),
                _ => {}
            }
            if state.running == Some(false) {
                bail!(
                    "service `{service}` exited (code {}) before it was healthy",
                    state.exit_code.unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "service `{service}` was not healthy after {}s{}; raise its healthcheck's `retries`/`start_period` or make it start faster",
                    limit.as_secs(),
                    last_output()
                );
            }
            // The engine runs the checks; we only look at their result a few times a second.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
