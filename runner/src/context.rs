//! The build context tarball sent to the engine, made deterministic.
//!
//! The legacy builder keys the cache of `COPY`/`ADD` on the file headers and contents the client
//! sends, so two checkouts of one commit must produce byte-identical tars: paths sorted, mtime 0,
//! uid/gid 0, no user or group names, modes normalised to 0644/0755 (the exec bit kept), symlinks
//! stored as symlinks. `.dockerignore` is honoured with Docker's own rules ([`IgnoreRules`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// Name under which a Dockerfile from outside the context is added to it.
pub const OUTSIDE_DOCKERFILE_NAME: &str = ".layercache.Dockerfile";

/// Why the context could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(
        "cannot read the build context `{path}`: {source}; check that it exists and is readable"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad .dockerignore pattern `{pattern}`: {reason}; fix or remove that line")]
    Pattern { pattern: String, reason: String },
    #[error("cannot write the build context tar: {0}")]
    Tar(#[source] io::Error),
}

/// A packed context: the tar bytes and the Dockerfile's name inside it (for the build's `dockerfile`).
pub struct PackedContext {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// Path of the Dockerfile relative to the context root, `/`-separated.
    pub dockerfile: String,
    /// Files packed (for the log line).
    pub files: usize,
}

/// One `.dockerignore` line, compiled.
#[derive(Debug)]
struct Rule {
    /// The line matches a path when one of these does (a `**` glued to other characters, which
    /// globset does not take, is expanded into the alternatives it stands for).
    globs: Vec<GlobMatcher>,
    /// A `!` line: re-includes what earlier lines excluded.
    exception: bool,
}

/// `.dockerignore` rules with Docker's semantics (moby's `ignorefile` + `patternmatcher`):
/// - lines are trimmed; empty lines and `#` comments are skipped; `!` starts an exception
///   (a lone `!` is an error, as in Docker);
/// - each pattern is cleaned like Go's `filepath.Clean` (`./`, `//`, trailing `/`, `a/..` go)
///   and a leading `/` is dropped: patterns are anchored at the context root;
/// - `*` and `?` stay within one path part (Go's `filepath.Match`), `[a-z]`/`[^a-z]` are classes,
///   `\` escapes; `**` spans any number of parts, also glued to text (`**file`, `a**/*.txt`);
/// - a path matches a line when it or one of its parent directories does (so a matching
///   directory excludes its contents), and the last matching line wins.
///
/// Matching is globset's (`literal_separator`, `backslash_escape`); this type only cleans the
/// patterns and applies Docker's parent and ordering rules.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

/// Most alternatives one line may expand to (each glued `**` doubles them).
const MAX_ALTERNATIVES: usize = 16;

