//! A Dockerfile parser: enough of BuildKit's grammar to compute cache keys faithfully.
//!
//! [`parse`] turns Dockerfile text into a [`Dockerfile`]: the `ARG`s before the first `FROM`
//! (global args) and the build stages, each with its `FROM` and its instructions. Every
//! [`Instruction`] carries a canonical text ([`Instruction::canonical`]) in which comments, blank
//! lines, line continuations, keyword case, flag order and whitespace runs outside quotes are gone,
//! so two Dockerfiles that Docker builds the same way get the same text.
//!
//! What is understood, following BuildKit's `frontend/dockerfile/parser`:
//! - parser directives on the first lines (`# syntax=…`, `# escape=\` or `` # escape=` ``,
//!   `# check=…`); the first other line (a comment, a blank line, an instruction) ends them;
//! - comments (first non-blank character `#`), also between continuation lines, and blank lines;
//! - line continuations: the escape character at the end of a line, optionally followed by blanks,
//!   unless it is itself escaped (`ENV C trailing\\` ends there, as in BuildKit);
//! - heredocs on `RUN`, `COPY`, `ADD` (also behind `ONBUILD`): `<<EOF`, `<<-EOF` (leading tabs
//!   stripped from body and terminator), quoted `<<"EOF"` / `<<'EOF'` (no expansion), several on
//!   one line, read in order;
//! - exec (JSON) form vs shell form; builder flags (`--from=…`, `--mount=…`), checked per keyword;
//! - `FROM [--platform=…] image [AS name]`, `ONBUILD <instruction>`, `HEALTHCHECK NONE|CMD …`.
//!
//! What it does not do: expand variables (the key module resolves `FROM $BASE` itself) or check
//! the semantics of argument values (ports, signals, mount specs); the engine reports those.

use std::fmt;
use std::str::FromStr;

/// Instructions Docker knows. Anything else is an error, as it is for `docker build`.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Flags whose presence means `true`: `--link` and `--link=true` are the same instruction.
const BOOL_FLAGS: &[&str] = &["link", "keep-git-dir", "parents", "unpack"];

/// Flags that may be given more than once (`RUN --mount=… --mount=…`).
const REPEATABLE_FLAGS: &[&str] = &["mount", "exclude"];

/// The builder flags each instruction accepts (BuildKit's current set); others are refused.
fn known_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "RUN" => &["mount", "network", "security", "device"],
        "COPY" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "ADD" => &[
            "chown",
            "chmod",
            "link",
            "checksum",
            "keep-git-dir",
            "exclude",
            "parents",
            "unpack",
        ],
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    }
}

/// Why a Dockerfile could not be parsed. Every variant that points at the file names its 1-based
/// line, and the message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the Dockerfile is empty: it needs at least a `FROM <image>` line")]
    Empty,
    #[error(
        "the Dockerfile has no `FROM` instruction: add `FROM <image>` (or `FROM scratch`) before \
         the first build step"
    )]
    NoFrom,
    #[error(
        "line {line}: unknown instruction `{keyword}`: use one of {} (a shell line continued from \
         above needs a `\\` at the end of the previous line)",
        KEYWORDS.join(", ")
    )]
    UnknownInstruction { line: usize, keyword: String },
    #[error(
        "line {line}: `{keyword}` comes before the first `FROM`: only `ARG` may precede `FROM`; \
         move it below a `FROM` line"
    )]
    BeforeFrom { line: usize, keyword: String },
    #[error("line {line}: `{keyword}` needs arguments, e.g. `{example}`")]
    MissingArguments {
        line: usize,
        keyword: String,
        example: &'static str,
    },
    #[error(
        "line {line}: `FROM {args}` is not valid: write `FROM [--platform=<platform>] <image> [AS <name>]`"
    )]
    BadFrom { line: usize, args: String },
    #[error(
        "line {line}: stage name `{name}` is not valid: start with a letter and use only \
         `a-z 0-9 - _ .`"
    )]
    BadStageName { line: usize, name: String },
    #[error(
        "line {line}: stage name `{name}` is already used by the stage on line {first_line}: give \
         each stage its own name"
    )]
    DuplicateStage {
        line: usize,
        name: String,
        first_line: usize,
    },
    #[error(
        "line {line}: `{keyword}` does not accept the flag `--{flag}`{}",
        known_list(known)
    )]
    UnknownFlag {
        line: usize,
        keyword: String,
        flag: String,
        known: &'static [&'static str],
    },
    #[error("line {line}: the flag `--{flag}` is given twice on `{keyword}`: keep one")]
    DuplicateFlag {
        line: usize,
        keyword: String,
        flag: String,
    },
    #[error("line {line}: `{text}` is not a valid flag: write `--name=value` or `--name`")]
    BadFlag { line: usize, text: String },
    #[error(
        "line {line}: `{keyword}` needs a JSON array of strings, e.g. `{keyword} [\"/bin/sh\", \"-c\"]`"
    )]
    NotStringArray { line: usize, keyword: String },
    #[error(
        "line {line}: `{text}` is not a valid ARG: write `ARG NAME` or `ARG NAME=default` (names \
         are non-empty and contain no `$`, quotes or blanks)"
    )]
    BadArg { line: usize, text: String },
    #[error("line {line}: `{keyword} {name}` has no value: write `{keyword} {name}=<value>`")]
    MissingValue {
        line: usize,
        keyword: String,
        name: String,
    },
    #[error(
        "line {line}: `HEALTHCHECK {args}` is not valid: write `HEALTHCHECK NONE` or \
         `HEALTHCHECK [--interval=…] CMD <command>`"
    )]
    BadHealthcheck { line: usize, args: String },
    #[error("line {line}: `ONBUILD {keyword}` is not allowed: ONBUILD cannot trigger `{keyword}`")]
    BadOnbuild { line: usize, keyword: String },
    #[error(
        "line {line}: heredoc `<<{name}` is never closed: add a line containing only `{name}` \
         after its body"
    )]
    UnterminatedHeredoc { line: usize, name: String },
    #[error(
        "line {line}: the escape directive must be `\\` or `` ` ``, not `{value}`: write \
         `# escape=\\` or `` # escape=` ``"
    )]
    BadEscape { line: usize, value: String },
    #[error("line {line}: the parser directive `{name}` is given twice: keep only the first")]
    DuplicateDirective { line: usize, name: String },
}

