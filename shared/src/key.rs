//! Cache keys: a Dockerfile + build args + target → the entry key and instruction-prefix hashes.
//!
//! The runner looks entries up by [`CacheKeys::key`] and sends [`CacheKeys::prefixes`] along, so the
//! server can find an entry that shares the longest run of leading instructions.
//!
//! What takes part, in build order: the global `ARG`s (before the first `FROM`), then every stage
//! the target needs (the target and, transitively, the stages it names in `FROM <stage>`,
//! `COPY --from=<stage>` or `RUN --mount=…,from=<stage>`), each as its `FROM` line and its
//! instructions, in file order. Each instruction counts as its canonical text
//! ([`Instruction::canonical`]), except that an `ARG` shows its *effective* values: the
//! `--build-arg` value if given, else its default, else (in a stage) the global ARG's value, else
//! unset. So a build arg changes the chain from the ARG that declares it on; build args no ARG
//! declares change nothing (Docker ignores them; the predefined proxy args count only when declared,
//! which is also Docker's cache rule).
//!
//! BuildKit's automatic platform args (`TARGETOS`, `TARGETARCH`, `TARGETVARIANT`, `TARGETPLATFORM`
//! and their `BUILD*` twins) have the [`Platform`]'s values without a declaration in `FROM` lines
//! and `--from=` values, and as the value of an `ARG TARGETOS` that declares one without a default:
//! so `FROM binaries-$TARGETOS` needs the stage `binaries-linux`, as it does in the build. The
//! builder's machine and the target are the same platform here (the engine's): layercache does not
//! cross-build.
//!
//! The hashes, over UTF-8 text (`hex` = 64 lowercase hex digits of the previous hash):
//! - `p1 = sha256("layercache-prefix-v1\n" + instruction1)`,
//! - `pn = sha256(hex(p(n-1)) + "\n" + instruction_n)`,
//! - `key = sha256("layercache-key-v1\n" + hex(p_last) + "\ntarget=" + label)` where `label` is the
//!   target stage's name, or its index when it has none (the last stage without `--target`).
//!
//! So a `--target` naming the last stage gives the same key as no target, and a stage's own key
//! ([`StageKeys::key`]) is exactly the key of building that stage as the target.

use std::collections::{BTreeMap, BTreeSet};

use crate::dockerfile::{self, Dockerfile, Instruction, ParseError};
use crate::{CacheKey, Digest};

/// Why keys could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The Dockerfile does not parse; the error names the line.
    #[error("cannot compute the cache key: {0}")]
    Parse(#[from] ParseError),
    /// `--target` names no stage.
    #[error("target stage `{target}` is not in the Dockerfile: {}", stage_list(.stages))]
    UnknownTarget {
        /// The target asked for.
        target: String,
        /// The stage names the Dockerfile has, in file order.
        stages: Vec<String>,
    },
}

fn stage_list(stages: &[String]) -> String {
    if stages.is_empty() {
        "it has no named stages (name one with `FROM <image> AS <name>`, or drop --target)"
            .to_string()
    } else {
        let names: Vec<String> = stages.iter().map(|s| format!("`{s}`")).collect();
        format!("pass one of its stages to --target: {}", names.join(", "))
    }
}

/// The keys of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    /// The entry key: `sha256:<hex>` of the whole chain and the target.
    pub key: CacheKey,
    /// Prefix hashes, one per instruction in build order: what `prefix` lookups match on.
    pub prefixes: Vec<Digest>,
    /// The canonical instruction texts hashed, in build order (same length as `prefixes`): lets
    /// the runner show which step a prefix hit stops at.
    pub instructions: Vec<String>,
    /// The key of each stage the build needs, in file order; the target stage's key equals
    /// [`Self::key`].
    pub stages: Vec<StageKeys>,
}

/// The key of one needed stage, so the runner can cache a builder stage on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKeys {
    /// Index of the stage in the Dockerfile (`COPY --from=<index>` numbering).
    pub index: usize,
    /// The stage's `AS` name, lowercased.
    pub name: Option<String>,
    /// The key of building just this stage (as `--target`): its chain is the global ARGs, the
    /// stages it depends on and itself.
    pub key: CacheKey,
    /// How many leading entries of [`CacheKeys::prefixes`] equal this stage's own
    /// [`Self::prefixes`]: for the usual builder → final shape, the whole stage chain.
    pub prefixes_len: usize,
    /// The stage's own prefix hashes (global ARGs, its dependencies, itself): what to send with
    /// [`Self::key`].
    pub prefixes: Vec<Digest>,
}

