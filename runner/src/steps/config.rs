//! The steps file, and what both Jet-style files share.
//!
//! - `layercache-steps.yml`: a list of steps and `serial` / `parallel` groups, nested to any depth.
//! - The services file (compose syntax) is [`super::compose`]; its model is re-exported here.
//!
//! Every problem is reported as one [`ConfigError`] naming the file, line and column. Problems that
//! are only visible across the whole file (an unknown service, a `depends_on` cycle, a duplicate step
//! name) are found in a first pass and then located by a second pass that re-reads the file with a
//! thread-local [`Checks`] context: the `Deserialize` impl of the offending value fails, and
//! `serde-saphyr` attaches the position of that value to the error.

use layercache_shared::image_ref::ImageRef;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use super::compose::{Condition, Mount, Service, ServicesFile, load_services};

/// What went wrong while reading or validating a services or steps file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error(
        "failed to read `{}` ({error}); create it or point to it with --services / --steps",
        path.display()
    )]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`: one line says it all).
        error: std::io::Error,
    },
    /// The file is not valid YAML, or a value is wrong; `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file holding the problem.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong and what to do about it.
        message: String,
    },
    /// A problem the parser could not attach a position to (should be rare: an empty file).
    #[error("{}: {message}", path.display())]
    Unlocated {
        /// The file holding the problem.
        path: PathBuf,
        /// What is wrong and what to do about it.
        message: String,
    },
}

impl ConfigError {
    /// A YAML or value error at its position; `key_path` (`services.web.build.target`) is
    /// prefixed to the message when the error is about a value rather than the syntax.
    pub fn from_yaml(
        path: &Path,
        err: &serde_saphyr::Error,
        key_path: Option<&str>,
    ) -> ConfigError {
        let text = err.to_string();
        let text = text.strip_prefix("error: ").unwrap_or(&text);
        // The message reads "line L column C: what"; we print the position ourselves.
        let message = match (err.location(), text.find(": ")) {
            (Some(_), Some(at)) if text.starts_with("line ") => text[at + 2..].to_string(),
            _ => text.to_string(),
        };
        // Some messages end in " at line L, column C" instead.
        let message = match message.rfind(" at line ") {
            Some(at) if message[at..].contains(", column ") => message[..at].to_string(),
            _ => message,
        };
        let location = CHECKS
            .with(|c| c.borrow_mut().error_at.take())
            .or(err.location());
        let message = match key_path {
            Some(k) if !k.is_empty() && k != "." && !message.contains(k) => {
                format!("{k}: {message}")
            }
            _ => message,
        };
        match location {
            Some(loc) if loc.line() > 0 => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: loc.line() as usize,
                column: loc.column() as usize,
                message,
            },
            _ => ConfigError::Unlocated {
                path: path.to_path_buf(),
                message,
            },
        }
    }
}

/// A command as compose writes it: a string run through `sh -c`, or an exec-form list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a command: a string (run with `sh -c`) or a list of strings"
)]
pub enum Command {
    /// Run with `sh -c`, so pipes and `&&` work as in a shell.
    Shell(String),
    /// Exec form, passed to the engine as is.
    Exec(Vec<String>),
}

impl Command {
    /// The argv the container runs.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

/// A `tag:` regex, compiled at parse time so a bad pattern is reported before anything runs.
#[derive(Debug, Clone)]
pub struct TagPattern(pub Regex);

impl TagPattern {
    /// Whether the step runs on `branch` (unanchored, like Codeship: write `^main$` for exact).
    pub fn matches(&self, branch: &str) -> bool {
        self.0.is_match(branch)
    }
}

impl PartialEq for TagPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Run `command` (or the service's command) in a fresh container of the service.
    Run {
        /// The command; `None` uses the service's `command` or the image default.
        command: Option<Command>,
    },
    /// Tag the service image as `image_name` and push it.
    Push {
        /// Target repository, `[registry/]name[:tag]`, validated when the file is read.
        image_name: ImageRef,
        /// Registry URL from the steps file (informational: the host comes from `image_name`).
        registry: Option<String>,
    },
}

/// A leaf step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique name: log prefix, summary row, `CI_STEP_NAME`.
    pub name: String,
    /// Service the step runs in (or pushes).
    pub service: String,
    /// Run only when the branch matches.
    pub tag: Option<TagPattern>,
    /// Run a command or push an image.
    pub action: StepAction,
}

/// How a group runs its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// In order, stopping at the first failure.
    Serial,
    /// All at once (bounded by `--jobs`).
    Parallel,
}