fn known_list(known: &[&str]) -> String {
    if known.is_empty() {
        " (it takes no flags)".to_string()
    } else {
        let names: Vec<String> = known.iter().map(|f| format!("--{f}")).collect();
        format!(" (it accepts {})", names.join(", "))
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless a `# escape=` directive says `` ` ``): it decides line
    /// continuations and quoting, so consumers re-splitting words need it.
    pub escape: char,
    /// The `# syntax=` directive, if any: the frontend image BuildKit would use.
    pub syntax: Option<String>,
    /// `ARG` instructions before the first `FROM`: usable in `FROM` lines, and re-declarable in stages.
    pub global_args: Vec<Instruction>,
    /// Build stages in file order; never empty.
    pub stages: Vec<Stage>,
}

/// One build stage: a `FROM` and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position in [`Dockerfile::stages`]; `COPY --from=<index>` refers to stages by it.
    pub index: usize,
    /// The `AS` name, lowercased as Docker does; what `--target` and `--from=` refer to.
    pub name: Option<String>,
    /// The image (or earlier stage name) built on, as written (variables not expanded).
    pub base: String,
    /// The `--platform` of the `FROM`, if any.
    pub platform: Option<String>,
    /// The `FROM` instruction itself, the first step of the stage's key chain.
    pub from: Instruction,
    /// The stage's instructions after `FROM`, in file order.
    pub instructions: Vec<Instruction>,
}

/// One instruction in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The keyword, uppercase (`RUN`), whatever case the file used.
    pub keyword: String,
    /// Builder flags (`--from=builder`), sorted by name then value, values unquoted.
    pub flags: Vec<Flag>,
    /// The arguments in canonical form: JSON arrays re-serialised compactly, shell form with blank
    /// runs outside quotes collapsed to one space; for `ONBUILD`, the canonical triggered
    /// instruction.
    pub args: String,
    /// Whether the arguments were an exec-form JSON array (`RUN ["a","b"]`).
    pub exec_form: bool,
    /// Heredoc bodies the arguments refer to (`<<EOF`), in order.
    pub heredocs: Vec<Heredoc>,
    /// The 1-based line the instruction starts on, for messages.
    pub line: usize,
}

/// A builder flag such as `--chown=app:app` or `--link`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flag {
    /// The name without dashes (`chown`).
    pub name: String,
    /// The value after `=`, unquoted; `None` for a bare boolean flag.
    pub value: Option<String>,
}

/// A heredoc: `<<EOF` on the instruction line, its body on the following lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator word, unquoted (`EOF`).
    pub name: String,
    /// The body, each line ending in `\n`; with `<<-`, leading tabs already stripped.
    pub body: String,
    /// Whether it was `<<-` (leading tabs stripped).
    pub strip_tabs: bool,
    /// Whether variables in the body are expanded (the terminator was not quoted).
    pub expand: bool,
}

/// One name declared by an `ARG` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The variable name.
    pub name: String,
    /// The default after `=`, unquoted; `None` when the ARG has no default.
    pub default: Option<String>,
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "--{}={}", self.name, v),
            None => write!(f, "--{}", self.name),
        }
    }
}

impl Instruction {
    /// The instruction's single canonical line: `KEYWORD --flags args`, without heredoc bodies.
    pub fn canonical_line(&self) -> String {
        let mut out = self.keyword.clone();
        for flag in &self.flags {
            out.push(' ');
            out.push_str(&flag.to_string());
        }
        if !self.args.is_empty() {
            out.push(' ');
            out.push_str(&self.args);
        }
        out
    }

