//! Honest hit accounting: how many build steps the engine ran and how many it reused, read from the
//! engine's own build output, so a restore the build did not use is not reported as a hit.
//!
//! - Classic builder: each `Step N/M : INSTR` except `FROM`; reused when ` ---> Using cache`
//!   follows before the next step.
//! - BuildKit (`--progress=plain`): each vertex named `[stage n/m] INSTR` except `FROM`; reused when
//!   its `#K CACHED` line comes, or when it only downloads or extracts its result from the
//!   imported cache (`#K sha256:… 1MB / 1MB done`, `#K extracting sha256:…`: for a step a later
//!   step that runs builds on) and prints nothing of its own; run otherwise. (Metadata-only instructions,
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
    /// Step vertices by number.
    steps: BTreeMap<u64, Vertex>,
}

/// What the output said of one step vertex.
#[derive(Debug, Default, Clone, Copy)]
struct Vertex {
    /// `#K CACHED`.
    cached: bool,
    /// Its result came from the imported cache: layer downloads (`#K sha256:… 1.06MB / 1.06MB
    /// done`) or `#K extracting sha256:…`, without the step running. Which of the two BuildKit
    /// prints depends on timing, so either counts.
    fetched: bool,
    /// The step's command printed (`#K 0.301 text`): it ran.
    output: bool,
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
                self.steps.entry(num).or_default();
            }
            return;
        }
        let Some(v) = self.steps.get_mut(&num) else {
            return;
        };
        let first = rest.split(' ').next().unwrap_or_default();
        if rest == "CACHED" {
            v.cached = true;
        } else if rest.starts_with("extracting sha256:")
            || (first.starts_with("sha256:") && rest.contains(" / "))
        {
            v.fetched = true;
        } else if first.parse::<f64>().is_ok() {
            v.output = true;
        }
    }

    /// The counts, once the output ended; a step is reused when cached, or fetched from the
    /// imported cache without printing anything of its own; every other step vertex ran (or
    /// never ended, which counts as run too).
    pub fn finish(self) -> StepCounts {
        let mut counts = StepCounts::default();
        for v in self.steps.values() {
            if v.cached || (v.fetched && !v.output) {
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

    /// Seen on Engine 26.1 (containerd store): a step whose layers were only downloaded from the
    /// imported cache, no `extracting` line; it did not run (its marker never printed).
    #[test]
    fn buildkit_steps_fetched_from_the_cache_without_extracting_are_reused() {
        let out = "#8 [stage-1 2/3] COPY --from=build /one /one\n#8 CACHED\n\
                   #9 [stage-1 3/3] RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran-final\"]\n\
                   #9 sha256:e27e24e8d882 154B / 154B 0.0s done\n\
                   #9 sha256:5025fff788fc 1.06MB / 1.06MB 0.0s done\n#9 DONE 0.1s\n\
                   #10 [stage-1 4/4] RUN echo again\n#10 sha256:aa 1B / 1B done\n\
                   #10 0.215 again\n#10 DONE 0.3s\n";
        let mut c = BuildkitCounter::default();
        out.lines().for_each(|l| c.line(l));
        assert_eq!(c.finish(), StepCounts { run: 1, reused: 2 });
    }
}
