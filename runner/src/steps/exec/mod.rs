//! The engine side of `layercache steps`, through bollard: build service images, run each step in
//! its own environment (a fresh bridge network, fresh dependency containers, the step container),
//! push images, and remove everything a run created.
//!
//! Service images are built through the layer cache ([`crate::build::build_through_cache`]), each
//! under its own namespace `<namespace>/<service>`; a cache server that is down or refuses the
//! token only makes the builds uncached.
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
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use futures::StreamExt;
use layercache_shared::{Digest, Namespace};

mod push;
mod readiness;

use super::config::{Service, ServicesFile, Step, StepAction};
use super::container::{ContainerSpec, container_body};
use super::output::{Printer, SummaryService};
use super::plan::{StepReport, start_order};
use crate::build::BuildRequest;
use crate::report::Log;

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

/// Where service images are cached: the server and the run's namespaces, before the service name
/// is appended.
#[derive(Clone)]
pub struct CacheTarget {
    /// The cache server.
    pub client: crate::client::Client,
    /// `--namespace`, else the branch.
    pub namespace: Namespace,
    /// `--fallback` namespaces, in order.
    pub fallbacks: Vec<Namespace>,
}

/// `<namespace>/<service>`: each service has its own entries, so two services built from the same
/// Dockerfile and args do not overwrite each other's entry.
pub fn service_namespace(base: &Namespace, service: &str) -> anyhow::Result<Namespace> {
    Namespace::sanitize(&format!("{base}/{service}")).ok_or_else(|| {
        anyhow!("cannot make a cache namespace from `{base}` and service `{service}`; pass another --namespace")
    })
}