/// The platform a build runs on and for: what BuildKit's automatic platform args say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS spelling: `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`.
    pub arch: String,
    /// `v7` for 32-bit arm, else empty.
    pub variant: String,
}

impl Platform {
    /// The platform of an engine that reports `os` and `arch` (`docker version`'s `Os`, `Arch`,
    /// already in Go's spelling); 32-bit arm gets BuildKit's default variant `v7`.
    pub fn new(os: &str, arch: &str) -> Platform {
        Platform {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: if arch == "arm" {
                "v7".into()
            } else {
                String::new()
            },
        }
    }

    /// This machine's platform in Go's spelling: for `layercache key`, which asks no engine.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch)
    }

    /// `linux/amd64`, `linux/arm/v7`.
    pub fn spec(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.arch)
        } else {
            format!("{}/{}/{}", self.os, self.arch, self.variant)
        }
    }

    /// The automatic args BuildKit defines, by name.
    pub fn automatic_args(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for side in ["TARGET", "BUILD"] {
            out.insert(format!("{side}PLATFORM"), self.spec());
            out.insert(format!("{side}OS"), self.os.clone());
            out.insert(format!("{side}ARCH"), self.arch.clone());
            out.insert(format!("{side}VARIANT"), self.variant.clone());
        }
        out
    }
}

/// Computes the keys of building `dockerfile` (its text) with `build_args` for `target` (a stage
/// name, case-insensitive; `None` = the last stage) on `platform`.
///
/// Errors: [`KeyError::Parse`] when the Dockerfile is invalid (with the line),
/// [`KeyError::UnknownTarget`] when `target` names no stage.
pub fn compute(
    dockerfile: &str,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
    platform: &Platform,
) -> Result<CacheKeys, KeyError> {
    compute_parsed(
        &dockerfile::parse(dockerfile)?,
        build_args,
        target,
        platform,
    )
}

/// [`compute`] for an already parsed Dockerfile.
pub fn compute_parsed(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
    platform: &Platform,
) -> Result<CacheKeys, KeyError> {
    // The automatic args act as build args the user did not give (theirs win), so a declared
    // `ARG TARGETOS` takes the platform's value.
    let automatic = platform.automatic_args();
    let mut with_auto = automatic.clone();
    with_auto.extend(build_args.iter().map(|(k, v)| (k.clone(), v.clone())));
    let build_args = &with_auto;
    let target_index = match target {
        None => df.stages.len() - 1,
        Some(name) => {
            df.stage_named(name)
                .ok_or_else(|| KeyError::UnknownTarget {
                    target: name.to_string(),
                    stages: df.stage_names().into_iter().map(str::to_string).collect(),
                })?
                .index
        }
    };

    // Effective values of the global ARGs: for `FROM $BASE`, `--from=$STAGE` and for in-stage
    // `ARG NAME` without default, which inherits them.
    // Undeclared automatic args are visible in `FROM` too, unlike other build args.
    let mut globals: BTreeMap<String, Option<String>> = automatic
        .keys()
        .map(|k| (k.clone(), build_args.get(k).cloned()))
        .collect();
    let mut global_texts = Vec::new();
    for instruction in &df.global_args {
        let mut values = Vec::new();
        for decl in instruction.arg_decls(df.escape) {
            let value = build_args
                .get(&decl.name)
                .cloned()
                .or_else(|| decl.default.map(|d| expand(&d, &globals, df.escape)));
            values.push((decl.name.clone(), value.clone()));
            globals.insert(decl.name, value);
        }
        global_texts.push(arg_text(&values));
    }

    let deps: Vec<BTreeSet<usize>> = df
        .stages
        .iter()
        .map(|s| direct_deps(df, s.index, &globals))
        .collect();
    let stage_texts: Vec<Vec<String>> = df
        .stages
        .iter()
        .map(|s| {
            std::iter::once(&s.from)
                .chain(&s.instructions)
                .map(|i| key_text(i, build_args, &globals, df.escape))
                .collect()
        })
        .collect();
    let chain_of = |stages: &BTreeSet<usize>| -> Vec<String> {
        let mut texts = global_texts.clone();
        for &s in stages {
            texts.extend(stage_texts[s].iter().cloned());
        }
        texts
    };

    let needed = closure(&deps, target_index);
    let instructions = chain_of(&needed);
    let prefixes = prefix_chain(&instructions);
    let key = final_key(&prefixes, &label(df, target_index));

    let stages = needed
        .iter()
        .map(|&s| {
            let own = prefix_chain(&chain_of(&closure(&deps, s)));
            let prefixes_len = own
                .iter()
                .zip(&prefixes)
                .take_while(|(a, b)| a == b)
                .count();
            StageKeys {
                index: s,
                name: df.stages[s].name.clone(),
                key: final_key(&own, &label(df, s)),
                prefixes_len,
                prefixes: own,
            }
        })
        .collect();

    Ok(CacheKeys {
        key,
        prefixes,
        instructions,
        stages,
    })
}

