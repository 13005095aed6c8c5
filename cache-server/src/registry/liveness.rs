//! Which registry content lives, decided without I/O from the index's [`RegistryGraph`] (the
//! collector in [`crate::gc`] loads it and applies the answer).
//!
//! - A tag holds the manifest it names and everything that manifest reaches: its blobs (config,
//!   layers, its own bytes), its child manifests (an index's entries) and, transitively, their
//!   blobs, and the manifests whose `subject` is a reached manifest (signatures, SBOMs). For the
//!   quota and the time-to-live a tag is an entry like those of the v1 API ([`tag_uses`]).
//! - A manifest no tag reaches is garbage once it is older than the upload grace period: a client
//!   pushes an index's children before the index, and a `mode=max` cache export replaces its tag
//!   on every build, leaving the previous cache manifest behind ([`dead_manifests`]). The blobs
//!   only such manifests used then go in the collector's blob sweep, while layers every build
//!   references stay, held by the current manifest.

use std::collections::{HashMap, HashSet};

use layercache_shared::Digest;

use crate::lru::{EntryUse, Holder};
use crate::store::sqlite::{GraphManifest, RegistryGraph};

/// The manifests `start` reaches (itself included), by index into `graph.manifests`.
fn reach(graph: &RegistryGraph, index: &Index<'_>, start: usize, seen: &mut HashSet<usize>) {
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        let m = &graph.manifests[i];
        for child in &m.children {
            if let Some(&c) = index.by_digest.get(&(m.repo.as_str(), *child)) {
                stack.push(c);
            }
        }
        if let Some(referrers) = index.by_subject.get(&(m.repo.as_str(), m.digest)) {
            stack.extend(referrers.iter().copied());
        }
    }
}

/// Lookups over the graph's manifests.
struct Index<'a> {
    by_id: HashMap<i64, usize>,
    by_digest: HashMap<(&'a str, Digest), usize>,
    by_subject: HashMap<(&'a str, Digest), Vec<usize>>,
}

impl<'a> Index<'a> {
    fn new(manifests: &'a [GraphManifest]) -> Self {
        let mut by_subject: HashMap<(&str, Digest), Vec<usize>> = HashMap::new();
        for (i, m) in manifests.iter().enumerate() {
            if let Some(s) = m.subject {
                by_subject.entry((m.repo.as_str(), s)).or_default().push(i);
            }
        }
        Index {
            by_id: manifests
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i))
                .collect(),
            by_digest: manifests
                .iter()
                .enumerate()
                .map(|(i, m)| ((m.repo.as_str(), m.digest), i))
                .collect(),
            by_subject,
        }
    }
}

/// Each tag as an entry of the quota and time-to-live plan, holding every blob its manifest
/// reaches.
pub fn tag_uses(graph: &RegistryGraph) -> Vec<EntryUse> {
    let index = Index::new(&graph.manifests);
    graph
        .tags
        .iter()
        .filter_map(|&(tag, manifest, last_used)| {
            let start = *index.by_id.get(&manifest)?;
            let mut seen = HashSet::new();
            reach(graph, &index, start, &mut seen);
            let blobs: HashSet<Digest> = seen
                .iter()
                .flat_map(|&i| graph.manifests[i].blobs.iter().copied())
                .collect();
            Some(EntryUse {
                id: Holder::Tag(tag),
                // The planner orders by milliseconds (entries' use stamps).
                last_used: last_used.saturating_mul(1000),
                blobs: blobs.into_iter().collect(),
            })
        })
        .collect()
}

/// Ids of the manifests neither a tag nor a manifest younger than `grace_secs` reaches, at `now`.
pub fn dead_manifests(graph: &RegistryGraph, now: u64, grace_secs: u64) -> Vec<i64> {
    let index = Index::new(&graph.manifests);
    let mut live = HashSet::new();
    for &(_, manifest, _) in &graph.tags {
        if let Some(&i) = index.by_id.get(&manifest) {
            reach(graph, &index, i, &mut live);
        }
    }
    for (i, m) in graph.manifests.iter().enumerate() {
        if now.saturating_sub(m.created) < grace_secs {
            reach(graph, &index, i, &mut live);
        }
    }
    graph
        .manifests
        .iter()
        .enumerate()
        .filter(|(i, _)| !live.contains(i))
        .map(|(_, m)| m.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn m(id: i64, name: &str, created: u64, blobs: &[&str], children: &[&str]) -> GraphManifest {
        GraphManifest {
            id,
            repo: "r".into(),
            digest: d(name),
            created,
            subject: None,
            blobs: std::iter::once(name)
                .chain(blobs.iter().copied())
                .map(d)
                .collect(),
            children: children.iter().map(|c| d(c)).collect(),
        }
    }

    fn graph() -> RegistryGraph {
        let mut sig = m(4, "sig", 0, &["sigblob"], &[]);
        sig.subject = Some(d("index"));
        RegistryGraph {
            manifests: vec![
                m(1, "index", 0, &[], &["amd64"]),
                m(2, "amd64", 0, &["base", "app"], &[]),
                // The cache manifest of the previous build: replaced, its tag moved on.
                m(3, "old-cache", 0, &["base", "stale"], &[]),
                sig,
                // Pushed a moment ago: its index may be on its way.
                m(5, "fresh", 990, &["new"], &[]),
            ],
            tags: vec![(10, 1, 500)],
        }
    }

    #[test]
    fn a_tag_holds_children_referrers_and_their_blobs() {
        let uses = tag_uses(&graph());
        assert_eq!(uses.len(), 1);
        assert_eq!(uses[0].id, Holder::Tag(10));
        let held: HashSet<Digest> = uses[0].blobs.iter().copied().collect();
        let want: HashSet<Digest> = ["index", "amd64", "base", "app", "sig", "sigblob"]
            .into_iter()
            .map(d)
            .collect();
        assert_eq!(held, want);
    }

    #[test]
    fn untagged_manifests_die_after_the_grace_period_only() {
        assert_eq!(dead_manifests(&graph(), 1000, 100), vec![3]);
        // Within the grace period of everything, nothing is dead.
        assert!(dead_manifests(&graph(), 50, 100).is_empty());
        // Without tags, all but the fresh one go.
        let mut g = graph();
        g.tags.clear();
        assert_eq!(dead_manifests(&g, 1000, 100), vec![1, 2, 3, 4]);
    }
}