/// One run's view of the engine.
pub struct Engine {
    /// The bollard client (honours `DOCKER_HOST`).
    docker: Docker,
    /// The same engine, as the cache build and restore code takes it.
    cache_engine: crate::engine::Engine,
    /// Where service images are restored from and pushed to.
    cache: CacheTarget,
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
        cache: CacheTarget,
    ) -> anyhow::Result<Engine> {
        let cache_engine = crate::engine::Engine::connect().await?;
        let docker = cache_engine.docker.clone();
        let project = match &services.name {
            Some(name) if !slug(name).is_empty() => slug(name),
            _ => project_name(&services.dir),
        };
        Ok(Engine {
            docker,
            cache_engine,
            cache,
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

    /// The parsed services file.
    pub fn services(&self) -> &ServicesFile {
        &self.services
    }

    fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .services
            .get(name)
            .ok_or_else(|| anyhow!("unknown service `{name}`"))
    }

    /// Builds every service in `needed` that has `build:` through the layer cache, tagged
    /// `layercache-steps/<project>-<service>:latest`, at most `jobs` at once; services whose
    /// Dockerfiles start with the same two instructions build one after the other (see
    /// [`crate::build::shared_start`]). `no_cache` builds without restoring or reusing layers (and
    /// still pushes); a service's `cached: false` also skips the push. Returns one row per built
    /// service, in name order.
    pub async fn build_services(
        &self,
        needed: &[String],
        jobs: usize,
        no_cache: bool,
    ) -> anyhow::Result<Vec<SummaryService>> {
        let mut builds = Vec::new();
        for (slot, (name, svc)) in self
            .services
            .services
            .iter()
            .filter(|(n, s)| s.build.is_some() && needed.contains(n))
            .enumerate()
        {
            let req = self.service_request(name, svc, no_cache)?;
            builds.push((name.as_str(), slot, req));
        }
        let starts: Vec<Option<Digest>> = builds
            .iter()
            .map(|(_, _, req)| crate::build::shared_start(req))
            .collect();
        let groups = serial_groups(&starts);
        let builds = &builds;
        let runs = groups.into_iter().map(|group| async move {
            let mut rows = Vec::new();
            for (n, &i) in group.iter().enumerate() {
                let (name, slot, req) = &builds[i];
                if n > 0 {
                    let first = builds[group[0]].0;
                    self.printer.line(
                        &format!("build {name}"),
                        *slot,
                        &format!("built after `{first}`: same first instructions, so it reuses those layers"),
                    );
                }
                rows.push(self.build_one(name, *slot, req).await);
            }
            rows
        });
        let results: Vec<Vec<anyhow::Result<SummaryService>>> = futures::stream::iter(runs)
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for r in results.into_iter().flatten() {
            match r {
                Ok(row) => rows.push(row),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// The cache build of service `name`: its own namespace `<namespace>/<service>`, the fallbacks
    /// likewise.
    fn service_request(
        &self,
        name: &str,
        svc: &Service,
        no_cache: bool,
    ) -> anyhow::Result<BuildRequest> {
        let build = svc
            .build
            .as_ref()
            .ok_or_else(|| anyhow!("service `{name}` has no `build`"))?;
        let fallbacks = self
            .cache
            .fallbacks
            .iter()
            .map(|f| service_namespace(f, name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(BuildRequest {
            context: build.context.clone(),
            dockerfile: build.context.join(&build.dockerfile),
            build_args: build.args.clone(),
            target: build.target.clone(),
            tags: vec![built_tag(&self.project, name)],
            namespace: service_namespace(&self.cache.namespace, name)?,
            fallbacks,
            pull: false,
            no_cache: no_cache || !svc.cached,
            no_push: !svc.cached,
            builder: crate::detect::Builder::Auto,
        })
    }

    async fn build_one(
        &self,
        name: &str,
        slot: usize,
        req: &BuildRequest,
    ) -> anyhow::Result<SummaryService> {
        let prefix = format!("build {name}");
        let tag = built_tag(&self.project, name);
        self.printer.line(
            &prefix,
            slot,
            &format!(
                "building {tag} from {} through the cache (namespace {})",
                req.context.display(),
                req.namespace
            ),
        );
        let printer = self.printer;
        let log_prefix = prefix.clone();
        let log = Log::to(move |line| printer.line(&log_prefix, slot, line));
        let summary =
            crate::build::build_through_cache(&self.cache_engine, &self.cache.client, req, &log)
                .await
                .with_context(|| {
                    format!(
                        "building service `{name}` failed; fix its Dockerfile `{}`",
                        req.dockerfile.display()
                    )
                })?;
        let row = SummaryService::new(name, &tag, req, &summary);
        self.printer.line(&prefix, slot, &row.describe());
        Ok(row)
    }

    /// Makes sure every `image:` service in `needed` exists locally, pulling what is missing,
    /// so a typo fails before any step runs.
    pub async fn ensure_images(&self, needed: &[String]) -> anyhow::Result<()> {
        for service in needed {
            let service = service.as_str();
            if self.service(service)?.build.is_some() {
                continue;
            }
            let image = self.image_for(service)?;
            if self.docker.inspect_image(&image).await.is_ok() {
                continue;
            }
            self.printer.line(
                "pull",
                0,
                &format!("pulling {image} for service `{service}`"),
            );
            let mut options = CreateImageOptionsBuilder::default().from_image(&image);
            if let Some(p) = &self.service(service)?.platform {
                options = options.platform(p);
            }
            let options = options.build();
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

        let volume_names = self.create_volumes(step, env_name).await?;
        let mut started: HashMap<String, String> = HashMap::new();
        for dep in start_order(&self.services.services, &step.service) {
            self.wait_for_dependencies(step, &dep, &started, slot)
                .await?;
            let id = self
                .create_container(step, &dep, None, env_name, &volume_names)
                .await?;
            self.docker
                .start_container(&id, None)
                .await
                .with_context(|| {
                    format!("failed to start service `{dep}` for step `{}`", step.name)
                })?;
            started.insert(dep, id);
        }
        self.wait_for_dependencies(step, &step.service, &started, slot)
            .await?;

        let id = self
            .create_container(step, &step.service, command, env_name, &volume_names)
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

    /// Creates a container of `service` on `network`: its aliases are the service name, its
    /// `links` aliases and its network aliases; `command` overrides the service's command (step
    /// containers only).
    async fn create_container(
        &self,
        step: &Step,
        service: &str,
        command: Option<&super::config::Command>,
        network: &str,
        volume_names: &HashMap<String, String>,
    ) -> anyhow::Result<String> {
        let svc = self.service(service)?;
        let image = self.image_for(service)?;
        let body = container_body(
            svc,
            ContainerSpec {
                service,
                image: image.clone(),
                command,
                ci_env: vec![
                    format!("CI_COMMIT_ID={}", self.ci.commit_id),
                    format!("CI_BRANCH={}", self.ci.branch),
                    format!("CI_STEP_NAME={}", step.name),
                ],
                network,
                labels: self.labels(network),
                volume_names,
            },
        );
        let name = format!("{network}-{}", slug(service));
        let mut options = CreateContainerOptionsBuilder::default().name(&name);
        if let Some(p) = &svc.platform {
            options = options.platform(p);
        }
        let options = options.build();
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
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        if let Ok(list) = self.docker.list_volumes(Some(options)).await {
            for v in list.volumes.unwrap_or_default() {
                let _ = self
                    .docker
                    .remove_volume(&v.name, Some(RemoveVolumeOptionsBuilder::default().build()))
                    .await;
            }
        }
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
        // Volumes last: a volume is in use until its container is gone.
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .context("failed to list this run's volumes for cleanup")?;
        for v in volumes.volumes.unwrap_or_default() {
            match self
                .docker
                .remove_volume(&v.name, Some(RemoveVolumeOptionsBuilder::default().build()))
                .await
            {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => failures.push(format!("volume {}: {e}", v.name)),
            }
        }
        if !failures.is_empty() {
            bail!(
                "could not remove: {}; remove them with `docker rm -f` / `docker network rm` / `docker volume rm` (label {RUN_LABEL}={})",
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

/// Indexes of builds grouped so that builds with the same [`crate::build::shared_start`] are in one
/// group (built in order); `None` builds alone. Groups in order of their first member.
pub fn serial_groups(starts: &[Option<Digest>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<Digest>, Vec<usize>)> = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(s, _)| start.is_some() && s == start)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((*start, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
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

/// Lower-case runs of `[a-z0-9]` joined by single `-`: valid as an image name component, a
/// container, network and volume name, whatever the input (`ctx-_8_x` → `ctx-8-x`; the engine
/// refuses `-_` inside an image name with "invalid reference format").
pub fn slug(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_tags_are_valid_names() {
        assert_eq!(slug("Test A/1"), "test-a-1");
        assert_eq!(
            built_tag("jet-sample", "db"),
            "layercache-steps/jet-sample-db:latest"
        );
        assert_eq!(project_name(Path::new("/x/My Project")), "my-project");
        assert_eq!(project_name(Path::new("/")), "project");
        // Regression (issue 13): `-_` kept by the old slug made "invalid reference format".
        assert_eq!(project_name(Path::new("/tmp/ctx-_8_x")), "ctx-8-x");
        assert_eq!(slug("a__b..c-_-d"), "a-b-c-d");
        let reference = regex::Regex::new(
            r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        )
        .unwrap();
        for dir in ["ctx-_8_x", "A_B", "-x-", "._.", "Ünï cødé", "x--y__z"] {
            let tag = built_tag(&project_name(Path::new(dir)), "web_1");
            assert!(reference.is_match(&tag), "{dir}: {tag}");
        }
    }

    #[test]
    fn builds_sharing_their_start_are_serial_others_alone() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let starts = [Some(a), None, Some(b), Some(a), None];
        assert_eq!(
            serial_groups(&starts),
            vec![vec![0, 3], vec![1], vec![2], vec![4]]
        );
        assert!(serial_groups(&[]).is_empty());
    }

    #[test]
    fn service_namespaces_append_the_service_name() {
        let base: Namespace = "acme/main".parse().unwrap();
        assert_eq!(
            service_namespace(&base, "app").unwrap().as_str(),
            "acme/main/app"
        );
        // Characters a namespace refuses become `-`, as for branches.
        assert_eq!(
            service_namespace(&base, "my app").unwrap().as_str(),
            "acme/main/my-app"
        );
    }
}