/// The prefix hashes of a chain of canonical instruction texts (see the module docs).
pub fn prefix_chain(instructions: &[String]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(instructions.len());
    for text in instructions {
        let input = match out.last() {
            None => format!("layercache-prefix-v1\n{text}"),
            Some(previous) => format!("{}\n{text}", previous.hex()),
        };
        out.push(Digest::of(input.as_bytes()));
    }
    out
}

/// The key from the last prefix hash and the target label.
fn final_key(prefixes: &[Digest], label: &str) -> CacheKey {
    let last = prefixes.last().map(Digest::hex).unwrap_or_default();
    let digest = Digest::of(format!("layercache-key-v1\n{last}\ntarget={label}").as_bytes());
    digest
        .to_string()
        .parse()
        .expect("`sha256:<64 hex>` is always a valid cache key")
}

/// The name of a stage, or its index when unnamed.
fn label(df: &Dockerfile, index: usize) -> String {
    df.stages[index]
        .name
        .clone()
        .unwrap_or_else(|| index.to_string())
}

/// The text an instruction contributes to the chain: its canonical text, or for an `ARG` the
/// names with their effective values.
fn key_text(
    instruction: &Instruction,
    build_args: &BTreeMap<String, String>,
    globals: &BTreeMap<String, Option<String>>,
    escape: char,
) -> String {
    if instruction.keyword != "ARG" {
        return instruction.canonical();
    }
    let values: Vec<(String, Option<String>)> = instruction
        .arg_decls(escape)
        .into_iter()
        .map(|decl| {
            let value = match (build_args.get(&decl.name), decl.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => Some(default),
                (None, None) => globals.get(&decl.name).cloned().flatten(),
            };
            (decl.name, value)
        })
        .collect();
    arg_text(&values)
}

/// `ARG A="1" B`: set values JSON-quoted (so `A=""` differs from unset `A`), unset names bare.
fn arg_text(values: &[(String, Option<String>)]) -> String {
    let mut out = "ARG".to_string();
    for (name, value) in values {
        out.push(' ');
        out.push_str(name);
        if let Some(v) = value {
            out.push('=');
            out.push_str(&serde_json::Value::String(v.clone()).to_string());
        }
    }
    out
}

/// The stages stage `index` uses directly: `FROM <stage>`, `COPY --from=<stage|index>`,
/// `RUN --mount=…,from=<stage|index>`. Other references are external images.
fn direct_deps(
    df: &Dockerfile,
    index: usize,
    globals: &BTreeMap<String, Option<String>>,
) -> BTreeSet<usize> {
    let stage = &df.stages[index];
    let mut out = BTreeSet::new();
    let base = expand(&stage.base, globals, df.escape).to_ascii_lowercase();
    // `FROM` can only name a stage defined above it.
    if let Some(dep) = df.stages[..index]
        .iter()
        .find(|s| s.name.as_deref() == Some(base.as_str()))
    {
        out.insert(dep.index);
    }
    let mut references = Vec::new();
    for instruction in &stage.instructions {
        for flag in &instruction.flags {
            match (flag.name.as_str(), &flag.value) {
                ("from", Some(v)) => references.push(v.clone()),
                ("mount", Some(spec)) => references.extend(
                    spec.split(',')
                        .filter_map(|kv| kv.trim().strip_prefix("from="))
                        .map(str::to_string),
                ),
                _ => {}
            }
        }
    }
    for reference in references {
        let reference = expand(&reference, globals, df.escape).to_ascii_lowercase();
        let found = match reference.parse::<usize>() {
            Ok(n) if n < df.stages.len() => Some(n),
            Ok(_) => None,
            Err(_) => df.stage_named(&reference).map(|s| s.index),
        };
        if let Some(dep) = found.filter(|&d| d != index) {
            out.insert(dep);
        }
    }
    out
}

