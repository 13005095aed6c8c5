//! The last step of reading a tarball: verify every image the manifests name against its config
//! and layers, check `Parent` links as `docker load` would, and order images parents first.
//!
//! Each distinct config is parsed once, however often the manifest lists it, and only what the
//! checks need is kept of it (its diff_ids and two digests of its history), so memory stays at the
//! documents already held plus a few bytes per image. Lookups by image ID go through maps and the
//! ordering is linear ([`crate::parents`]): a long `Parent` chain costs linear time.

use std::collections::{HashMap, HashSet};

use super::error::ArchiveError;
use super::format::{HistoryEntry, ImageConfig, check_count, parse_json};
use super::members::{Content, ImageRef, Members};
use super::read::{BlobSink, ParsedArchive, ParsedImage, StoredBlob, store_content};
use crate::Digest;
use crate::digest::Hasher;
use crate::parents;

/// A verified image, with what is needed to check `Parent` links.
struct Verified {
    image: ParsedImage,
    /// Entries in the config's `history`.
    history_len: usize,
    /// Digest of the whole history.
    history: Digest,
    /// Digest of the history without its last entry: a child's must equal its parent's
    /// [`Verified::history`].
    history_but_last: Digest,
}

/// Digests of `history` whole and without its last entry, each entry hashed in a canonical
/// encoding of the fields `docker load` compares.
fn history_digests(history: &[HistoryEntry]) -> (Digest, Digest) {
    let mut h = Hasher::new();
    let mut but_last = None;
    for (i, entry) in history.iter().enumerate() {
        if i + 1 == history.len() {
            but_last = Some(h.clone().finish().0);
        }
        let bytes = serde_json::to_vec(entry).unwrap_or_default();
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let all = h.finish().0;
    (all, but_last.unwrap_or(all))
}

/// Verifies every image's config and layers and builds the result.
pub(super) fn assemble<S: BlobSink>(
    members: &mut Members<S::Handle>,
    refs: Vec<ImageRef>,
    sink: &mut S,
) -> Result<ParsedArchive<S::Handle>, ArchiveError> {
    let mut configs = HashMap::new();
    let mut layers: HashMap<Digest, StoredBlob<S::Handle>> = HashMap::new();
    let mut images: Vec<Verified> = Vec::new();
    // Image ID → index in `images`.
    let mut by_id: HashMap<Digest, usize> = HashMap::new();
    for r in refs {
        let known = by_id.get(&r.config_digest).copied();
        let diff_ids = match known {
            Some(i) => images[i].image.diff_ids.clone(),
            None => {
                let bytes = members.small_file(&r.config_path, &r.referenced_by)?;
                let found = Digest::of(&bytes);
                if found != r.config_digest {
                    return Err(ArchiveError::ConfigDigestMismatch {
                        path: r.config_path,
                        expected: r.config_digest,
                        found,
                    });
                }
                let config: ImageConfig = parse_json(&r.config_path, &bytes, &members.limits)?;
                check_count(
                    config.rootfs.diff_ids.len(),
                    members.limits.max_layers,
                    || format!("layers (`rootfs.diff_ids`) in `{}`", r.config_path),
                )?;
                check_count(config.history.len(), members.limits.max_history, || {
                    format!("`history` entries in `{}`", r.config_path)
                })?;
                let (history, history_but_last) = history_digests(&config.history);
                configs.insert(found, bytes);
                by_id.insert(found, images.len());
                images.push(Verified {
                    image: ParsedImage {
                        id: found,
                        parent: None,
                        tags: Vec::new(),
                        diff_ids: config.rootfs.diff_ids,
                        manifests: Vec::new(),
                    },
                    history_len: config.history.len(),
                    history,
                    history_but_last,
                });
                images[images.len() - 1].image.diff_ids.clone()
            }
        };
        let id = r.config_digest;
        verify_layers(members, &r, id, &diff_ids, sink, &mut layers)?;
        // The same image listed several times (several tags): merged, repeats dropped below.
        let seen = &mut images[by_id[&id]].image;
        seen.tags.extend(r.tags);
        seen.parent = seen.parent.or(r.parent);
        seen.manifests.extend(r.manifest);
    }
    for v in &mut images {
        v.image.tags = dedup(std::mem::take(&mut v.image.tags));
        v.image.manifests = dedup(std::mem::take(&mut v.image.manifests));
    }
    check_parents(&images, &by_id)?;
    Ok(ParsedArchive {
        images: parents_first(images)?,
        configs,
        layers,
    })
}

/// Checks that the layer members `r` names are the config's `diff_ids` and claims their handles.
fn verify_layers<S: BlobSink>(
    members: &mut Members<S::Handle>,
    r: &ImageRef,
    id: Digest,
    diff_ids: &[Digest],
    sink: &mut S,
    layers: &mut HashMap<Digest, StoredBlob<S::Handle>>,
) -> Result<(), ArchiveError> {
    if diff_ids.len() != r.layers.len() {
        return Err(ArchiveError::LayerCountMismatch {
            image: id,
            layers: r.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for (index, (path, expected)) in r.layers.iter().zip(diff_ids).enumerate() {
        let budget = std::rc::Rc::clone(&members.budget);
        let (resolved, file) = members.file(path, &r.referenced_by)?;
        let named = resolved
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::from_hex(h).ok());
        if let Some(named) = named.filter(|n| *n != file.raw_digest) {
            return Err(ArchiveError::BlobDigestMismatch {
                path: resolved,
                expected: named,
                found: file.raw_digest,
            });
        }
        if let Content::Inline(data) = &file.content {
            let stored = store_content(&mut &data[..], &resolved, sink, None, &budget)?;
            file.content = Content::Stored {
                handle: Some(stored.handle),
                digest: stored.digest,
                size: stored.size,
            };
        }
        let Content::Stored {
            handle,
            digest,
            size,
        } = &mut file.content
        else {
            unreachable!("inline content was stored just above");
        };
        if digest != expected {
            return Err(ArchiveError::LayerDigestMismatch {
                image: id,
                index,
                expected: *expected,
                found: *digest,
            });
        }
        // The first member with this diff_id keeps its handle; duplicates are dropped.
        let unclaimed = if layers.contains_key(digest) {
            None
        } else {
            handle.take()
        };
        if let Some(handle) = unclaimed {
            layers.insert(
                *digest,
                StoredBlob {
                    digest: *digest,
                    size: *size,
                    handle,
                },
            );
        }
    }
    Ok(())
}

/// Each `Parent` must be an image of the archive that `docker load` accepts as the parent: its
/// layers a prefix of the child's, its history the child's minus one entry.
fn check_parents(images: &[Verified], by_id: &HashMap<Digest, usize>) -> Result<(), ArchiveError> {
    for child in images {
        let Some(parent_id) = child.image.parent else {
            continue;
        };
        let parent =
            by_id
                .get(&parent_id)
                .map(|&i| &images[i])
                .ok_or(ArchiveError::UnknownParent {
                    image: child.image.id,
                    parent: parent_id,
                })?;
        let invalid = |reason: &str| ArchiveError::InvalidParent {
            image: child.image.id,
            parent: parent_id,
            reason: reason.to_string(),
        };
        if !child.image.diff_ids.starts_with(&parent.image.diff_ids) {
            return Err(invalid(
                "the parent's layers are not the first layers of the child",
            ));
        }
        let both_empty = child.history_len == 0 && parent.history_len == 0;
        if !both_empty
            && (child.history_len != parent.history_len + 1
                || child.history_but_last != parent.history)
        {
            return Err(invalid(
                "the child's history is not the parent's plus one step (docker load would refuse it)",
            ));
        }
    }
    Ok(())
}

/// Orders images so each parent precedes its children, otherwise keeping the manifest order.
fn parents_first(images: Vec<Verified>) -> Result<Vec<ParsedImage>, ArchiveError> {
    let links: Vec<(Digest, Option<Digest>)> = images
        .iter()
        .map(|v| (v.image.id, v.image.parent))
        .collect();
    let order = parents::parents_first(&parents::parent_indexes(&links)).map_err(|c| {
        let stuck = &images[c.index].image;
        ArchiveError::InvalidParent {
            image: stuck.id,
            parent: stuck.parent.unwrap_or(stuck.id),
            reason: "the parent links form a cycle".to_string(),
        }
    })?;
    let mut slots: Vec<Option<ParsedImage>> = images.into_iter().map(|v| Some(v.image)).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// `items` without repeats, first occurrences kept, in linear time.
fn dedup<T: Clone + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(by: &str) -> HistoryEntry {
        HistoryEntry {
            created_by: Some(by.to_string()),
            ..HistoryEntry::default()
        }
    }

    #[test]
    fn a_childs_history_minus_its_last_step_hashes_like_its_parents() {
        let parent = [step("FROM"), step("RUN a")];
        let child = [step("FROM"), step("RUN a"), step("RUN b")];
        let other = [step("FROM"), step("RUN x"), step("RUN b")];
        assert_eq!(history_digests(&child).1, history_digests(&parent).0);
        assert_ne!(history_digests(&other).1, history_digests(&parent).0);
        assert_ne!(history_digests(&parent).0, history_digests(&parent).1);
    }
}