    /// The full canonical text: [`Self::canonical_line`], then each heredoc's body and terminator
    /// on their own lines, as they would appear in a Dockerfile.
    pub fn canonical(&self) -> String {
        let mut out = self.canonical_line();
        for doc in &self.heredocs {
            out.push('\n');
            out.push_str(&doc.body);
            out.push_str(&doc.name);
        }
        out
    }

    /// The value of flag `name` (its first occurrence); `Some("")` for a bare boolean flag.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_deref().unwrap_or(""))
    }

    /// The names an `ARG` instruction declares, with their defaults; empty for other keywords.
    ///
    /// `escape` is [`Dockerfile::escape`]. The arguments were validated by [`parse`].
    pub fn arg_decls(&self, escape: char) -> Vec<ArgDecl> {
        if self.keyword != "ARG" {
            return Vec::new();
        }
        words(&self.args, escape)
            .into_iter()
            .map(|w| w.unquoted)
            .filter_map(|w| parse_arg_word(&w))
            .collect()
    }
}

impl Dockerfile {
    /// The names of the named stages, in file order.
    pub fn stage_names(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect()
    }

    /// The stage called `name` (case-insensitive, as Docker compares stage names).
    pub fn stage_named(&self, name: &str) -> Option<&Stage> {
        let name = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name.as_str()))
    }
}

impl FromStr for Dockerfile {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text)
    }
}

/// Parses Dockerfile `text`.
///
/// Errors say which line is wrong and how to fix it: unknown instructions or flags, instructions
/// before the first `FROM` (other than `ARG`), a missing `FROM`, malformed `FROM`/`ARG`/`SHELL`/
/// `HEALTHCHECK`/`ONBUILD`, duplicate stage names, unclosed heredocs, bad directives.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();

    let (escape, syntax, mut next) = parse_directives(&lines)?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut saw_instruction = false;

    while next < lines.len() {
        let start = next;
        let first = lines[next].trim_start();
        next += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let (head, mut continued) = strip_continuation(first, escape);
        let mut logical = head.to_string();
        while continued && next < lines.len() {
            let raw = lines[next];
            next += 1;
            let trimmed = raw.trim_start();
            // BuildKit skips comments and blank lines inside a continued instruction.
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (part, more) = strip_continuation(raw, escape);
            logical.push_str(part);
            continued = more;
        }
        if logical.trim().is_empty() {
            // A lone escape character continued into nothing.
            continue;
        }
        saw_instruction = true;
        let line = start + 1;
        let mut instruction = parse_instruction(logical.trim(), line, escape, false)?;
        read_heredocs(&mut instruction, &lines, &mut next, escape)?;

        match instruction.keyword.as_str() {
            "FROM" => {
                let stage = make_stage(instruction, stages.len(), escape, &stages)?;
                stages.push(stage);
            }
            keyword => match stages.last_mut() {
                Some(stage) => stage.instructions.push(instruction),
                None if keyword == "ARG" => global_args.push(instruction),
                None => {
                    return Err(ParseError::BeforeFrom {
                        line,
                        keyword: keyword.to_string(),
                    });
                }
            },
        }
    }

    if stages.is_empty() {
        return Err(if saw_instruction {
            ParseError::NoFrom
        } else {
            ParseError::Empty
        });
    }
    Ok(Dockerfile {
        escape,
        syntax,
        global_args,
        stages,
    })
}

/// Reads the parser directives at the top; returns the escape character, the syntax directive and
/// the index of the first line that is not a directive.
fn parse_directives(lines: &[&str]) -> Result<(char, Option<String>, usize), ParseError> {
    let mut escape = None;
    let mut syntax = None;
    let mut check_seen = false;
    let mut index = 0;
    while index < lines.len() {
        let Some((name, value)) = directive(lines[index]) else {
            break;
        };
        let line = index + 1;
        let duplicate = || ParseError::DuplicateDirective {
            line,
            name: name.clone(),
        };
        match name.as_str() {
            "escape" => {
                if escape.is_some() {
                    return Err(duplicate());
                }
                escape = Some(match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(ParseError::BadEscape { line, value }),
                });
            }
            "syntax" => {
                if syntax.is_some() {
                    return Err(duplicate());
                }
                syntax = Some(value);
            }
            "check" => {
                if check_seen {
                    return Err(duplicate());
                }
                check_seen = true;
            }
            // An unknown directive is a plain comment, and ends the directives (Docker's rule).
            _ => break,
        }
        index += 1;
    }
    Ok((escape.unwrap_or('\\'), syntax, index))
}

/// `# name = value` → (lowercased name, value), as BuildKit's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

/// Removes a trailing escape character (and blanks after it); says whether the line continues.
///
/// As BuildKit's `([^\\])\\[ \t]*$`: an escape character that is itself escaped (`trailing\\`)
/// is text, not a continuation. A line holding only the escape character continues.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) if !rest.ends_with(escape) => (rest, true),
        _ => (line, false),
    }
}