/// `start` and every stage it depends on, transitively (cycles are cut, not followed forever).
fn closure(deps: &[BTreeSet<usize>], start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(s) = todo.pop() {
        if seen.insert(s) {
            todo.extend(deps[s].iter().copied());
        }
    }
    seen
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`
/// with `vars` (unset or unknown → empty), as Docker does for `FROM` and `--from` values.
/// The escape character before `$` keeps it literal.
fn expand(text: &str, vars: &BTreeMap<String, Option<String>>, escape: char) -> String {
    let lookup = |name: &str| vars.get(name).cloned().flatten();
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut inner = String::new();
            let mut closed = false;
            for n in chars.by_ref() {
                if n == '}' {
                    closed = true;
                    break;
                }
                inner.push(n);
            }
            if !closed {
                out.push_str("${");
                out.push_str(&inner);
                continue;
            }
            let split = inner.find([':', '-', '+']).unwrap_or(inner.len());
            let (name, op) = inner.split_at(split);
            let value = lookup(name);
            let expanded = match op {
                "" => value.unwrap_or_default(),
                _ if op.starts_with(":-") => value
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| op[2..].to_string()),
                _ if op.starts_with(":+") => match value.filter(|v| !v.is_empty()) {
                    Some(_) => op[2..].to_string(),
                    None => String::new(),
                },
                _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
                _ if op.starts_with('+') => match value {
                    Some(_) => op[1..].to_string(),
                    None => String::new(),
                },
                _ => value.unwrap_or_default(),
            };
            out.push_str(&expanded);
        } else {
            let mut name = String::new();
            while let Some(&n) = chars.peek() {
                if n.is_ascii_alphanumeric() || n == '_' {
                    name.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(&lookup(&name).unwrap_or_default());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> CacheKeys {
        compute(text, &BTreeMap::new(), None, &linux_amd64()).expect("keys")
    }

    fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64")
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn prefix_chain_matches_the_documented_formula() {
        let texts = vec!["FROM scratch".to_string(), "RUN make".to_string()];
        let chain = prefix_chain(&texts);
        let p1 = Digest::of(b"layercache-prefix-v1\nFROM scratch");
        let p2 = Digest::of(format!("{}\nRUN make", p1.hex()).as_bytes());
        assert_eq!(chain, vec![p1, p2]);
        let k = keys("FROM scratch\nRUN make\n");
        assert_eq!(k.prefixes, chain);
        let expected = Digest::of(format!("layercache-key-v1\n{}\ntarget=0", p2.hex()).as_bytes());
        assert_eq!(k.key.as_str(), expected.to_string());
    }

    #[test]
    fn key_is_a_valid_sha256_cache_key() {
        let k = keys("FROM scratch\n");
        assert!(k.key.as_str().parse::<Digest>().is_ok(), "{}", k.key);
        assert_eq!(k.instructions, vec!["FROM scratch"]);
    }

    #[test]
    fn arg_text_distinguishes_empty_from_unset() {
        let a = keys("FROM scratch\nARG X=\n");
        let b = keys("FROM scratch\nARG X\n");
        assert_eq!(a.instructions[1], "ARG X=\"\"");
        assert_eq!(b.instructions[1], "ARG X");
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn build_arg_equal_to_default_gives_same_key() {
        let text = "FROM scratch\nARG V=1\nRUN echo $V\n";
        assert_eq!(
            compute(text, &args(&[("V", "1")]), None, &linux_amd64()).unwrap(),
            keys(text)
        );
    }

    #[test]
    fn in_stage_arg_inherits_global_value() {
        let text = "ARG V=1\nFROM scratch\nARG V\n";
        assert_eq!(keys(text).instructions[2], "ARG V=\"1\"");
        let given = compute(text, &args(&[("V", "2")]), None, &linux_amd64()).unwrap();
        assert_eq!(given.instructions[0], "ARG V=\"2\"");
        assert_eq!(given.instructions[2], "ARG V=\"2\"");
    }

    #[test]
    fn expand_handles_docker_forms() {
        let vars: BTreeMap<String, Option<String>> = [
            ("A".to_string(), Some("a".to_string())),
            ("E".to_string(), Some(String::new())),
            ("U".to_string(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(expand("x-$A-${A}", &vars, '\\'), "x-a-a");
        assert_eq!(
            expand("${E:-d}|${E-d}|${U-d}|${N:-d}", &vars, '\\'),
            "d||d|d"
        );
        assert_eq!(
            expand("${A:+y}|${E:+y}|${E+y}|${U+y}", &vars, '\\'),
            "y||y|"
        );
        assert_eq!(expand("\\$A $ ${A", &vars, '\\'), "$A $ ${A");
    }

    #[test]
    fn from_variable_resolves_stage_dependency() {
        let text = "ARG SRC=build\nFROM scratch AS build\nRUN make\nFROM scratch AS other\nRUN x\n\
                    FROM ${SRC}\nRUN ls\n";
        let k = keys(text);
        let used: Vec<usize> = k.stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![0, 2], "the unrelated stage is not in the chain");
        let k2 = compute(text, &args(&[("SRC", "other")]), None, &linux_amd64()).unwrap();
        let used: Vec<usize> = k2.stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![1, 2]);
    }

    #[test]
    fn mount_from_and_numeric_from_are_dependencies() {
        let text = "FROM scratch AS a\nRUN a\nFROM scratch AS b\nRUN b\nFROM scratch\n\
                    RUN --mount=type=bind,from=a,target=/a x\nCOPY --from=1 /b /b\n";
        let used: Vec<usize> = keys(text).stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![0, 1, 2]);
    }

    /// Regression: `FROM binaries-$TARGETOS` resolved to `binaries-`, leaving the real stage out.
    #[test]
    fn automatic_platform_args_resolve_from_lines_without_a_declaration() {
        let text = "FROM scratch AS binaries-linux\nRUN l\nFROM scratch AS binaries-darwin\nRUN d\n\
                    FROM binaries-$TARGETOS\nRUN ls\n";
        let used: Vec<usize> = keys(text).stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![0, 2]);
        let darwin = compute(
            text,
            &BTreeMap::new(),
            None,
            &Platform::new("darwin", "arm64"),
        );
        let used: Vec<usize> = darwin.unwrap().stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![1, 2]);
        // A build arg of the same name wins, as the user said so.
        let given = compute(text, &args(&[("TARGETOS", "darwin")]), None, &linux_amd64());
        let used: Vec<usize> = given.unwrap().stages.iter().map(|s| s.index).collect();
        assert_eq!(used, vec![1, 2]);
    }

    #[test]
    fn a_declared_platform_arg_takes_the_platforms_value() {
        let k = keys("FROM scratch\nARG TARGETARCH TARGETPLATFORM BUILDVARIANT\nRUN x\n");
        assert_eq!(
            k.instructions[1],
            "ARG TARGETARCH=\"amd64\" TARGETPLATFORM=\"linux/amd64\" BUILDVARIANT=\"\""
        );
        let arm = compute(
            "FROM scratch\nARG TARGETARCH\n",
            &BTreeMap::new(),
            None,
            &Platform::new("linux", "arm64"),
        )
        .unwrap();
        assert_ne!(arm.key, keys("FROM scratch\nARG TARGETARCH\n").key);
        // Undeclared, they change nothing (the automatic args are not in the chain).
        assert_eq!(
            keys("FROM scratch\nRUN x\n").instructions,
            ["FROM scratch", "RUN x"]
        );
        assert_eq!(Platform::new("linux", "arm").spec(), "linux/arm/v7");
    }

    #[test]
    fn cyclic_references_terminate() {
        let text = "FROM scratch AS a\nCOPY --from=b x y\nFROM scratch AS b\nCOPY --from=a x y\n";
        let k = keys(text);
        assert_eq!(k.stages.len(), 2);
    }
}