/// A group of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Optional name, only for messages.
    pub name: Option<String>,
    /// Serial or parallel.
    pub kind: GroupKind,
    /// Skip the whole group unless the branch matches.
    pub tag: Option<TagPattern>,
    /// Children, at least one.
    pub steps: Vec<StepNode>,
}

/// A node of the steps tree.
#[derive(Debug, Clone, PartialEq)]
pub enum StepNode {
    /// A leaf.
    Step(Step),
    /// A serial or parallel group.
    Group(Group),
}

// ---------------------------------------------------------------------------------------------
// Cross-file checks, located by a second pass.

/// Checks a second parsing pass applies, so the failing value carries its line and column.
#[derive(Default)]
pub(super) struct Checks {
    /// Service names the steps file (or `depends_on`) may name; `None` in the first pass.
    pub known_services: Option<BTreeSet<String>>,
    /// In the services file: the `(owner, dependency)` edge to flag, with the message.
    pub bad_edge: Option<(String, String, String)>,
    /// The service whose value is being read (set by the services map visitor).
    pub current_service: Option<String>,
    /// Step names seen so far in this pass, for the duplicate check.
    pub seen_steps: Option<BTreeSet<String>>,
    /// Record ignored keys (first pass of the services file only).
    pub collect_notices: bool,
    /// Ignored keys recorded so far.
    pub notices: Vec<super::compose_raw::RawNotice>,
    /// Where the last error really is, when the deserializer would report the enclosing map.
    pub error_at: Option<serde_saphyr::Location>,
}

thread_local! {
    pub(super) static CHECKS: RefCell<Checks> = RefCell::new(Checks::default());
}

/// Installs `checks` for the duration of one parse; restores the empty context when dropped, so a
/// panic or early return cannot leak state into the next parse on this thread.
pub(super) struct ChecksGuard;

impl ChecksGuard {
    pub(super) fn install(checks: Checks) -> ChecksGuard {
        CHECKS.with(|c| *c.borrow_mut() = checks);
        ChecksGuard
    }
}

impl Drop for ChecksGuard {
    fn drop(&mut self) {
        CHECKS.with(|c| *c.borrow_mut() = Checks::default());
    }
}

/// Deserializes a string and checks it inside the visitor, so `serde-saphyr` attaches the
/// position of the scalar itself (an error raised after `deserialize` returns gets the position
/// of the enclosing map or list instead).
pub(super) fn checked_str<'de, D, T>(
    d: D,
    check: impl FnOnce(String) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(String) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v.to_string()).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

/// Deserializes a map as `R`, then checks it inside the map visitor, so the error carries the
/// position of the map (the step or service) rather than of the enclosing list.
fn checked_map<'de, D, R, T>(
    d: D,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct V<F, R>(F, std::marker::PhantomData<R>);
    impl<'de, R: Deserialize<'de>, T, F: FnOnce(R) -> Result<T, String>> Visitor<'de> for V<F, R> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.0)(raw).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(V(check, std::marker::PhantomData))
}

/// Fails a `depends_on`/`links`/`service:` reference the active [`Checks`] reject.
pub(super) fn check_service_ref(name: &str) -> Result<(), String> {
    CHECKS.with(|c| {
        let c = c.borrow();
        if let Some(known) = &c.known_services
            && !known.contains(name)
        {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(format!(
                "unknown service `{name}`; the services file defines: {}",
                list.join(", ")
            ));
        }
        if let (Some((owner, dep, msg)), Some(current)) = (&c.bad_edge, &c.current_service)
            && owner == current
            && dep == name
        {
            return Err(msg.clone());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Steps file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    service: Option<StepServiceRef>,
    command: Option<Command>,
    tag: Option<TagPattern>,
    #[serde(rename = "type")]
    kind: Option<String>,
    steps: Option<Vec<StepNode>>,
    image_name: Option<String>,
    registry: Option<String>,
}

/// A step's `service:`, checked against the services file in the (only) steps pass.
struct StepServiceRef(String);

impl<'de> Deserialize<'de> for StepServiceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |name| {
            check_service_ref(&name)?;
            Ok(StepServiceRef(name))
        })
    }
}

impl<'de> Deserialize<'de> for TagPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |pattern| {
            Regex::new(&pattern).map(TagPattern).map_err(|e| {
                // regex's syntax errors span several lines (pattern, caret, reason): keep the reason.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                format!("`tag` `{pattern}` is not a valid regex: {reason}; fix the pattern")
            })
        })
    }
}

