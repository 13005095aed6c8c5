//! `type: push` steps: tag the service image as `image_name` and push it with the credentials of
//! `docker login`, saying clearly when the registry refuses them.

use anyhow::{Context, anyhow, bail};
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;

use layercache_shared::image_ref::ImageRef;

use super::Engine;
use crate::steps::config::Step;
use crate::steps::plan::StepReport;

impl Engine {
    /// Tags the service image as `image_name` and pushes it.
    pub(super) async fn push(
        &self,
        step: &Step,
        image_name: &ImageRef,
        registry: Option<&str>,
        slot: usize,
    ) -> anyhow::Result<StepReport> {
        let source = self.image_for(&step.service)?;
        let (repo, tag) = (image_name.name(), image_name.tag_or_latest());
        let repo = repo.as_str();
        self.docker
            .tag_image(
                &source,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("failed to tag `{source}` as `{repo}:{tag}`"))?;
        self.printer.line(
            &step.name,
            slot,
            &format!("pushing {repo}:{tag} (from {source})"),
        );
        let host = crate::steps::credentials::registry_host(image_name);
        let credentials =
            crate::steps::credentials::credentials_for(host).map_err(|e| anyhow!(e))?;
        let login_hint = match &credentials {
            Some(_) => format!(
                "the stored `docker login` for `{host}` was used; log in again or check that the account may push there"
            ),
            None => format!(
                "no `docker login` for `{host}` was found (looked in $DOCKER_CONFIG/config.json, else ~/.docker/config.json); run `docker login {host}` first"
            ),
        };
        let hint = match registry {
            Some(r) => format!("check that `{r}` is reachable; {login_hint}"),
            None => format!("check the registry host in `image_name`; {login_hint}"),
        };
        let mut stream = self.docker.push_image(
            repo,
            Some(PushImageOptionsBuilder::default().tag(tag).build()),
            credentials,
        );
        let mut log_tail = Vec::new();
        while let Some(item) = stream.next().await {
            // The engine reports a refusal either as a stream error or as an error detail.
            let info = match item {
                Ok(info) => info,
                Err(e) if is_refusal(&e.to_string()) => bail!(
                    "the registry `{host}` refused the push of `{repo}:{tag}`: {e}; {login_hint}"
                ),
                Err(e) => bail!("push of `{repo}:{tag}` failed: {e}; {hint}"),
            };
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_default();
                if is_refusal(&message) {
                    bail!(
                        "the registry `{host}` refused the push of `{repo}:{tag}`: {message}; {login_hint}"
                    );
                }
                bail!("push of `{repo}:{tag}` failed: {message}; {hint}");
            }
            if let Some(status) = info.status {
                self.printer.line(&step.name, slot, &status);
                log_tail.push(status);
            }
        }
        Ok(StepReport {
            passed: true,
            exit_code: None,
            error: None,
            log_tail,
        })
    }
}

/// Whether an engine push error means the registry refused the credentials (or their absence).
fn is_refusal(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
        "401",
        "403",
    ]
    .iter()
    .any(|w| lower.contains(w))
}
