//! The engine side of `layercache steps`, through bollard: build service images, run each step in
//! its own environment (a fresh bridge network, fresh dependency containers, the step container),
//! push images, and remove everything a run created.
//!
//! Everything created carries the label `layercache.run=<run id>`; [`Engine::cleanup`] removes by
//! that label, so a crash in the middle of a step, a failed step or Ctrl-C leave nothing behind.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    PushImageOptionsBuilder, RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;

use super::config::{Service, ServicesFile, Step, StepAction};
use super::output::Printer;
use super::plan::{StepReport, start_order};

/// Label put on every container and network of a run.
pub const RUN_LABEL: &str = "layercache.run";

/// Label naming the step environment (network name) a container belongs to.
pub const ENV_LABEL: &str = "layercache.env";

/// How many output lines of a step are kept for the `--json` summary.
const LOG_TAIL: usize = 200;

/// What every step container learns about the build.
#[derive(Debug, Clone)]
pub struct CiEnv {
    /// `CI_COMMIT_ID`.
    pub commit_id: String,
    /// `CI_BRANCH`.
    pub branch: String,
}

/// One run's view of the engine.
pub struct Engine {
    /// The bollard client (honours `DOCKER_HOST`).
    docker: Docker,
    /// This run's uuid: the cleanup label value.
    run_id: String,
    /// Project name: prefix of built image names.
    project: String,
    /// The parsed services file.
    services: Arc<ServicesFile>,
    /// Commit and branch for the CI_* variables.
    ci: CiEnv,
    /// Log output.
    printer: Printer,
    /// Numbers each step environment so names stay unique even when step names slug the same.
    counter: AtomicUsize,
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST` (or the local socket) and checks it answers.
    pub async fn connect(
        run_id: String,
        services: Arc<ServicesFile>,
        ci: CiEnv,
        printer: Printer,
    ) -> anyhow::Result<Engine> {
        let docker = Docker::connect_with_defaults()
            .context("failed to set up a Docker client; check DOCKER_HOST")?;
        docker
            .ping()
            .await
            .context("the Docker engine does not answer; start dockerd or set DOCKER_HOST")?;
        let project = project_name(&services.dir);
        Ok(Engine {
            docker,
            run_id,
            project,
            services,
            ci,
            printer,
            counter: AtomicUsize::new(0),
        })
    }

    /// The image a service's containers run: the built tag, or the service's `image`.
    pub fn image_for(&self, service: &str) -> anyhow::Result<String> {
        let svc = self.service(service)?;
        match (&svc.build, &svc.image) {
            (Some(_), _) => Ok(built_tag(&self.project, service)),
            (None, Some(image)) => Ok(image.clone()),
            (None, None) => bail!("service `{service}` has neither `image` nor `build`"),
        }
    }

    fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .services
            .get(name)
            .ok_or_else(|| anyhow!("unknown service `{name}`"))
    }

    /// Builds every service with `build:` (at most `jobs` at once), tagged
    /// `layercache-steps/<project>-<service>:latest`. `no_cache` (or a service's `cached: false`)
    /// builds without reusing layers.
    pub async fn build_services(&self, jobs: usize, no_cache: bool) -> anyhow::Result<()> {
        let builds: Vec<_> = self
            .services
            .services
            .iter()
            .filter(|(_, s)| s.build.is_some())
            .enumerate()
            .map(|(slot, (name, svc))| self.build_one(name, svc, slot, no_cache || !svc.cached))
            .collect();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(builds)
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        let errors: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .map(|e| format!("{e:#}"))
            .collect();
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    }

    async fn build_one(
        &self,
        name: &str,
        svc: &Service,
        slot: usize,
        no_cache: bool,
    ) -> anyhow::Result<()> {
        let Some(build) = &svc.build else {
            return Ok(());
        };
        let prefix = format!("build {name}");
        let tag = built_tag(&self.project, name);
        let context = build.context.clone();
        let tar = tokio::task::spawn_blocking(move || context_tar(&context))
            .await
            .context("the build-context task panicked")?
            .with_context(|| {
                format!(
                    "failed to pack the build context `{}` of service `{name}`",
                    build.context.display()
                )
            })?;
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&build.dockerfile)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .nocache(no_cache)
            .buildargs(&args)
            .build();
        self.printer.line(
            &prefix,
            slot,
            &format!("building {tag} from {}", build.context.display()),
        );
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            let info = item.with_context(|| format!("building service `{name}` failed"))?;
            if let Some(detail) = info.error_detail {
                bail!(
                    "building service `{name}` failed: {}; fix its Dockerfile `{}`",
                    detail.message.unwrap_or_default(),
                    build.dockerfile
                );
            }
            if let Some(text) = info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    self.printer.line(&prefix, slot, line);
                }
            }
        }
        Ok(())
    }

    /// Makes sure every `image:` service used by `steps` exists locally, pulling what is missing,
    /// so a typo fails before any step runs.
    pub async fn ensure_images(&self, steps: &[&Step]) -> anyhow::Result<()> {
        let mut needed: Vec<String> = Vec::new();
        for step in steps {
            let mut all = start_order(&self.services.services, &step.service);
            all.push(step.service.clone());
            for s in all {
                if !needed.contains(&s) {
                    needed.push(s);
                }
            }
        }
        for service in needed {
            if self.service(&service)?.build.is_some() {
                continue;
            }
            let image = self.image_for(&service)?;
            if self.docker.inspect_image(&image).await.is_ok() {
                continue;
            }
            self.printer.line(
                "pull",
                0,
                &format!("pulling {image} for service `{service}`"),
            );
            let options = CreateImageOptionsBuilder::default()
                .from_image(&image)
                .build();
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                item.with_context(|| {
                    format!("image `{image}` of service `{service}` is not present and could not be pulled; build or load it first")
                })?;
            }
        }
        Ok(())
    }

    /// Runs one step in its own environment and removes that environment afterwards. Never fails:
    /// engine errors become a failed [`StepReport`] with the error text.
    pub async fn run_step(self: Arc<Self>, step: Step, slot: usize) -> StepReport {
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let env_name = format!(
            "lc-{}-{seq}-{}",
            &self.run_id[..8.min(self.run_id.len())],
            slug(&step.name)
        );
        let result = match &step.action {
            StepAction::Run { command } => {
                self.run_in_env(&step, command.as_ref(), &env_name, slot)
                    .await
            }
            StepAction::Push {
                image_name,
                registry,
            } => {
                self.push(&step, image_name, registry.as_deref(), slot)
                    .await
            }
        };
        self.remove_env(&env_name).await;
        match result {
            Ok(report) => report,
            Err(e) => {
                let error = format!("{e:#}");
                self.printer
                    .line(&step.name, slot, &format!("error: {error}"));
                StepReport {
                    passed: false,
                    exit_code: None,
                    error: Some(error),
                    log_tail: Vec::new(),
                }
            }
        }
    }

    async fn run_in_env(
        &self,
        step: &Step,
        command: Option<&super::config::Command>,
        env_name: &str,
        slot: usize,
    ) -> anyhow::Result<StepReport> {
        let labels = self.labels(env_name);
        self.docker
            .create_network(NetworkCreateRequest {
                name: env_name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!(
                    "failed to create network `{env_name}` for step `{}`",
                    step.name
                )
            })?;

        for dep in start_order(&self.services.services, &step.service) {
            let id = self.create_container(step, &dep, None, env_name).await?;
            self.docker
                .start_container(&id, None)
                .await
                .with_context(|| {
                    format!("failed to start service `{dep}` for step `{}`", step.name)
                })?;
        }

        let id = self
            .create_container(step, &step.service, command, env_name)
            .await?;
        self.docker
            .start_container(&id, None)
            .await
            .with_context(|| format!("failed to start the container of step `{}`", step.name))?;

        let logs = self.follow_logs(&id, &step.name, slot);
        let wait = async {
            let mut stream = self.docker.wait_container(&id, None);
            match stream.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(anyhow::Error::new(e)),
                None => Err(anyhow!("the engine ended the wait without an exit code")),
            }
        };
        let (log_tail, code) = tokio::join!(logs, wait);
        let code = code.with_context(|| format!("failed to wait for step `{}`", step.name))?;
        self.printer
            .line(&step.name, slot, &format!("exited with code {code}"));
        Ok(StepReport {
            passed: code == 0,
            exit_code: Some(code),
            error: None,
            log_tail,
        })
    }

    /// Creates a container of `service` on `network`: its aliases are the service name and any
    /// `links` aliases; `command` overrides the service's command (step containers only).
    async fn create_container(
        &self,
        step: &Step,
        service: &str,
        command: Option<&super::config::Command>,
        network: &str,
    ) -> anyhow::Result<String> {
        let svc = self.service(service)?;
        let image = self.image_for(service)?;
        let mut env: Vec<String> = svc
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("CI_COMMIT_ID={}", self.ci.commit_id));
        env.push(format!("CI_BRANCH={}", self.ci.branch));
        env.push(format!("CI_STEP_NAME={}", step.name));
        let binds: Vec<String> = svc
            .volumes
            .iter()
            .map(|v| {
                let mode = if v.read_only { ":ro" } else { "" };
                format!("{}:{}{mode}", v.host.display(), v.container)
            })
            .collect();
        let mut aliases = vec![service.to_string()];
        aliases.extend(svc.link_aliases.iter().cloned());
        let cmd = command
            .or(svc.command.as_ref())
            .map(super::config::Command::argv);
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd,
            env: Some(env),
            working_dir: svc.working_dir.clone(),
            labels: Some(self.labels(network)),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                network_mode: Some(network.to_string()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        aliases: Some(aliases),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = format!("{network}-{service}");
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .with_context(|| {
                format!(
                    "failed to create a `{service}` container ({image}) for step `{}`",
                    step.name
                )
            })?;
        Ok(created.id)
    }

    /// Streams a container's output as prefixed lines until it exits; returns the last lines.
    async fn follow_logs(&self, id: &str, prefix: &str, slot: usize) -> Vec<String> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut pending = String::new();
        let emit = |line: &str, tail: &mut VecDeque<String>| {
            self.printer.line(prefix, slot, line);
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        };
        while let Some(item) = stream.next().await {
            let Ok(chunk) = item else { break };
            pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(nl) = pending.find('\n') {
                let line: String = pending.drain(..=nl).collect();
                emit(line.trim_end_matches(['\n', '\r']), &mut tail);
            }
        }
        if !pending.is_empty() {
            emit(&pending, &mut tail);
        }
        tail.into()
    }

    /// Tags the service image as `image_name` and pushes it.
    async fn push(
        &self,
        step: &Step,
        image_name: &str,
        registry: Option<&str>,
        slot: usize,
    ) -> anyhow::Result<StepReport> {
        let source = self.image_for(&step.service)?;
        let (repo, tag) = split_image_name(image_name);
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
        let hint = match registry {
            Some(r) => format!("check that `{r}` is reachable and that you are logged in to it"),
            None => {
                "check the registry host in `image_name` and that you are logged in to it".into()
            }
        };
        let mut stream = self.docker.push_image(
            repo,
            Some(PushImageOptionsBuilder::default().tag(tag).build()),
            None,
        );
        let mut log_tail = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item.with_context(|| format!("push of `{repo}:{tag}` failed; {hint}"))?;
            if let Some(detail) = info.error_detail {
                bail!(
                    "push of `{repo}:{tag}` failed: {}; {hint}",
                    detail.message.unwrap_or_default()
                );
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

    /// Removes the containers and the network of one step environment (best effort: the final
    /// [`Engine::cleanup`] catches anything left).
    async fn remove_env(&self, env_name: &str) {
        // Filters on the same key are ANDed by the engine: this run's containers of this environment.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{RUN_LABEL}={}", self.run_id),
                format!("{ENV_LABEL}={env_name}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(list) = self.docker.list_containers(Some(options)).await {
            for c in list {
                if let Some(id) = c.id {
                    let _ = self.remove_container(&id).await;
                }
            }
        }
        let _ = self.docker.remove_network(env_name).await;
    }

    async fn remove_container(&self, id: &str) -> Result<(), bollard::errors::Error> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Removes every container and network labelled with this run; returns how many of each went,
    /// or what could not be removed.
    pub async fn cleanup(&self) -> anyhow::Result<(usize, usize)> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{RUN_LABEL}={}", self.run_id)],
        )]);
        let mut failures = Vec::new();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .context("failed to list this run's containers for cleanup")?;
        let mut removed_containers = 0;
        for c in containers {
            let Some(id) = c.id else { continue };
            match self.remove_container(&id).await {
                Ok(()) => removed_containers += 1,
                Err(e) => failures.push(format!("container {id}: {e}")),
            }
        }
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .context("failed to list this run's networks for cleanup")?;
        let mut removed_networks = 0;
        for n in networks {
            let Some(name) = n.name else { continue };
            match self.docker.remove_network(&name).await {
                Ok(()) => removed_networks += 1,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => failures.push(format!("network {name}: {e}")),
            }
        }
        if !failures.is_empty() {
            bail!(
                "could not remove: {}; remove them with `docker rm -f` / `docker network rm` (label {RUN_LABEL}={})",
                failures.join(", "),
                self.run_id
            );
        }
        Ok((removed_containers, removed_networks))
    }

    /// Cleanup that retries once after a short pause: after Ctrl-C, a create request already sent
    /// may still land after the first listing.
    pub async fn cleanup_twice(&self) -> anyhow::Result<(usize, usize)> {
        let first = self.cleanup().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = self.cleanup().await?;
        let first = first?;
        Ok((first.0 + second.0, first.1 + second.1))
    }

    fn labels(&self, env_name: &str) -> HashMap<String, String> {
        HashMap::from([
            (RUN_LABEL.to_string(), self.run_id.clone()),
            (ENV_LABEL.to_string(), env_name.to_string()),
            ("layercache.project".to_string(), self.project.clone()),
        ])
    }
}

/// `layercache-steps/<project>-<service>:latest`.
pub fn built_tag(project: &str, service: &str) -> String {
    format!("layercache-steps/{project}-{}:latest", slug(service))
}

/// The project name: the services file's directory name, reduced to what image names allow.
pub fn project_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let s = slug(&name);
    if s.is_empty() { "project".into() } else { s }
}

/// Lower-case `[a-z0-9_.-]`, other characters become `-`; valid in image and container names.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.' || c == '_')
        .to_string()
}

/// `host:5000/name:tag` → (`host:5000/name`, `tag`); the tag defaults to `latest`.
pub fn split_image_name(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// A deterministic tar of a build context: entries sorted, owner 0, mtime 0, so the same files give
/// the same bytes (and the engine's build cache sees the same context).
fn context_tar(dir: &Path) -> anyhow::Result<Vec<u8>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = rel.join(e.file_name());
            out.push(path.clone());
            if e.file_type()?.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)
        .with_context(|| format!("failed to list `{}`", dir.display()))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    for rel in paths {
        let full = dir.join(&rel);
        builder
            .append_path_with_name(&full, &rel)
            .with_context(|| format!("failed to add `{}` to the build context", full.display()))?;
    }
    builder
        .into_inner()
        .context("failed to finish the build-context tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_at_the_tag_not_the_port() {
        assert_eq!(split_image_name("reg:5000/app"), ("reg:5000/app", "latest"));
        assert_eq!(split_image_name("reg:5000/app:v1"), ("reg:5000/app", "v1"));
        assert_eq!(split_image_name("app:v2"), ("app", "v2"));
    }

    #[test]
    fn slugs_and_tags_are_valid_names() {
        assert_eq!(slug("Test A/1"), "test-a-1");
        assert_eq!(
            built_tag("jet-sample", "db"),
            "layercache-steps/jet-sample-db:latest"
        );
        assert_eq!(project_name(Path::new("/x/My Project")), "my-project");
        assert_eq!(project_name(Path::new("/")), "project");
    }

    #[test]
    fn context_tar_is_deterministic_and_sorted() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("b"), "2").expect("write");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/x"), "1").expect("write");
        let one = context_tar(dir.path()).expect("tar");
        let two = context_tar(dir.path()).expect("tar");
        assert_eq!(one, two);
        let mut archive = tar::Archive::new(one.as_slice());
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["a", "a/x", "b"]);
    }
}