/// Parses one logical instruction line (continuations joined, trimmed).
fn parse_instruction(
    text: &str,
    line: usize,
    escape: char,
    in_onbuild: bool,
) -> Result<Instruction, ParseError> {
    let (word, rest) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(w, r)| (w, r.trim_start()));
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(ParseError::UnknownInstruction {
            line,
            keyword: word.to_string(),
        });
    }
    if in_onbuild && matches!(keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(ParseError::BadOnbuild { line, keyword });
    }
    let (flags, rest) = split_flags(&keyword, rest, line, escape)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(ParseError::MissingArguments {
            line,
            example: example(&keyword),
            keyword,
        });
    }
    let mut instruction = Instruction {
        keyword: keyword.clone(),
        flags,
        args: String::new(),
        exec_form: false,
        heredocs: Vec::new(),
        line,
    };
    match keyword.as_str() {
        "RUN" | "CMD" | "ENTRYPOINT" | "COPY" | "ADD" | "VOLUME" => {
            let (args, exec_form) = maybe_json(rest, line, &keyword, escape)?;
            instruction.args = args;
            instruction.exec_form = exec_form;
        }
        "SHELL" => match maybe_json(rest, line, &keyword, escape)? {
            (args, true) => {
                instruction.args = args;
                instruction.exec_form = true;
            }
            (_, false) => return Err(ParseError::NotStringArray { line, keyword }),
        },
        "HEALTHCHECK" => {
            let (first, cmd) = rest
                .split_once(char::is_whitespace)
                .map_or((rest, ""), |(w, r)| (w, r.trim()));
            let bad = || ParseError::BadHealthcheck {
                line,
                args: rest.to_string(),
            };
            if first.eq_ignore_ascii_case("NONE") && cmd.is_empty() {
                instruction.args = "NONE".to_string();
            } else if first.eq_ignore_ascii_case("CMD") && !cmd.is_empty() {
                let (args, exec_form) = maybe_json(cmd, line, &keyword, escape)?;
                instruction.args = format!("CMD {args}");
                instruction.exec_form = exec_form;
            } else {
                return Err(bad());
            }
        }
        "ONBUILD" => {
            let inner = parse_instruction(rest, line, escape, true)?;
            instruction.args = inner.canonical_line();
            instruction.exec_form = inner.exec_form;
        }
        "ARG" => {
            for word in words(rest, escape) {
                if parse_arg_word(&word.unquoted).is_none() {
                    return Err(ParseError::BadArg {
                        line,
                        text: word.raw,
                    });
                }
            }
            instruction.args = collapse(rest, escape);
        }
        "ENV" | "LABEL" => {
            let all = words(rest, escape);
            // The legacy form `ENV NAME value` needs a value; `ENV NAME` alone is an error.
            if all.len() == 1 && !all[0].unquoted.contains('=') {
                return Err(ParseError::MissingValue {
                    line,
                    keyword,
                    name: all[0].unquoted.clone(),
                });
            }
            instruction.args = collapse(rest, escape);
        }
        _ => instruction.args = collapse(rest, escape),
    }
    Ok(instruction)
}

/// An example line for a keyword, shown when it has no arguments.
fn example(keyword: &str) -> &'static str {
    match keyword {
        "FROM" => "FROM alpine:3.20 AS build",
        "RUN" => "RUN make",
        "CMD" => "CMD [\"./app\"]",
        "ENTRYPOINT" => "ENTRYPOINT [\"./app\"]",
        "COPY" => "COPY src/ /app/",
        "ADD" => "ADD app.tar.gz /app/",
        "ARG" => "ARG VERSION=1.0",
        "ENV" => "ENV PATH=/app/bin:$PATH",
        "LABEL" => "LABEL org.opencontainers.image.title=app",
        "EXPOSE" => "EXPOSE 8080",
        "USER" => "USER app",
        "WORKDIR" => "WORKDIR /app",
        "VOLUME" => "VOLUME /data",
        "SHELL" => "SHELL [\"/bin/sh\", \"-c\"]",
        "STOPSIGNAL" => "STOPSIGNAL SIGTERM",
        "HEALTHCHECK" => "HEALTHCHECK CMD wget -q -O- localhost:8080",
        "ONBUILD" => "ONBUILD RUN make",
        _ => "MAINTAINER someone@example.com",
    }
}

/// Splits the leading `--flag[=value]` words off `rest`; checks them against the keyword's flags.
fn split_flags<'a>(
    keyword: &str,
    mut rest: &'a str,
    line: usize,
    escape: char,
) -> Result<(Vec<Flag>, &'a str), ParseError> {
    let mut flags: Vec<Flag> = Vec::new();
    loop {
        rest = rest.trim_start();
        if !rest.starts_with("--") {
            break;
        }
        let (word, after) = next_word(rest, escape);
        rest = after;
        let text = word.unquoted;
        let body = &text[2..];
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name.is_empty() {
            return Err(ParseError::BadFlag {
                line,
                text: word.raw,
            });
        }
        let known = known_flags(keyword);
        if !known.contains(&name) {
            return Err(ParseError::UnknownFlag {
                line,
                keyword: keyword.to_string(),
                flag: name.to_string(),
                known,
            });
        }
        if !REPEATABLE_FLAGS.contains(&name) && flags.iter().any(|f| f.name == name) {
            return Err(ParseError::DuplicateFlag {
                line,
                keyword: keyword.to_string(),
                flag: name.to_string(),
            });
        }
        let value = match value {
            Some(v) if BOOL_FLAGS.contains(&name) && v.eq_ignore_ascii_case("true") => None,
            other => other,
        };
        flags.push(Flag {
            name: name.to_string(),
            value,
        });
    }
    flags.sort();
    Ok((flags, rest))
}

