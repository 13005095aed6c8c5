//! `layercache steps`: the Jet workflow from the design talk. A compose services file and a
//! steps file of serial and parallel groups; every step runs in its own fresh environment.
//!
//! - [`compose`]: the services file, the compose specification as projects write it: raw serde
//!   types in `compose_raw`, the ignored keys and their reasons in `compose_ignored`, value
//!   conversions (volumes, sizes, durations, env files' rules) in `compose_values`.
//! - [`config`]: the steps file, and the errors of both files (every one with file, line, column).
//! - [`plan`]: pure logic: tag matching, service start order, the serial/parallel executor.
//! - `check`: what `--check` prints (notices, services, plan).
//! - [`exec`]: the engine side through bollard: builds, networks, volumes, containers (their
//!   create request in `container`), `depends_on` readiness, push with `docker login`
//!   credentials (`credentials`), cleanup.
//! - [`output`]: prefixed log lines, the summary table and `--json`.
//!
//! Order of a run: parse both files (nothing runs on an error; `--check` stops here) → build the
//! services the steps need through the layer cache (`<namespace>/<service>`; a down server only warns) → make sure the
//! other images exist → execute the plan (Ctrl-C stops it) → remove everything labelled with the
//! run id → print the summary. Exit code 0 only when every step that ran passed.

mod check;
pub mod compose;
mod compose_ignored;
mod compose_raw;
#[cfg(test)]
mod compose_tests;
mod compose_values;
pub mod config;
mod container;
mod credentials;
pub mod exec;
pub mod output;
pub mod plan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use self::exec::{CacheTarget, CiEnv, Engine};
use self::output::{Printer, Summary, SummaryService, SummaryStep};
use self::plan::{PlanNode, StepFuture};

/// Flags of `layercache steps`.
#[derive(Debug, Clone, clap::Args)]
pub struct StepsArgs {
    /// Branch or tag the steps' `tag` regexes are matched against (default: `CI_BRANCH`, else the
    /// current git branch of the project).
    #[arg(long, env = "CI_BRANCH")]
    pub branch: Option<String>,
    /// The services file (docker-compose syntax).
    #[arg(long, default_value = "layercache-services.yml")]
    pub services: PathBuf,
    /// The steps file.
    #[arg(long, default_value = "layercache-steps.yml")]
    pub steps: PathBuf,
    /// How many steps may run at the same time (default: no limit, a parallel group runs all its
    /// steps at once) and how many services build at once (default: number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Parse both files, print every notice and the plan, and exit (non-zero on an error); no
    /// engine is touched.
    #[arg(long)]
    pub check: bool,
    /// Commit id given to steps as `CI_COMMIT_ID` (default: `git rev-parse HEAD` of the project).
    #[arg(long, env = "CI_COMMIT_ID")]
    pub ci_commit_id: Option<String>,
    /// Print the summary as JSON on stdout (logs go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Build service images without reusing any cached layer (no restore; the results are still
    /// pushed).
    #[arg(long)]
    pub no_cache_build: bool,
    /// Where service images are cached: `--namespace` (default: the branch; each service uses
    /// `<namespace>/<service>`), `--fallback`, `--server`, `--token`.
    #[command(flatten)]
    pub cache: crate::cli::CacheOpts,
}

