//! Pure scheduling logic, no I/O: which steps run on this branch, in which service start order, and
//! the executor that walks the step tree (serial groups in order and stopping at the first failure,
//! parallel groups at once, every step bounded by `--jobs`).
//!
//! The executor is generic over the function that runs one step, so its timing rules are unit-tested
//! with a fake step runner under paused tokio time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::{GroupKind, Service, Step, StepNode};

/// Finds one dependency cycle, returned as `[a, b, …, a]`; `None` when the graph is acyclic.
/// Dependencies naming no service are ignored (they are reported separately).
pub fn find_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        services: &BTreeMap<String, Service>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        stack.push(name.to_string());
        for dep in services
            .get(name)
            .map(|s| s.depends_on.as_slice())
            .unwrap_or_default()
        {
            if services.contains_key(dep)
                && let Some(c) = visit(dep, services, marks, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for name in services.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(name, services, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// The services to start before `service`'s own container, dependencies first (a post-order walk,
/// so every service comes after everything it depends on). Excludes `service` itself. Assumes the
/// graph is acyclic, which [`super::config`] guarantees; a cycle would only be cut, not loop.
pub fn start_order(services: &BTreeMap<String, Service>, service: &str) -> Vec<String> {
    fn visit(
        name: &str,
        services: &BTreeMap<String, Service>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        for dep in services
            .get(name)
            .map(|s| s.depends_on.as_slice())
            .unwrap_or_default()
        {
            visit(dep, services, seen, out);
        }
        out.push(name.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    visit(service, services, &mut seen, &mut out);
    out.pop(); // `service` itself comes last in post-order.
    out
}

/// Why a step did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The step's own `tag` does not match the branch.
    Tag {
        /// The regex as written.
        pattern: String,
    },
    /// An enclosing group's `tag` does not match the branch.
    GroupTag {
        /// The regex as written.
        pattern: String,
    },
    /// An earlier step of an enclosing serial group failed.
    EarlierFailure,
    /// The run was interrupted (Ctrl-C) before this step finished.
    Interrupted,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Tag { pattern } => write!(f, "tag `{pattern}` does not match the branch"),
            SkipReason::GroupTag { pattern } => {
                write!(f, "group tag `{pattern}` does not match the branch")
            }
            SkipReason::EarlierFailure => f.write_str("an earlier step failed"),
            SkipReason::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// The step tree for one branch: tags already evaluated, leaves numbered in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanNode {
    /// A leaf step.
    Step {
        /// Position in file order: the index into the results.
        index: usize,
        /// The step.
        step: Step,
        /// Set when a tag excludes the step on this branch.
        skip: Option<SkipReason>,
    },
    /// A group.
    Group {
        /// Serial or parallel.
        kind: GroupKind,
        /// The children.
        children: Vec<PlanNode>,
    },
}

/// Builds the plan for `branch`: the top level is a serial group, as in Codeship's steps file.
pub fn build_plan(nodes: &[StepNode], branch: &str) -> PlanNode {
    fn walk(
        node: &StepNode,
        branch: &str,
        inherited: Option<&SkipReason>,
        next: &mut usize,
    ) -> PlanNode {
        match node {
            StepNode::Step(step) => {
                let index = *next;
                *next += 1;
                let own =
                    step.tag
                        .as_ref()
                        .filter(|t| !t.matches(branch))
                        .map(|t| SkipReason::Tag {
                            pattern: t.0.as_str().to_string(),
                        });
                PlanNode::Step {
                    index,
                    step: step.clone(),
                    skip: inherited.cloned().or(own),
                }
            }
            StepNode::Group(group) => {
                let own = group.tag.as_ref().filter(|t| !t.matches(branch)).map(|t| {
                    SkipReason::GroupTag {
                        pattern: t.0.as_str().to_string(),
                    }
                });
                let skip = inherited.cloned().or(own);
                PlanNode::Group {
                    kind: group.kind,
                    children: group
                        .steps
                        .iter()
                        .map(|c| walk(c, branch, skip.as_ref(), next))
                        .collect(),
                }
            }
        }
    }
    let mut next = 0;
    PlanNode::Group {
        kind: GroupKind::Serial,
        children: nodes
            .iter()
            .map(|n| walk(n, branch, None, &mut next))
            .collect(),
    }
}

/// The leaf steps in file order (index order).
pub fn leaves(plan: &PlanNode) -> Vec<&Step> {
    fn walk<'a>(node: &'a PlanNode, out: &mut Vec<&'a Step>) {
        match node {
            PlanNode::Step { step, .. } => out.push(step),
            PlanNode::Group { children, .. } => children.iter().for_each(|c| walk(c, out)),
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// The leaf steps that will run on this branch (no tag skip), in file order.
pub fn runnable(plan: &PlanNode) -> Vec<&Step> {
    fn walk<'a>(node: &'a PlanNode, out: &mut Vec<&'a Step>) {
        match node {
            PlanNode::Step {
                step, skip: None, ..
            } => out.push(step),
            PlanNode::Step { .. } => {}
            PlanNode::Group { children, .. } => children.iter().for_each(|c| walk(c, out)),
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// The services the runnable steps need, each once, in first-use order: every step's service
/// after its dependencies. Services nobody needs (a `profiles:` service no step uses, say) are
/// neither built nor pulled.
pub fn needed_services(plan: &PlanNode, services: &BTreeMap<String, Service>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for step in runnable(plan) {
        let mut all = start_order(services, &step.service);
        all.push(step.service.clone());
        for s in all {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// How many steps may run at once: `--jobs` when given, else no limit, so a parallel group runs
/// all its steps at once whatever the number of CPUs (as Jet did).
pub fn step_jobs(flag: Option<usize>) -> usize {
    flag.unwrap_or(Semaphore::MAX_PERMITS).max(1)
}

/// What the step runner reports about one step that ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Exit code 0 (or the push succeeded).
    pub passed: bool,
    /// The container's exit code, when a container ran to the end.
    pub exit_code: Option<i64>,
    /// Why the step could not run or failed outside the command (engine error, push error).
    pub error: Option<String>,
    /// The last lines of output, kept for `--json`.
    pub log_tail: Vec<String>,
}

/// Final status of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Ran and passed.
    Passed,
    /// Ran and failed.
    Failed,
    /// Did not run, and why.
    Skipped(SkipReason),
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The step's name.
    pub name: String,
    /// Passed, failed or skipped.
    pub status: Status,
    /// Wall-clock start, for people and other tools.
    pub started_at: Option<SystemTime>,
    /// Milliseconds from the start of the run to the step's start: overlap of parallel steps is
    /// visible without clock arithmetic.
    pub start_offset_ms: Option<u64>,
    /// Milliseconds from the start of the run to the step's end.
    pub end_offset_ms: Option<u64>,
    /// What the runner reported (empty for skipped steps).
    pub report: StepReport,
}

impl StepResult {
    /// Run time in milliseconds, zero when skipped.
    pub fn duration_ms(&self) -> u64 {
        match (self.start_offset_ms, self.end_offset_ms) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            _ => 0,
        }
    }
}

/// The boxed future a step runner returns.
pub type StepFuture = Pin<Box<dyn Future<Output = StepReport> + Send>>;

/// Shared state of one execution.
struct Exec<F> {
    run_step: F,
    permits: Semaphore,
    origin: Instant,
    results: Mutex<Vec<Option<StepResult>>>,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// One row per leaf step, in file order.
    pub results: Vec<StepResult>,
    /// `cancel` fired before the plan finished; unfinished steps are `Skipped(Interrupted)`.
    pub interrupted: bool,
}

/// Runs `plan`: serial groups in order stopping at the first failure, parallel groups at once,
/// at most `jobs` steps at the same time. Leaves that never ran (tags, earlier failure) are
/// `Skipped`. When `cancel` completes first (Ctrl-C), the running step futures are dropped and the
/// caller is expected to clean up the engine side.
pub async fn execute<F>(
    plan: &PlanNode,
    jobs: usize,
    run_step: F,
    cancel: impl Future<Output = ()>,
) -> Outcome
where
    F: Fn(&Step) -> StepFuture + Send + Sync,
{
    let steps = leaves(plan);
    let exec = Arc::new(Exec {
        run_step,
        permits: Semaphore::new(jobs.max(1)),
        origin: Instant::now(),
        results: Mutex::new(vec![None; steps.len()]),
    });
    let interrupted = tokio::select! {
        _ = run_node(&exec, plan) => false,
        () = cancel => true,
    };
    let partial = exec.results.lock().map(|r| r.clone()).unwrap_or_default();
    let results = steps
        .into_iter()
        .zip(partial.into_iter().chain(std::iter::repeat(None)))
        .map(|(step, r)| r.unwrap_or_else(|| skipped(step, SkipReason::Interrupted)))
        .collect();
    Outcome {
        results,
        interrupted,
    }
}

fn skipped(step: &Step, reason: SkipReason) -> StepResult {
    StepResult {
        name: step.name.clone(),
        status: Status::Skipped(reason),
        started_at: None,
        start_offset_ms: None,
        end_offset_ms: None,
        report: StepReport::default(),
    }
}

fn record<F>(exec: &Exec<F>, index: usize, result: StepResult) {
    // A poisoned lock means a step runner panicked; the summary is best effort then.
    if let Ok(mut r) = exec.results.lock()
        && let Some(slot) = r.get_mut(index)
    {
        *slot = Some(result);
    }
}

/// Marks every leaf under `node` skipped for `reason`.
fn skip_all<F>(exec: &Exec<F>, node: &PlanNode, reason: &SkipReason) {
    match node {
        PlanNode::Step { index, step, skip } => {
            let reason = skip.clone().unwrap_or_else(|| reason.clone());
            record(exec, *index, skipped(step, reason));
        }
        PlanNode::Group { children, .. } => children.iter().for_each(|c| skip_all(exec, c, reason)),
    }
}

/// Runs one node; returns whether it passed (skipped steps count as passed: they do not fail the
/// run nor stop a serial chain).
fn run_node<'a, F>(
    exec: &'a Arc<Exec<F>>,
    node: &'a PlanNode,
) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>
where
    F: Fn(&Step) -> StepFuture + Send + Sync,
{
    Box::pin(async move {
        match node {
            PlanNode::Step {
                index,
                step,
                skip: Some(reason),
            } => {
                record(exec, *index, skipped(step, reason.clone()));
                true
            }
            PlanNode::Step {
                index,
                step,
                skip: None,
            } => {
                // The semaphore is never closed, so acquire only fails if it were; run anyway then.
                let _permit = exec.permits.acquire().await.ok();
                let started_at = SystemTime::now();
                let start = exec.origin.elapsed();
                let report = (exec.run_step)(step).await;
                let end = exec.origin.elapsed();
                let passed = report.passed;
                record(
                    exec,
                    *index,
                    StepResult {
                        name: step.name.clone(),
                        status: if passed {
                            Status::Passed
                        } else {
                            Status::Failed
                        },
                        started_at: Some(started_at),
                        start_offset_ms: Some(start.as_millis() as u64),
                        end_offset_ms: Some(end.as_millis() as u64),
                        report,
                    },
                );
                passed
            }
            PlanNode::Group {
                kind: GroupKind::Serial,
                children,
            } => {
                let mut ok = true;
                for child in children {
                    if ok {
                        ok = run_node(exec, child).await;
                    } else {
                        skip_all(exec, child, &SkipReason::EarlierFailure);
                    }
                }
                ok
            }
            PlanNode::Group {
                kind: GroupKind::Parallel,
                children,
            } => {
                let all = children.iter().map(|c| run_node(exec, c));
                futures::future::join_all(all)
                    .await
                    .into_iter()
                    .all(|ok| ok)
            }
        }
    })
}

/// Whether the run passed: every step that ran passed.
pub fn all_passed(results: &[StepResult]) -> bool {
    results.iter().all(|r| !matches!(r.status, Status::Failed))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::steps::compose::parse_services;
    use crate::steps::config::parse_steps;

    const SERVICES: &str = "\
db:
  image: x
cache:
  image: x
  depends_on: [db]
app:
  image: x
  links: [cache, db]
lint:
  image: x
";

    fn services() -> BTreeMap<String, Service> {
        parse_services(Path::new("s.yml"), Path::new("/p"), SERVICES)
            .expect("fixture")
            .services
    }

    fn plan(steps: &str, branch: &str) -> PlanNode {
        let svc = parse_services(Path::new("s.yml"), Path::new("/p"), SERVICES).expect("fixture");
        let nodes = parse_steps(Path::new("steps.yml"), steps, &svc).expect("steps");
        build_plan(&nodes, branch)
    }

    /// A fake runner: the step's command is `sleep:<ms>` or `fail:<ms>`.
    fn fake(step: &Step) -> StepFuture {
        let cmd = match &step.action {
            crate::steps::config::StepAction::Run { command: Some(c) } => c.argv().join(" "),
            _ => String::new(),
        };
        Box::pin(async move {
            let (kind, ms) = cmd
                .rsplit(' ')
                .next()
                .unwrap_or("")
                .split_once(':')
                .unwrap_or(("sleep", "0"));
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            StepReport {
                passed: kind != "fail",
                ..StepReport::default()
            }
        })
    }

    const TREE: &str = "\
- type: parallel
  steps:
  - {name: a, service: app, command: 'sleep:1000'}
  - {name: b, service: app, command: 'sleep:3000'}
  - {name: c, service: app, command: 'sleep:1000'}
- {name: deploy, service: app, command: 'sleep:10', tag: ^main$}
";

    #[test]
    fn start_order_puts_dependencies_first() {
        let s = services();
        assert_eq!(start_order(&s, "app"), vec!["db", "cache"]);
        assert_eq!(start_order(&s, "cache"), vec!["db"]);
        assert!(start_order(&s, "lint").is_empty());
    }

    #[test]
    fn find_cycle_reports_the_loop() {
        let mut s = services();
        assert_eq!(find_cycle(&s), None);
        if let Some(db) = s.get_mut("db") {
            db.depends_on.push("app".into());
        }
        let cycle = find_cycle(&s).expect("cycle");
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
    }

    #[test]
    fn tag_mismatch_skips_step_and_group() {
        let p = plan(TREE, "feature/x");
        assert_eq!(runnable(&p).len(), 3);
        let PlanNode::Group { children, .. } = &p else {
            panic!("group")
        };
        assert!(matches!(
            &children[1],
            PlanNode::Step {
                skip: Some(SkipReason::Tag { .. }),
                ..
            }
        ));
        let p = plan(TREE, "main");
        let PlanNode::Group { children, .. } = &p else {
            panic!("group")
        };
        assert!(matches!(
            &children[1],
            PlanNode::Step {
                skip: None,
                index: 3,
                ..
            }
        ));

        let grouped = "- type: serial\n  tag: ^v\\d+\n  steps:\n  - {name: a, service: app}\n";
        let p = plan(grouped, "main");
        assert_eq!(leaves(&p).len(), 1);
        let PlanNode::Group { children, .. } = &p else {
            panic!("group")
        };
        let PlanNode::Group { children, .. } = &children[0] else {
            panic!("inner group")
        };
        assert!(matches!(
            &children[0],
            PlanNode::Step {
                skip: Some(SkipReason::GroupTag { .. }),
                ..
            }
        ));
        let p = plan(grouped, "v12");
        assert!(matches!(&p, PlanNode::Group { children, .. }
            if matches!(&children[0], PlanNode::Group { children, .. }
                if matches!(&children[0], PlanNode::Step { skip: None, .. }))));
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_steps_overlap_then_serial_follows() {
        let p = plan(TREE, "main");
        let results = execute(&p, 8, fake, std::future::pending()).await.results;
        let by = |n: &str| results.iter().find(|r| r.name == n).cloned().expect("row");
        for n in ["a", "b", "c"] {
            assert_eq!(by(n).start_offset_ms, Some(0), "{n} starts at once");
            assert_eq!(by(n).status, Status::Passed);
        }
        assert_eq!(by("b").duration_ms(), 3000);
        assert_eq!(
            by("deploy").start_offset_ms,
            Some(3000),
            "deploy waits for the whole group"
        );
        assert!(all_passed(&results));
    }

    /// Issue 13: without `--jobs`, a parallel group of three ran two steps, then one, on a
    /// two-core machine; the default is now every step at once.
    #[tokio::test(start_paused = true)]
    async fn without_jobs_a_parallel_group_runs_all_its_steps_at_once() {
        let p = plan(TREE, "main");
        let results = execute(&p, step_jobs(None), fake, std::future::pending())
            .await
            .results;
        let starts: Vec<_> = results.iter().map(|r| r.start_offset_ms).collect();
        assert_eq!(starts, vec![Some(0), Some(0), Some(0), Some(3000)]);
        assert_eq!(step_jobs(Some(2)), 2);
        assert_eq!(step_jobs(Some(0)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_bound_concurrency() {
        let p = plan(TREE, "main");
        let results = execute(&p, 1, fake, std::future::pending()).await.results;
        let starts: Vec<_> = results.iter().map(|r| r.start_offset_ms).collect();
        assert_eq!(starts, vec![Some(0), Some(1000), Some(4000), Some(5000)]);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_stops_the_serial_chain_but_not_siblings() {
        let tree = "\
- type: parallel
  steps:
  - {name: a, service: app, command: 'fail:100'}
  - {name: b, service: app, command: 'sleep:2000'}
- {name: deploy, service: app, command: 'sleep:10'}
- type: serial
  steps:
  - {name: later, service: app, command: 'sleep:10'}
";
        let results = execute(&plan(tree, "main"), 4, fake, std::future::pending())
            .await
            .results;
        let status: Vec<_> = results.iter().map(|r| r.status.clone()).collect();
        assert_eq!(
            status,
            vec![
                Status::Failed,
                Status::Passed,
                Status::Skipped(SkipReason::EarlierFailure),
                Status::Skipped(SkipReason::EarlierFailure),
            ]
        );
        assert!(!all_passed(&results));
    }

    #[tokio::test(start_paused = true)]
    async fn tag_skipped_steps_do_not_fail_the_run() {
        let results = execute(&plan(TREE, "dev"), 4, fake, std::future::pending())
            .await
            .results;
        assert!(matches!(
            results[3].status,
            Status::Skipped(SkipReason::Tag { .. })
        ));
        assert!(all_passed(&results));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_marks_unfinished_steps_interrupted() {
        let p = plan(TREE, "main");
        let cancel = tokio::time::sleep(Duration::from_millis(1500));
        let out = execute(&p, 8, fake, cancel).await;
        assert!(out.interrupted);
        let status: Vec<_> = out.results.iter().map(|r| r.status.clone()).collect();
        let int = Status::Skipped(SkipReason::Interrupted);
        assert_eq!(
            status,
            vec![Status::Passed, int.clone(), Status::Passed, int]
        );
    }
}