/// Exec form if `rest` is a JSON array of strings (re-serialised compactly), else shell form
/// (collapsed). Invalid JSON is shell form, as in Docker; a JSON array of non-strings is an error.
fn maybe_json(
    rest: &str,
    line: usize,
    keyword: &str,
    escape: char,
) -> Result<(String, bool), ParseError> {
    let parsed = if rest.starts_with('[') {
        serde_json::from_str(rest).ok()
    } else {
        None
    };
    if let Some(serde_json::Value::Array(items)) = parsed {
        let strings: Option<Vec<&str>> = items.iter().map(|v| v.as_str()).collect();
        return match strings.and_then(|s| serde_json::to_string(&s).ok()) {
            Some(json) => Ok((json, true)),
            None => Err(ParseError::NotStringArray {
                line,
                keyword: keyword.to_string(),
            }),
        };
    }
    Ok((collapse(rest, escape), false))
}

/// Builds a stage from its `FROM` instruction.
fn make_stage(
    from: Instruction,
    index: usize,
    escape: char,
    earlier: &[Stage],
) -> Result<Stage, ParseError> {
    let line = from.line;
    let parts: Vec<String> = words(&from.args, escape)
        .into_iter()
        .map(|w| w.unquoted)
        .collect();
    let bad = || ParseError::BadFrom {
        line,
        args: from.args.clone(),
    };
    let (base, name) = match parts.as_slice() {
        [base] => (base.clone(), None),
        [base, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            if !valid_stage_name(&name) {
                return Err(ParseError::BadStageName { line, name });
            }
            if let Some(first) = earlier
                .iter()
                .find(|s| s.name.as_deref() == Some(name.as_str()))
            {
                return Err(ParseError::DuplicateStage {
                    line,
                    name,
                    first_line: first.from.line,
                });
            }
            (base.clone(), Some(name))
        }
        _ => return Err(bad()),
    };
    let mut from = from;
    from.args = match &name {
        Some(n) => format!("{base} AS {n}"),
        None => base.clone(),
    };
    Ok(Stage {
        index,
        name,
        base,
        platform: from.flag("platform").map(str::to_string),
        from,
        instructions: Vec::new(),
    })
}

/// Docker's stage name rule: `^[a-z][a-z0-9-_\.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// `NAME` or `NAME=default` → declaration; `None` if the name is empty or has odd characters.
fn parse_arg_word(word: &str) -> Option<ArgDecl> {
    let (name, default) = match word.split_once('=') {
        Some((n, d)) => (n, Some(d.to_string())),
        None => (word, None),
    };
    let ok = !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '$' | '"' | '\'' | '{' | '}'));
    ok.then(|| ArgDecl {
        name: name.to_string(),
        default,
    })
}

/// Finds `<<EOF` words in a RUN/COPY/ADD (also behind ONBUILD) and reads their bodies from
/// `lines[*next..]`, advancing `next` past each terminator.
fn read_heredocs(
    instruction: &mut Instruction,
    lines: &[&str],
    next: &mut usize,
    escape: char,
) -> Result<(), ParseError> {
    let target_keyword = if instruction.keyword == "ONBUILD" {
        instruction.args.split(' ').next().unwrap_or("")
    } else {
        instruction.keyword.as_str()
    };
    if !matches!(target_keyword, "RUN" | "COPY" | "ADD") || instruction.exec_form {
        return Ok(());
    }
    let markers: Vec<(String, bool, bool)> = words(&instruction.args, escape)
        .iter()
        .filter_map(|w| heredoc_marker(&w.raw, escape))
        .collect();
    for (name, strip_tabs, expand) in markers {
        let mut body = String::new();
        let mut closed = false;
        while *next < lines.len() {
            let raw = lines[*next];
            *next += 1;
            let candidate = if strip_tabs {
                raw.trim_start_matches('\t')
            } else {
                raw
            };
            if candidate == name {
                closed = true;
                break;
            }
            body.push_str(candidate);
            body.push('\n');
        }
        if !closed {
            return Err(ParseError::UnterminatedHeredoc {
                line: instruction.line,
                name,
            });
        }
        instruction.heredocs.push(Heredoc {
            name,
            body,
            strip_tabs,
            expand,
        });
    }
    Ok(())
}