impl<'de> Deserialize<'de> for StepNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, node_from_raw)
    }
}

fn node_from_raw(raw: RawNode) -> Result<StepNode, String> {
    let label = raw
        .name
        .as_deref()
        .map(|n| format!("`{n}`"))
        .unwrap_or_else(|| "this step".into());
    if let Some(steps) = raw.steps {
        let kind = match raw.kind.as_deref() {
            Some("serial") => GroupKind::Serial,
            Some("parallel") => GroupKind::Parallel,
            Some(other) => {
                return Err(format!(
                    "group {label} has `type: {other}`; a group with `steps` is `type: serial` or `type: parallel`"
                ));
            }
            None => {
                return Err(format!(
                    "group {label} needs `type: serial` or `type: parallel`"
                ));
            }
        };
        for (key, present) in [
            ("service", raw.service.is_some()),
            ("command", raw.command.is_some()),
            ("image_name", raw.image_name.is_some()),
            ("registry", raw.registry.is_some()),
        ] {
            if present {
                return Err(format!(
                    "group {label} has `{key}`; only steps inside the group take `{key}`"
                ));
            }
        }
        if steps.is_empty() {
            return Err(format!(
                "group {label} has no steps; add some or remove the group"
            ));
        }
        return Ok(StepNode::Group(Group {
            name: raw.name,
            kind,
            tag: raw.tag,
            steps,
        }));
    }
    let Some(name) = raw.name else {
        return Err("a step needs a `name` (used as log prefix and in the summary)".into());
    };
    if name.trim().is_empty() {
        return Err("a step's `name` is empty".into());
    }
    let Some(StepServiceRef(service)) = raw.service else {
        return Err(format!("step `{name}` needs a `service` to run in"));
    };
    let action = match raw.kind.as_deref() {
        None | Some("run") => {
            if raw.image_name.is_some() || raw.registry.is_some() {
                return Err(format!(
                    "step `{name}` has `image_name`/`registry` but is not `type: push`"
                ));
            }
            StepAction::Run {
                command: raw.command,
            }
        }
        Some("push") => {
            if raw.command.is_some() {
                return Err(format!("push step `{name}` takes no `command`"));
            }
            let Some(image_name) = raw.image_name else {
                return Err(format!("push step `{name}` needs `image_name`"));
            };
            let image_name: ImageRef = image_name
                .parse()
                .map_err(|e| format!("push step `{name}`: `image_name`: {e}"))?;
            StepAction::Push {
                image_name,
                registry: raw.registry,
            }
        }
        Some(k @ ("serial" | "parallel")) => {
            return Err(format!("`type: {k}` step `{name}` needs a `steps:` list"));
        }
        Some(other) => {
            return Err(format!(
                "step `{name}` has unknown `type: {other}`; use run, push, serial or parallel"
            ));
        }
    };
    let duplicate = CHECKS.with(|c| {
        let mut c = c.borrow_mut();
        let seen = c.seen_steps.get_or_insert_with(BTreeSet::new);
        !seen.insert(name.clone())
    });
    if duplicate {
        return Err(format!(
            "step name `{name}` is used twice; step names must be unique"
        ));
    }
    Ok(StepNode::Step(Step {
        name,
        service,
        tag: raw.tag,
        action,
    }))
}

/// Parses and validates a steps file read from `path` against the services it may name.
///
/// Errors: [`ConfigError::Read`] when the file cannot be read, otherwise a located
/// [`ConfigError::Invalid`] for YAML syntax, unknown keys, an unknown service, a bad `tag` regex,
/// a malformed step or group, or a duplicate step name.
pub fn load_steps(path: &Path, services: &ServicesFile) -> Result<Vec<StepNode>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_steps(path, &text, services)
}

