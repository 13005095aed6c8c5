//! What `layercache steps --check` prints: every notice of the services file, the services, and
//! the plan for the branch (which steps run in which service environment, in which groups, which
//! are skipped by tag). Pure formatting, no engine.

use std::fmt::Write;
use std::path::Path;

use super::compose::{Condition, Notice, ServicesFile};
use super::config::{GroupKind, StepAction};
use super::plan::{PlanNode, start_order};

/// `file:line:column: notice: path ignored: why`, one line per notice.
pub fn format_notices(file: &Path, notices: &[Notice]) -> Vec<String> {
    notices
        .iter()
        .map(|n| {
            let at = if n.line > 0 {
                format!("{}:{}:{}", file.display(), n.line, n.column)
            } else {
                file.display().to_string()
            };
            format!("{at}: notice: `{}` {}", n.path, n.message)
        })
        .collect()
}

/// The services and the plan, as indented text.
pub fn format_plan(services: &ServicesFile, plan: &PlanNode, branch: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "services ({}):", services.path.display());
    let width = services.services.keys().map(String::len).max().unwrap_or(0);
    for (name, svc) in &services.services {
        let source = match (&svc.build, &svc.image) {
            (Some(b), _) => {
                let mut s = format!("build {} ({}", b.context.display(), b.dockerfile);
                if let Some(t) = &b.target {
                    let _ = write!(s, ", target {t}");
                }
                s.push(')');
                s
            }
            (None, Some(image)) => format!("image {image}"),
            (None, None) => String::new(),
        };
        let deps: Vec<String> = svc
            .depends_on
            .iter()
            .map(|d| match svc.conditions.get(d) {
                Some(Condition::Healthy) => format!("{d} (healthy)"),
                Some(Condition::CompletedSuccessfully) => format!("{d} (completed)"),
                _ => d.clone(),
            })
            .collect();
        let mut line = format!("  {name:<width$}  {source}");
        if !deps.is_empty() {
            let _ = write!(line, "; after {}", deps.join(", "));
        }
        if svc.healthcheck.is_some() {
            line.push_str("; healthcheck");
        }
        if !svc.profiles.is_empty() {
            let _ = write!(line, "; profiles {}", svc.profiles.join(", "));
        }
        let _ = writeln!(out, "{line}");
    }
    let branch = if branch.is_empty() {
        "(none: not a git checkout and no --branch)".to_string()
    } else {
        format!("`{branch}`")
    };
    let _ = writeln!(
        out,
        "plan for branch {branch} (a parallel group runs all its steps at once; --jobs N caps it):"
    );
    fn walk(node: &PlanNode, services: &ServicesFile, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        match node {
            PlanNode::Group { kind, children } => {
                let kind = match kind {
                    GroupKind::Serial => "serial",
                    GroupKind::Parallel => "parallel",
                };
                let _ = writeln!(out, "{pad}{kind}");
                for c in children {
                    walk(c, services, depth + 1, out);
                }
            }
            PlanNode::Step { step, skip, .. } => {
                let what = match &step.action {
                    StepAction::Run { .. } => {
                        let deps = start_order(&services.services, &step.service);
                        if deps.is_empty() {
                            format!("run in `{}`", step.service)
                        } else {
                            format!("run in `{}` with {}", step.service, deps.join(", "))
                        }
                    }
                    StepAction::Push { image_name, .. } => {
                        format!("push `{}` as {image_name}", step.service)
                    }
                };
                let skip = skip
                    .as_ref()
                    .map(|r| format!("  [skipped: {r}]"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{pad}{}: {what}{skip}", step.name);
            }
        }
    }
    walk(plan, services, 1, &mut out);
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::steps::compose::parse_services;
    use crate::steps::config::parse_steps;
    use crate::steps::plan::build_plan;

    #[test]
    fn plan_names_groups_services_dependencies_and_skips() {
        let svc = parse_services(
            Path::new("compose.yaml"),
            Path::new("/p"),
            "services:\n  db:\n    image: db\n    ports: ['5432:5432']\n    healthcheck:\n      test: 'true'\n  app:\n    build:\n      context: .\n      target: test\n    depends_on:\n      db:\n        condition: service_healthy\n",
        )
        .unwrap();
        let steps = parse_steps(
            Path::new("steps.yml"),
            "- type: parallel\n  steps:\n  - {name: a, service: app, command: x}\n  - {name: b, service: app}\n- {name: ship, service: app, type: push, image_name: reg/app, tag: ^main$}\n",
            &svc,
        )
        .unwrap();
        let text = format_plan(&svc, &build_plan(&steps, "dev"), "dev");
        assert!(
            text.contains("app  build /p (Dockerfile, target test); after db (healthy)"),
            "{text}"
        );
        assert!(
            text.contains("  serial\n    parallel\n      a: run in `app` with db"),
            "{text}"
        );
        assert!(
            text.contains(
                "ship: push `app` as reg/app  [skipped: tag `^main$` does not match the branch]"
            ),
            "{text}"
        );
        let notices = format_notices(Path::new("compose.yaml"), &svc.notices);
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].starts_with("compose.yaml:4:12: notice: `services.db.ports` ignored"),
            "{notices:?}"
        );
    }
}