/// A raw word like `<<EOF`, `<<-"EOF"`, `3<<'END'` → (name, strip tabs, expand); BuildKit's
/// `^(\d*)<<(-?)([^<]*)$` where the rest is exactly one (possibly quoted) word.
fn heredoc_marker(raw: &str, escape: char) -> Option<(String, bool, bool)> {
    let rest = raw.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let (strip_tabs, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let parsed = words(rest, escape);
    let [word] = parsed.as_slice() else {
        return None;
    };
    if word.unquoted.is_empty() {
        return None;
    }
    let quoted = rest.contains(['"', '\'']);
    Some((word.unquoted.clone(), strip_tabs, !quoted))
}

/// A word of an instruction line: as written, and with quotes and escapes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    raw: String,
    unquoted: String,
}

/// Splits `text` into words at blanks outside quotes.
fn words(text: &str, escape: char) -> Vec<Word> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (word, after) = next_word(rest, escape);
        out.push(word);
        rest = after.trim_start();
    }
    out
}

/// Reads one word from the start of `text` (which starts with a non-blank); returns it and the rest.
/// Single quotes are literal; in double quotes and outside quotes, the escape character makes the
/// next character literal.
fn next_word(text: &str, escape: char) -> (Word, &str) {
    let mut unquoted = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices();
    let mut end = text.len();
    while let Some((i, c)) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                end = i;
                break;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            Some('\'') => unquoted.push(c),
            _ if c == escape => match chars.next() {
                Some((_, n)) => unquoted.push(n),
                None => unquoted.push(c),
            },
            _ => unquoted.push(c),
        }
    }
    let raw = text[..end].to_string();
    (Word { raw, unquoted }, &text[end..])
}