/// Parses steps-file `text` (named `path` in errors).
pub fn parse_steps(
    path: &Path,
    text: &str,
    services: &ServicesFile,
) -> Result<Vec<StepNode>, ConfigError> {
    let checks = Checks {
        known_services: Some(services.services.keys().cloned().collect()),
        ..Checks::default()
    };
    let _guard = ChecksGuard::install(checks);
    let nodes: Option<Vec<StepNode>> =
        serde_saphyr::from_str_with_options(text, super::compose::yaml_options(None))
            .map_err(|e| ConfigError::from_yaml(path, &e, None))?;
    let nodes = nodes.unwrap_or_default();
    if nodes.is_empty() {
        return Err(ConfigError::Unlocated {
            path: path.to_path_buf(),
            message: "the steps file lists no steps; add at least one".into(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::compose::parse_services;

    const SERVICES_V1: &str = "\
db:
  image: busybox-db
  command: httpd -f -p 80
app:
  build:
    context: .
    dockerfile: Dockerfile.app
    args:
      VERSION: 3
  links:
    - db:database
  environment:
    - A=1
    - B=two
  volumes:
    - ./src:/app:ro
  working_dir: /app
  cached: false
";

    fn services(text: &str) -> Result<ServicesFile, ConfigError> {
        parse_services(Path::new("svc.yml"), Path::new("/proj"), text)
    }

    fn steps(text: &str) -> Result<Vec<StepNode>, ConfigError> {
        let svc = services(SERVICES_V1).expect("fixture parses");
        parse_steps(Path::new("steps.yml"), text, &svc)
    }

    fn located(err: ConfigError) -> (usize, usize, String) {
        match err {
            ConfigError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected a located error, got {other:?}"),
        }
    }

    #[test]
    fn steps_tree_parses() {
        let nodes = steps(
            "- type: parallel\n  steps:\n  - name: a\n    service: app\n    command: echo a\n  - name: b\n    service: app\n    command: [echo, b]\n- name: deploy\n  service: app\n  tag: ^main$\n  type: push\n  image_name: reg/app\n",
        )
        .expect("parses");
        assert_eq!(nodes.len(), 2);
        let StepNode::Group(g) = &nodes[0] else {
            panic!("group")
        };
        assert_eq!(g.kind, GroupKind::Parallel);
        assert_eq!(g.steps.len(), 2);
        let StepNode::Step(deploy) = &nodes[1] else {
            panic!("step")
        };
        assert!(deploy.tag.as_ref().is_some_and(|t| t.matches("main")));
        assert!(!deploy.tag.as_ref().is_some_and(|t| t.matches("mainline")));
        assert!(matches!(deploy.action, StepAction::Push { .. }));
    }

    #[test]
    fn unknown_step_service_is_located() {
        let (line, col, msg) =
            located(steps("- name: a\n  service: web\n  command: x\n").unwrap_err());
        assert_eq!((line, col), (2, 12), "{msg}");
        assert!(
            msg.contains("unknown service `web`") && msg.contains("app, db"),
            "{msg}"
        );
    }

    #[test]
    fn bad_regex_is_located() {
        let (line, col, msg) =
            located(steps("- name: a\n  service: app\n  tag: '^(main'\n").unwrap_err());
        assert_eq!((line, col), (3, 8), "{msg}");
        assert!(
            msg.ends_with("`tag` `^(main` is not a valid regex: unclosed group; fix the pattern"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_step_key_is_located() {
        let (line, _, msg) = located(
            steps("- type: serial\n  steps:\n  - name: a\n    service: app\n    comand: x\n")
                .unwrap_err(),
        );
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("comand"), "{msg}");
    }

    #[test]
    fn group_without_type_is_rejected() {
        let (line, _, msg) =
            located(steps("- steps:\n  - name: a\n    service: app\n").unwrap_err());
        assert_eq!(line, 1, "{msg}");
        assert!(msg.contains("type: serial"), "{msg}");
    }

    #[test]
    fn duplicate_step_name_is_rejected() {
        let (line, _, msg) =
            located(steps("- name: a\n  service: app\n- name: a\n  service: db\n").unwrap_err());
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("used twice"), "{msg}");
    }

    #[test]
    fn push_step_needs_image_name() {
        let (_, _, msg) = located(steps("- name: p\n  service: app\n  type: push\n").unwrap_err());
        assert!(msg.contains("image_name"), "{msg}");
    }

    #[test]
    fn error_display_names_file_line_and_column() {
        let err = steps("- name: a\n  service: nope\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("steps.yml:2:12: "), "{err}");
    }

    /// Guards the e2e fixture: it must stay a valid project for `layercache steps`.
    #[test]
    fn jet_sample_fixture_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jet-sample");
        let svc = load_services(&dir.join("layercache-services.yml")).expect("services parse");
        assert_eq!(svc.services["app"].depends_on, vec!["db"]);
        assert!(svc.services["app"].mounts.iter().all(|m| match m {
            Mount::Bind { host, .. } => host.starts_with(&svc.dir),
            _ => false,
        }));
        for file in [
            "layercache-steps.yml",
            "layercache-steps-fail.yml",
            "layercache-steps-push.yml",
        ] {
            let nodes = load_steps(&dir.join(file), &svc).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!nodes.is_empty(), "{file}");
        }
    }
}