impl IgnoreRules {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<IgnoreRules, ContextError> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| ContextError::Pattern {
                pattern: line.to_string(),
                reason,
            };
            let (exception, pattern) = match line.strip_prefix('!') {
                Some("") => return Err(bad("a `!` needs a pattern after it".into())),
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let globs = expand_glued_stars(&cleaned)
                .iter()
                .map(|alt| {
                    GlobBuilder::new(&escape_braces(alt))
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                        .map(|g| g.compile_matcher())
                        .map_err(|e| bad(e.kind().to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if globs.len() > MAX_ALTERNATIVES {
                return Err(bad("too many `**` glued to other characters".into()));
            }
            rules.push(Rule { globs, exception });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether any `!` line exists (then excluded directories must still be walked).
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative, `/`-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for rule in &self.rules {
            let matches = |p: &str| rule.globs.iter().any(|g| g.is_match(p));
            // A pattern naming a parent directory (any of them) excludes the tree below it.
            let hit =
                matches(path) || (1..parts.len()).any(|depth| matches(&parts[..depth].join("/")));
            if hit {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// Like Go's `filepath.Clean` for the relative patterns Docker uses, then without a leading `/`:
/// no empty or `.` parts, `x/..` resolved (a `..` above the root is kept, as Go keeps it).
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if pattern.starts_with('/') => {}
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Docker reads `{`, `}` literally; globset would take them as alternation.
fn escape_braces(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut escaped = false;
    for c in pattern.chars() {
        if !escaped && matches!(c, '{' | '}') {
            out.push('\\');
        }
        escaped = !escaped && c == '\\';
        out.push(c);
    }
    out
}

/// Docker turns `**` into "any text ending in `/`, or nothing" wherever it stands, and a final
/// `**` into "anything". globset takes `**` only as a whole path part, so a `**` glued to other
/// characters becomes the globs it stands for: `P**Q` → `PQ` and `P*/**/Q`; a final `P**` → `P*`
/// and `P*/**`; a leading `**Q` → `**/Q`.
fn expand_glued_stars(pattern: &str) -> Vec<String> {
    let Some(at) = glued_double_star(pattern) else {
        return vec![pattern.to_string()];
    };
    let (before, after) = (&pattern[..at], &pattern[at + 2..]);
    let after_part = after.strip_prefix('/').unwrap_or(after);
    let alternatives = if before.is_empty() {
        vec![format!("**/{after_part}")]
    } else if after.is_empty() {
        vec![format!("{before}*"), format!("{before}*/**")]
    } else if before.ends_with('/') {
        vec![
            format!("{before}{after_part}"),
            format!("{before}**/{after_part}"),
        ]
    } else {
        vec![
            format!("{before}{after_part}"),
            format!("{before}*/**/{after_part}"),
        ]
    };
    alternatives
        .iter()
        .flat_map(|a| expand_glued_stars(a))
        .collect()
}

/// The byte offset of the first unescaped `**` that is not a whole path part.
fn glued_double_star(pattern: &str) -> Option<usize> {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'*' if b[i + 1] == b'*' => {
                let starts_part = i == 0 || b[i - 1] == b'/';
                let ends_part = i + 2 == b.len() || b[i + 2] == b'/';
                if !(starts_part && ends_part) {
                    return Some(i);
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Packs `context_dir` with `dockerfile` (which may lie outside it; then it is added as
/// [`OUTSIDE_DOCKERFILE_NAME`]). The Dockerfile and `.dockerignore` are always sent, as Docker does.
pub fn pack(context_dir: &Path, dockerfile: &Path) -> Result<PackedContext, ContextError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Read { path, source }
    };
    let root = fs::canonicalize(context_dir).map_err(read_err(context_dir))?;
    let ignore_path = root.join(".dockerignore");
    let rules = match fs::read_to_string(&ignore_path) {
        Ok(text) => IgnoreRules::parse(&text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(read_err(&ignore_path)(e)),
    };
    let df_abs = fs::canonicalize(dockerfile).map_err(read_err(dockerfile))?;
    let inside = df_abs
        .strip_prefix(&root)
        .ok()
        .and_then(|rel| rel.to_str())
        .map(|rel| rel.replace('\\', "/"));
    let always: Vec<String> = [Some(".dockerignore".to_string()), inside.clone()]
        .into_iter()
        .flatten()
        .collect();

    let mut entries = Vec::new();
    walk(&root, "", &rules, &always, &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let mut builder = tar::Builder::new(Vec::new());
    let mut files = 0;
    for (rel, path) in &entries {
        let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            append(
                &mut builder,
                &format!("{rel}/"),
                tar::EntryType::Directory,
                0o755,
                &[],
            )?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(read_err(path))?;
            let mut header = header(tar::EntryType::Symlink, 0o777, 0);
            builder
                .append_link(&mut header, rel, &target)
                .map_err(ContextError::Tar)?;
        } else if ft.is_file() {
            let data = fs::read(path).map_err(read_err(path))?;
            append(
                &mut builder,
                rel,
                tar::EntryType::Regular,
                file_mode(&meta),
                &data,
            )?;
            files += 1;
        }
        // Sockets, FIFOs and devices are not sent (Docker refuses most of them anyway).
    }
    let dockerfile_name = match inside {
        Some(rel) => rel,
        None => {
            let data = fs::read(&df_abs).map_err(read_err(&df_abs))?;
            append(
                &mut builder,
                OUTSIDE_DOCKERFILE_NAME,
                tar::EntryType::Regular,
                0o644,
                &data,
            )?;
            files += 1;
            OUTSIDE_DOCKERFILE_NAME.to_string()
        }
    };
    let tar = builder.into_inner().map_err(ContextError::Tar)?;
    Ok(PackedContext {
        tar,
        dockerfile: dockerfile_name,
        files,
    })
}

/// 0755 when any exec bit is set, else 0644.
fn file_mode(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 != 0 {
            return 0o755;
        }
    }
    let _ = meta;
    0o644
}

/// A header with everything that varies between checkouts zeroed.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // new_gnu leaves uname/gname empty.
    h
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) -> Result<(), ContextError> {
    let mut h = header(kind, mode, data.len() as u64);
    builder
        .append_data(&mut h, path, data)
        .map_err(ContextError::Tar)
}

/// Collects `(relative path, absolute path)` of everything not excluded under `dir`.
fn walk(
    dir: &Path,
    prefix: &str,
    rules: &IgnoreRules,
    always: &[String],
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), ContextError> {
    let read_err = |source| ContextError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut children: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        children.push((name, entry.path()));
    }
    children.sort();
    for (name, path) in children {
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let is_dir = fs::symlink_metadata(&path)
            .map_err(|source| ContextError::Read {
                path: path.clone(),
                source,
            })?
            .is_dir();
        let keep = always.contains(&rel) || !rules.excluded(&rel);
        if is_dir {
            let needed_below = always.iter().any(|a| a.starts_with(&format!("{rel}/")));
            if keep || rules.has_exceptions() || needed_below {
                let before = out.len();
                if keep {
                    out.push((rel.clone(), path.clone()));
                }
                walk(&path, &rel, rules, always, out)?;
                if !keep && out.len() > before {
                    // A re-included file below an excluded directory needs its directory entry.
                    out.insert(before, (rel, path));
                }
            }
        } else if keep {
            out.push((rel, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn same_files_with_different_mtimes_pack_identically() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for root in [a.path(), b.path()] {
            write(root, "Dockerfile", "FROM scratch\n");
            write(root, "src/main.rs", "fn main() {}\n");
            write(root, "z.txt", "z");
        }
        let old = fs::File::options()
            .write(true)
            .open(b.path().join("src/main.rs"))
            .unwrap();
        old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        let pa = pack(a.path(), &a.path().join("Dockerfile")).unwrap();
        let pb = pack(b.path(), &b.path().join("Dockerfile")).unwrap();
        assert!(pa.tar == pb.tar, "context tars differ");
        assert_eq!(
            names(&pa.tar),
            ["Dockerfile", "src/", "src/main.rs", "z.txt"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn modes_are_normalised_keeping_the_exec_bit_and_symlinks_stay_links() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM scratch\n");
        write(d.path(), "run.sh", "#!/bin/sh\n");
        write(d.path(), "data", "x");
        fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(d.path().join("data"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("data", d.path().join("link")).unwrap();
        let p = pack(d.path(), &d.path().join("Dockerfile")).unwrap();
        let mut a = tar::Archive::new(&p.tar[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.username().unwrap(), Some(""));
            match e.path().unwrap().to_str().unwrap() {
                "run.sh" => assert_eq!(h.mode().unwrap(), 0o755),
                "data" => assert_eq!(h.mode().unwrap(), 0o644),
                "link" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                    assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("data"));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn dockerignore_excludes_with_exceptions_but_keeps_dockerfile() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            ".dockerignore",
            "# comment\nDockerfile\ntarget\n*.log\n!keep.log\nnode_modules/**\n",
        );
        write(d.path(), "Dockerfile", "FROM scratch\n");
        write(d.path(), "target/debug/x", "x");
        write(d.path(), "a.log", "x");
        write(d.path(), "keep.log", "x");
        write(d.path(), "sub/a.log", "x");
        write(d.path(), "node_modules/m/i.js", "x");
        let p = pack(d.path(), &d.path().join("Dockerfile")).unwrap();
        assert_eq!(
            names(&p.tar),
            [
                ".dockerignore",
                "Dockerfile",
                "keep.log",
                "node_modules/",
                "sub/",
                "sub/a.log"
            ]
        );
        assert_eq!(p.dockerfile, "Dockerfile");
    }

    #[test]
    fn dockerfile_outside_the_context_is_added_under_a_generated_name() {
        let (ctx, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(ctx.path(), "a", "a");
        write(other.path(), "Dockerfile.ci", "FROM scratch\n");
        let p = pack(ctx.path(), &other.path().join("Dockerfile.ci")).unwrap();
        assert_eq!(p.dockerfile, OUTSIDE_DOCKERFILE_NAME);
        assert_eq!(names(&p.tar), ["a", OUTSIDE_DOCKERFILE_NAME]);
    }

    #[test]
    fn ignore_rules_follow_docker_semantics() {
        let r =
            IgnoreRules::parse("**/*.tmp\n/docs/*.md\n!docs/README.md\nb?n\n[xy].txt\n").unwrap();
        assert!(r.excluded("a.tmp"));
        assert!(r.excluded("deep/er/a.tmp"));
        assert!(r.excluded("docs/guide.md"));
        assert!(!r.excluded("docs/README.md"));
        assert!(
            !r.excluded("docs/sub/guide.md"),
            "`*` stays in one path part"
        );
        assert!(
            r.excluded("bin/tool"),
            "a matching directory excludes its contents"
        );
        assert!(r.excluded("x.txt"));
        assert!(!r.excluded("z.txt"));
        assert!(
            !r.excluded("sub/x.txt"),
            "patterns are anchored at the root"
        );
    }

    /// Docker's own cases (moby `patternmatcher` and `ignorefile` behaviour, re-stated here with
    /// our paths): `(lines of .dockerignore, path, excluded)`.
    #[test]
    fn ignore_rules_match_dockers_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "main.go", true),
            ("*.go", "main.go", true),
            ("*.go", "cmd/main.go", false),
            ("!main.go\n*.go", "main.go", true),
            ("*.go\n!main.go", "main.go", false),
            ("docs\n!docs/README.md", "docs/README.md", false),
            ("docs/\n!docs/README.md", "docs/README.md", false),
            ("docs/*\n!docs/README.md", "docs/README.md", false),
            ("docs\n!docs/README.md", "docs/other.md", true),
            ("**", "a", true),
            ("**", "a/b/c", true),
            ("**/", "a/b", true),
            ("**/**", "a/b", true),
            ("out/**", "out/x", true),
            ("out/**", "out/x/y", true),
            ("out/**", "out", false),
            ("**/out", "out", true),
            ("**/out", "out/x", true),
            ("**/out", "a/b/out", true),
            ("**/lib/*", "a/lib/x", true),
            ("**/lib/**", "a/lib/b/x", true),
            ("**name", "name", true),
            ("**name", "a/name", true),
            ("**name", "a/b/name", true),
            ("**/name*", "a/b/name.txt", true),
            ("**/n*.txt", "a/b/name.txt", true),
            ("**/**/*.txt", "a/b/name.txt", true),
            ("**/**/*.txt2", "a/b/name.txt", false),
            ("**/*.txt", "name.txt", true),
            ("p**/*.txt", "p/name.txt", true),
            ("p**/*.txt", "p/a/name.txt", true),
            ("p**/*.txt", "p/a/b/name.txt", true),
            ("p/*.txt", "p/a/name.txt", false),
            ("p/*.txt", "p/name.txt", true),
            ("p/*.txt**", "p/name.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".env", true),
            (".*", "env", false),
            ("x.y", "xzy", false),
            ("x.y", "x.y", true),
            ("x?y", "xzy", true),
            ("x?y", "xy", false),
            ("x?y", "x/y", false),
            ("x*y", "x/y", false),
            ("x*/y", "xz/y", true),
            ("x*/y", "x/z/y", false),
            ("**/a/b", "a/b", true),
            ("**/a/b", "c/d/a/b", true),
            ("**/.env", ".env", true),
            ("**/.env", "x.env", false),
            ("a(b)c/d", "a(b)c/d", true),
            ("a(b)c/d", "a(b)c/e", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            ("dist/*.whl", "dist/pkg-1.0+g1-py3-none-any.whl", true),
            ("x\\*y", "x*y", true),
            ("x\\*y", "xzy", false),
            ("a*", "ab/c", true),
            // Cleaning: a leading `/` or `./`, doubled and trailing slashes, `..`.
            ("/docs", "docs/x", true),
            ("./docs", "docs/x", true),
            ("docs//a/", "docs/a", true),
            ("docs/../src", "src/main.rs", true),
            ("  docs  ", "docs", true),
            // The last matching line wins, and an exception can re-exclude.
            ("**\n!web", "web/x", false),
            ("**\n!web\nweb/x", "web/x", true),
            ("**\n!dist/*.whl", "dist/pkg.whl", false),
        ];
        for (lines, path, want) in cases {
            let r = IgnoreRules::parse(lines).unwrap();
            assert_eq!(r.excluded(path), *want, "{lines:?} on {path:?}");
        }
    }

    #[test]
    fn malformed_dockerignore_lines_are_refused() {
        for bad in ["!", "[", "a[", "[^bc"] {
            let e = IgnoreRules::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn unreadable_context_names_the_path() {
        let err = pack(
            Path::new("/nonexistent/ctx"),
            Path::new("/nonexistent/ctx/Dockerfile"),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/ctx"));
    }
}