/// Runs `layercache steps`. Configuration errors are returned before anything starts; once the
/// engine is involved, containers and networks of this run are removed whatever happens.
pub async fn run(args: StepsArgs) -> anyhow::Result<ExitCode> {
    let services = Arc::new(config::load_services(&args.services)?);
    let nodes = config::load_steps(&args.steps, &services)?;
    let branch = match &args.branch {
        Some(b) => b.clone(),
        None => git(&services.dir, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_default(),
    };
    // Notices go to stderr: with --json, stdout is only the summary document.
    for line in check::format_notices(&args.services, &services.notices) {
        eprintln!("{line}");
    }
    if args.check {
        let plan = plan::build_plan(&nodes, &branch);
        println!("{}", check::format_plan(&services, &plan, &branch));
        return Ok(ExitCode::SUCCESS);
    }
    let commit_id = match &args.ci_commit_id {
        Some(c) => c.clone(),
        None => git(&services.dir, &["rev-parse", "HEAD"]).unwrap_or_default(),
    };
    // Steps: every step of a parallel group at once unless capped (as Jet did). Builds: one per
    // CPU unless capped, they are CPU-bound.
    let step_jobs = plan::step_jobs(args.jobs);
    let build_jobs = args
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let cache = cache_target(&args.cache, &branch, &services.dir)?;
    let plan = plan::build_plan(&nodes, &branch);
    let printer = Printer::new(args.json);
    let run_id = uuid::Uuid::new_v4().to_string();
    let ci = CiEnv {
        commit_id,
        branch: branch.clone(),
    };
    let engine =
        Arc::new(Engine::connect(run_id.clone(), services.clone(), ci, printer, cache).await?);

    let outcome = run_with_engine(&engine, &plan, step_jobs, build_jobs, args.no_cache_build).await;
    // Cleanup runs whatever happened above: failure, error or Ctrl-C.
    let cleaned = engine.cleanup_twice().await;
    let (outcome, built) = outcome?;
    if let Err(e) = &cleaned {
        printer.line("cleanup", 0, &format!("{e:#}"));
    }

    let passed = plan::all_passed(&outcome.results) && !outcome.interrupted && cleaned.is_ok();
    let summary = Summary {
        run_id,
        branch,
        passed,
        interrupted: outcome.interrupted,
        services: built,
        steps: outcome.results.iter().map(SummaryStep::from).collect(),
    };
    printer.summary(&summary);
    Ok(match (outcome.interrupted, passed) {
        (true, _) => ExitCode::from(130),
        (false, true) => ExitCode::SUCCESS,
        (false, false) => ExitCode::FAILURE,
    })
}

/// The cache settings of a run: `--namespace`, else the branch the steps run for, else the
/// project's git branch (or `default`).
fn cache_target(
    opts: &crate::cli::CacheOpts,
    branch: &str,
    project_dir: &Path,
) -> anyhow::Result<CacheTarget> {
    let namespace = match &opts.namespace {
        Some(ns) => ns
            .parse::<layercache_shared::Namespace>()
            .context("bad --namespace / LAYERCACHE_NAMESPACE")?,
        None => layercache_shared::Namespace::sanitize(branch)
            .unwrap_or_else(|| crate::build::default_namespace(project_dir)),
    };
    let fallbacks =
        crate::build::parse_fallbacks(&namespace, &opts.fallbacks).context("bad --fallback")?;
    let client = opts.server.client()?;
    Ok(CacheTarget {
        client,
        namespace,
        fallbacks,
    })
}

/// Builds, checks images, executes; Ctrl-C or SIGTERM during any of it ends the run as
/// interrupted. Returns the outcome and the built services.
async fn run_with_engine(
    engine: &Arc<Engine>,
    plan: &PlanNode,
    step_jobs: usize,
    build_jobs: usize,
    no_cache: bool,
) -> anyhow::Result<(plan::Outcome, Vec<SummaryService>)> {
    let interrupted = interrupt_signal;
    let steps = plan::leaves(plan);
    let needed = plan::needed_services(plan, &engine.services().services);
    let prepare = async {
        let built = engine
            .build_services(&needed, build_jobs, no_cache)
            .await
            .context("building the services failed")?;
        engine.ensure_images(&needed).await?;
        anyhow::Ok(built)
    };
    let built = tokio::select! {
        r = prepare => r?,
        () = interrupted() => {
            anyhow::bail!("interrupted while building services; containers and networks were removed")
        }
    };
    let slots: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
    let run_step = |step: &config::Step| -> StepFuture {
        let slot = slots.iter().position(|n| n == &step.name).unwrap_or(0);
        Box::pin(engine.clone().run_step(step.clone(), slot))
    };
    Ok((
        plan::execute(plan, step_jobs, run_step, interrupted()).await,
        built,
    ))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what CI systems send when a build is cancelled).
/// A signal handler that cannot be installed never fires: the run goes on without it.
async fn interrupt_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Output of a git command in `dir`, trimmed; `None` when git is missing or fails (not a repo).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
