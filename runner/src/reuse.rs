//! Honest hit accounting: how many build steps the engine ran and how many it reused, read from the
//! engine's own build output, so a restore the build did not use is not reported as a hit.
//!
//! - Classic builder: each `Step N/M : INSTR` except `FROM`; reused when ` ---> Using cache`
//!   follows before the next step.
//! - BuildKit (`--progress=plain`): each vertex named `[stage n/m] INSTR` except `FROM`; reused when
//!   its `#K CACHED` line comes, or when it only downloads and extracts its result from the imported
//!   cache (`#K extracting sha256:…`, for a step a later step that runs builds on); run when
//!   `#K DONE` comes without either. (Metadata-only instructions,
//!   `ENV`, `LABEL`, … are no vertices in BuildKit, so the counts differ between builders.)

use std::collections::BTreeMap;

use serde::Serialize;

/// Steps of one build.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    /// Steps the engine executed.
    pub run: u64,
    /// Steps the engine took from its cache.
    pub reused: u64,
}

/// Reads classic builder output lines.
#[derive(Debug, Default)]
pub struct ClassicCounter {
    counts: StepCounts,
    /// The step being read: `Some(reused)` for a non-`FROM` step.
    current: Option<bool>,
}

impl ClassicCounter {
    /// Feeds one output line.
    pub fn line(&mut self, line: &str) {
        let t = line.trim();
        if let Some(instr) = t
            .strip_prefix("Step ")
            .and_then(|rest| rest.split_once(" : "))
            .map(|(_, i)| i.trim_start())
        {
            self.close();
            if !instr.to_ascii_uppercase().starts_with("FROM ") {
                self.current = Some(false);
            }
        } else if t == "---> Using cache"
            && let Some(reused) = self.current.as_mut()
        {
            *reused = true;
        }
    }

    fn close(&mut self) {
        match self.current.take() {
            Some(true) => self.counts.reused += 1,
            Some(false) => self.counts.run += 1,
            None => {}
        }
    }

    /// The counts, once the output ended.
    pub fn finish(mut self) -> StepCounts {
        self.close();
        self.counts
    }
}

/// Reads BuildKit's `--progress=plain` output lines.
#[derive(Debug, Default)]
pub struct BuildkitCounter {
    /// Step vertices by number: `Some(true)` cached, `Some(false)` done, `None` not ended yet.
    steps: BTreeMap<u64, Option<bool>>,
}

impl BuildkitCounter {
    /// Feeds one output line.
    pub fn line(&mut self, line: &str) {
        let Some((num, rest)) = line
            .trim()
            .strip_prefix('#')
            .and_then(|l| l.split_once(' '))
        else {
            return;
        };
        let Ok(num) = num.parse::<u64>() else {
            return;
        };
        let rest = rest.trim();
        if let Some(name) = rest.strip_prefix('[') {
            let Some((stage, instr)) = name.split_once("] ") else {
                return;
            };
            // `[internal] load …` and `[auth] …` have no `n/m`.
            let is_step = stage.rsplit(' ').next().is_some_and(|pos| {
                pos.contains('/') && pos.split('/').all(|n| n.parse::<u32>().is_ok())
            });
            if is_step && !instr.to_ascii_uppercase().starts_with("FROM ") {
                self.steps.entry(num).or_insert(None);
            }
        } else if rest == "CACHED" || rest.starts_with("extracting sha256:") {
            if let Some(state) = self.steps.get_mut(&num) {
                *state = Some(true);
            }
        } else if rest.starts_with("DONE")
            && let Some(state) = self.steps.get_mut(&num)
        {
            state.get_or_insert(false);
        }
    }

    /// The counts, once the output ended; vertices that never ended count as run.
    pub fn finish(self) -> StepCounts {
        let mut counts = StepCounts::default();
        for state in self.steps.values() {
            if *state == Some(true) {
                counts.reused += 1;
            } else {
                counts.run += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_output_counts_reused_and_run_steps_but_not_from() {
        let out = "Step 1/5 : FROM scratch AS b\n ---> \nStep 2/5 : COPY busybox /bin/busybox\n \
                   ---> Using cache\n ---> 1111111111aa\nStep 3/5 : RUN sleep 3\n ---> Running in \
                   999999999999\nRemoving intermediate container 999999999999\n ---> 2222222222bb\n\
                   Step 4/5 : FROM scratch\n ---> \nStep 5/5 : COPY --from=b /a /a\n ---> Using cache\n \
                   ---> 3333333333cc\nSuccessfully built 3333333333cc\n";
        let mut c = ClassicCounter::default();
        out.lines().for_each(|l| c.line(l));
        assert_eq!(c.finish(), StepCounts { run: 1, reused: 2 });
    }

    #[test]
    fn buildkit_plain_output_counts_cached_and_done_vertices() {
        let out = "#0 building with \"default\" instance using docker driver\n\
                   #1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n\
                   #4 importing cache manifest from 127.0.0.1:5000/main:cache\n#4 DONE 0.1s\n\
                   #5 [b 1/2] COPY busybox /bin/busybox\n#5 CACHED\n\
                   #6 [b 2/2] RUN sleep 3\n#6 0.301 hi\n#6 DONE 3.2s\n\
                   #7 [stage-1 1/2] FROM docker.io/library/alpine\n#7 DONE 0.0s\n\
                   #8 [stage-1 2/2] COPY --from=b /a /a\n#8 CACHED\n\
                   #10 [stage-1 2/2] COPY x /x\n#10 sha256:0167 101B / 101B 0.0s done\n\
                   #10 extracting sha256:0167 0.0s done\n#10 DONE 0.1s\n\
                   #9 exporting to image\n#9 DONE 0.1s\n";
        let mut c = BuildkitCounter::default();
        out.lines().for_each(|l| c.line(l));
        assert_eq!(c.finish(), StepCounts { run: 1, reused: 3 });
    }
}
