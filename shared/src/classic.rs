//! What the classic (legacy) builder refuses: BuildKit-only Dockerfile syntax.
//!
//! The runner checks a Dockerfile with [`refusals`] before it starts a classic build, so a user
//! who asked for (or whose engine only has) the classic builder learns which lines need BuildKit
//! before anything runs, instead of from an engine error halfway through the build. The list
//! follows what Engine 20.10 and 26.1's classic builder do (measured): builder flags other than
//! those below and heredocs are refused, at parse time or when the step is reached.

use crate::dockerfile::{Dockerfile, Instruction};

/// The builder flags the classic builder accepts, per keyword; any other flag is BuildKit-only.
fn classic_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "COPY" => &["from", "chown"],
        "ADD" => &["chown"],
        "HEALTHCHECK" => &["interval", "timeout", "start-period", "retries"],
        _ => &[],
    }
}

/// One line the classic builder refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The 1-based line of the instruction.
    pub line: usize,
    /// What on it needs BuildKit: `RUN --mount`, `COPY --chmod`, `heredoc <<EOF`.
    pub feature: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.feature)
    }
}

/// Every BuildKit-only feature `df` uses, in file order (empty: the classic builder can build it).
pub fn refusals(df: &Dockerfile) -> Vec<Refusal> {
    let mut out = Vec::new();
    let all = df.global_args.iter().chain(
        df.stages
            .iter()
            .flat_map(|s| std::iter::once(&s.from).chain(&s.instructions)),
    );
    for instruction in all {
        check(instruction, &mut out);
    }
    out
}

fn check(instruction: &Instruction, out: &mut Vec<Refusal>) {
    let allowed = classic_flags(&instruction.keyword);
    let mut seen: Vec<&str> = Vec::new();
    for flag in &instruction.flags {
        if !allowed.contains(&flag.name.as_str()) && !seen.contains(&flag.name.as_str()) {
            seen.push(&flag.name);
            out.push(Refusal {
                line: instruction.line,
                feature: format!("{} --{}", instruction.keyword, flag.name),
            });
        }
    }
    for doc in &instruction.heredocs {
        out.push(Refusal {
            line: instruction.line,
            feature: format!("{} heredoc <<{}", instruction.keyword, doc.name),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn found(text: &str) -> Vec<String> {
        refusals(&parse(text).unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn flags_and_heredocs_the_classic_builder_refuses_are_listed_with_their_lines() {
        let text = "FROM --platform=linux/amd64 scratch AS b\n\
                    COPY --from=b --chown=1 a /a\n\
                    COPY --chmod=755 --link a /b\n\
                    RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t make\n\
                    RUN <<EOF\necho hi\nEOF\n\
                    HEALTHCHECK --interval=5s --start-interval=1s CMD true\n";
        assert_eq!(
            found(text),
            [
                "line 3: COPY --chmod",
                "line 3: COPY --link",
                "line 4: RUN --mount",
                "line 5: RUN heredoc <<EOF",
                "line 8: HEALTHCHECK --start-interval",
            ]
        );
    }

    #[test]
    fn a_classic_dockerfile_has_no_refusals() {
        let text = "ARG V=1\nFROM scratch\nCOPY --chown=0:0 a /a\nADD --chown=1 b /b\n\
                    HEALTHCHECK --interval=5s --retries=3 CMD true\nRUN make\n";
        assert!(found(text).is_empty());
    }
}