/// Shell-form canonical text: trimmed, blank runs outside quotes collapsed to one space; quoted
/// and escaped text kept verbatim.
fn collapse(text: &str, escape: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut pending_space = false;
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    pending_space = true;
                    continue;
                }
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(c);
                if c == escape {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                } else if q == '"' && c == escape {
                    out.extend(chars.next());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let df = parse(&format!("FROM scratch\n{text}")).expect("parses");
        df.stages[0].instructions[0].clone()
    }

    #[test]
    fn keywords_are_case_insensitive_and_whitespace_collapses() {
        let a = one("run   echo  hi    there");
        assert_eq!(a.keyword, "RUN");
        assert_eq!(a.canonical(), "RUN echo hi there");
    }

    #[test]
    fn quoted_whitespace_is_kept() {
        assert_eq!(
            one("RUN echo \"a   b\"  'c   d'   e\\  f").canonical(),
            "RUN echo \"a   b\" 'c   d' e\\  f"
        );
    }

    #[test]
    fn json_form_is_reserialised_compactly() {
        let i = one("CMD [ \"a\" ,   \"b c\" ]");
        assert!(i.exec_form);
        assert_eq!(i.canonical(), "CMD [\"a\",\"b c\"]");
        // Not valid JSON: shell form, as Docker does.
        let s = one("CMD [not json");
        assert!(!s.exec_form);
        assert_eq!(s.args, "[not json");
    }

    #[test]
    fn json_array_of_non_strings_is_an_error() {
        let err = parse("FROM scratch\nCMD [1, 2]\n").unwrap_err();
        assert!(
            matches!(err, ParseError::NotStringArray { line: 2, .. }),
            "{err}"
        );
    }

    /// Regression: `ENV C trailing\\` swallowed the next instruction as a continuation.
    #[test]
    fn an_escaped_escape_character_at_the_end_does_not_continue_the_line() {
        let df = parse("FROM scratch\nENV C trailing\\\\\nRUN x\n").unwrap();
        let s = &df.stages[0];
        assert_eq!(s.instructions.len(), 2);
        assert_eq!(s.instructions[0].canonical(), "ENV C trailing\\\\");
        assert_eq!(s.instructions[1].canonical(), "RUN x");
        let df = parse("# escape=`\nFROM scratch\nENV C trailing``\nRUN x\n").unwrap();
        assert_eq!(df.stages[0].instructions.len(), 2);
        // One escape character still continues.
        let df = parse("FROM scratch\nENV C a\\\n  b\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].canonical(), "ENV C a b");
    }

    #[test]
    fn continuations_and_comments_inside_them_join_one_instruction() {
        let df = parse(
            "FROM scratch\nRUN apk add \\\n  # a comment\n\n    curl \\   \n    git\nUSER app\n",
        )
        .unwrap();
        let s = &df.stages[0];
        assert_eq!(s.instructions[0].canonical(), "RUN apk add curl git");
        assert_eq!(s.instructions[0].line, 2);
        assert_eq!(s.instructions[1].line, 7);
    }

    #[test]
    fn backtick_escape_directive_changes_continuations() {
        let df =
            parse("# escape=`\nFROM scratch\nRUN dir c:\\ `\n    /s\nWORKDIR C:\\app\\\nUSER x\n")
                .unwrap();
        assert_eq!(df.escape, '`');
        let s = &df.stages[0];
        assert_eq!(s.instructions[0].args, "dir c:\\ /s");
        assert_eq!(s.instructions[1].args, "C:\\app\\");
        assert_eq!(s.instructions[2].keyword, "USER");
    }

    #[test]
    fn directives_end_at_first_other_line() {
        let df = parse("# syntax=docker/dockerfile:1\n\n# escape=`\nFROM scratch\n").unwrap();
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.escape, '\\', "escape after a blank line is a comment");
        let df = parse("# unknown=x\n# escape=`\nFROM scratch\n").unwrap();
        assert_eq!(df.escape, '\\', "an unknown directive ends the directives");
    }

    #[test]
    fn bad_and_duplicate_directives_are_errors() {
        assert_eq!(
            parse("# escape=x\nFROM scratch\n").unwrap_err(),
            ParseError::BadEscape {
                line: 1,
                value: "x".into()
            }
        );
        assert!(matches!(
            parse("# escape=`\n# ESCAPE=`\nFROM scratch\n").unwrap_err(),
            ParseError::DuplicateDirective { line: 2, .. }
        ));
    }

    #[test]
    fn heredocs_several_on_one_line_chomped_and_quoted() {
        let df = parse(
            "FROM scratch\nRUN <<-EOT1 cat - <<\"EOT2\" > /x\n\t\techo $A\n\tEOT1\nplain $B\nEOT2\nCOPY <<EOF /etc/conf\nk=v\nEOF\n",
        )
        .unwrap();
        let s = &df.stages[0];
        let run = &s.instructions[0];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].name, "EOT1");
        assert_eq!(run.heredocs[0].body, "echo $A\n");
        assert!(run.heredocs[0].strip_tabs && run.heredocs[0].expand);
        assert_eq!(run.heredocs[1].name, "EOT2");
        assert_eq!(run.heredocs[1].body, "plain $B\n");
        assert!(!run.heredocs[1].expand);
        let copy = &s.instructions[1];
        assert_eq!(copy.line, 7);
        assert_eq!(copy.heredocs[0].body, "k=v\n");
        assert_eq!(copy.canonical(), "COPY <<EOF /etc/conf\nk=v\nEOF");
    }

    #[test]
    fn heredoc_body_is_verbatim_and_not_parsed_as_instructions() {
        let df = parse("FROM scratch\nRUN <<EOF\n# not a comment\n\n  BOGUS   x\nEOF\n").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].heredocs[0].body,
            "# not a comment\n\n  BOGUS   x\n"
        );
    }

    #[test]
    fn heredoc_marker_in_quotes_or_json_is_not_a_heredoc() {
        assert!(one("RUN echo \"<<EOF\"").heredocs.is_empty());
        assert!(one("RUN [\"cat\", \"<<EOF\"]").heredocs.is_empty());
        assert!(one("RUN cat <<< hello").heredocs.is_empty());
    }

    #[test]
    fn unterminated_heredoc_names_its_line() {
        assert_eq!(
            parse("FROM scratch\nRUN <<EOF\necho\n").unwrap_err(),
            ParseError::UnterminatedHeredoc {
                line: 2,
                name: "EOF".into()
            }
        );
    }

    #[test]
    fn stages_names_platform_and_flags() {
        let df = parse(
            "ARG GO=1.22\nFROM --platform=$BUILDPLATFORM golang:${GO} as Builder\n\
             COPY --link --chown=1:1 --from=builder a b\nRUN --mount=type=cache,target=/c --network=none make\n\
             FROM scratch\n",
        )
        .unwrap();
        assert_eq!(df.global_args.len(), 1);
        let b = &df.stages[0];
        assert_eq!(b.name.as_deref(), Some("builder"));
        assert_eq!(b.base, "golang:${GO}");
        assert_eq!(b.platform.as_deref(), Some("$BUILDPLATFORM"));
        assert_eq!(
            b.from.canonical(),
            "FROM --platform=$BUILDPLATFORM golang:${GO} AS builder"
        );
        assert_eq!(
            b.instructions[0].canonical(),
            "COPY --chown=1:1 --from=builder --link a b"
        );
        assert_eq!(b.instructions[0].flag("from"), Some("builder"));
        assert_eq!(
            b.instructions[1].canonical(),
            "RUN --mount=type=cache,target=/c --network=none make"
        );
        assert_eq!(df.stages[1].name, None);
        assert_eq!(df.stage_named("BUILDER").map(|s| s.index), Some(0));
    }

    #[test]
    fn flag_order_and_quoting_do_not_matter() {
        assert_eq!(
            one("COPY --from=b --chown=\"1:1\" --link=true x y").canonical(),
            one("COPY   --link --chown=1:1   --from=b x   y").canonical()
        );
    }

    #[test]
    fn unknown_and_duplicate_flags_are_errors() {
        assert!(matches!(
            parse("FROM scratch\nCOPY --form=b x y\n").unwrap_err(),
            ParseError::UnknownFlag { line: 2, .. }
        ));
        assert!(matches!(
            parse("FROM scratch\nCOPY --from=a --from=b x y\n").unwrap_err(),
            ParseError::DuplicateFlag { line: 2, .. }
        ));
        assert!(
            parse("FROM scratch\nRUN --mount=type=cache,target=/a --mount=type=secret,id=x make\n")
                .is_ok()
        );
    }

    #[test]
    fn onbuild_holds_a_canonical_instruction() {
        let i = one("onbuild   run  make   all");
        assert_eq!(i.canonical(), "ONBUILD RUN make all");
        let h = parse("FROM scratch\nONBUILD RUN <<EOF\nmake\nEOF\n").unwrap();
        assert_eq!(h.stages[0].instructions[0].heredocs[0].body, "make\n");
        assert!(matches!(
            parse("FROM scratch\nONBUILD FROM x\n").unwrap_err(),
            ParseError::BadOnbuild { line: 2, .. }
        ));
    }

    #[test]
    fn healthcheck_and_shell_forms() {
        assert_eq!(
            one("HEALTHCHECK --retries=3 --interval=5s cmd  curl  -f x").canonical(),
            "HEALTHCHECK --interval=5s --retries=3 CMD curl -f x"
        );
        assert_eq!(one("HEALTHCHECK none").args, "NONE");
        assert!(matches!(
            parse("FROM scratch\nHEALTHCHECK curl\n").unwrap_err(),
            ParseError::BadHealthcheck { line: 2, .. }
        ));
        assert!(matches!(
            parse("FROM scratch\nSHELL /bin/sh -c\n").unwrap_err(),
            ParseError::NotStringArray { line: 2, .. }
        ));
    }

    #[test]
    fn arg_declarations() {
        let i = one("ARG A  B=2 C=\"x y\"");
        assert_eq!(
            i.arg_decls('\\'),
            vec![
                ArgDecl {
                    name: "A".into(),
                    default: None
                },
                ArgDecl {
                    name: "B".into(),
                    default: Some("2".into())
                },
                ArgDecl {
                    name: "C".into(),
                    default: Some("x y".into())
                },
            ]
        );
        assert!(matches!(
            parse("FROM scratch\nARG =x\n").unwrap_err(),
            ParseError::BadArg { line: 2, .. }
        ));
    }

    #[test]
    fn structural_errors_carry_line_numbers() {
        assert_eq!(parse("").unwrap_err(), ParseError::Empty);
        assert_eq!(
            parse("# just a comment\n\n").unwrap_err(),
            ParseError::Empty
        );
        assert_eq!(parse("ARG X=1\n").unwrap_err(), ParseError::NoFrom);
        assert_eq!(
            parse("\nRUN make\nFROM scratch\n").unwrap_err(),
            ParseError::BeforeFrom {
                line: 2,
                keyword: "RUN".into()
            }
        );
        assert_eq!(
            parse("FROM scratch\n\nFORM x\n").unwrap_err(),
            ParseError::UnknownInstruction {
                line: 3,
                keyword: "FORM".into()
            }
        );
        assert!(matches!(
            parse("FROM scratch\nWORKDIR\n").unwrap_err(),
            ParseError::MissingArguments { line: 2, .. }
        ));
        assert!(matches!(
            parse("FROM a b c d\n").unwrap_err(),
            ParseError::BadFrom { line: 1, .. }
        ));
        assert!(matches!(
            parse("FROM a AS 1x\n").unwrap_err(),
            ParseError::BadStageName { line: 1, .. }
        ));
        assert!(matches!(
            parse("FROM a AS x\nFROM b AS X\n").unwrap_err(),
            ParseError::DuplicateStage {
                line: 2,
                first_line: 1,
                ..
            }
        ));
        assert!(matches!(
            parse("FROM scratch\nENV ONLYNAME\n").unwrap_err(),
            ParseError::MissingValue { line: 2, .. }
        ));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let msg = parse("FROM scratch\nFORM x\n").unwrap_err().to_string();
        assert!(
            msg.contains("line 2") && msg.contains("FORM") && msg.contains("RUN"),
            "{msg}"
        );
        let msg = parse("FROM scratch\nCOPY --form=b x y\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--from"), "{msg}");
    }

    /// Regression guard: no input makes the parser panic (slicing, escapes at end of text).
    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> =
            "FROM RUN COPY ARG AS --from= <<-EOF \"'`\\ $ { } [ ] # = \n\t\r é"
                .chars()
                .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(state % 80) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&text);
            let _ = parse(&format!("# escape=`\nFROM x AS b\n{text}"));
            let _ = crate::key::compute(
                &format!("FROM b\n{text}"),
                &Default::default(),
                None,
                &crate::key::Platform::host(),
            );
        }
    }

    #[test]
    fn crlf_and_bom_are_ignored() {
        let a = parse("\u{feff}FROM scratch\r\nRUN a \\\r\n  b\r\n").unwrap();
        let b = parse("FROM scratch\nRUN a b\n").unwrap();
        assert_eq!(
            a.stages[0].instructions[0].canonical(),
            b.stages[0].instructions[0].canonical()
        );
    }
}
