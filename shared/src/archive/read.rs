//! Reading `docker save` tarballs, in one pass, with bounded memory.
//!
//! The tarball streams through [`read_archive`] once:
//! 1. Each member's path is checked (relative, no `..`) and its type (files, directories, links).
//!    Small files (≤ [`Limits::inline_threshold`]: manifests, configs, tiny layers) and files named
//!    like metadata (`*.json`, `repositories`) are kept in memory;
//!    larger ones go straight to the [`BlobSink`], gunzipped on the way when they start with the gzip
//!    magic, and hashed both as stored (OCI blob digest) and uncompressed (diff_id).
//! 2. At the end, links are resolved, `manifest.json` (or, without it, `index.json` → image manifests)
//!    names the images; every config must hash to its name and every layer to its config's diff_id.
//!    Small layers pass through the sink now. Large members nothing references are dropped.
//! 3. Images are returned parents first, with their configs and the sink handles of their layers.
//!
//! Steps 2 and 3 live in [`super::members`] (links, manifests) and [`super::assemble`] (checks,
//! order). Every input is bounded by [`Limits`]: JSON members by size (refused from their tar
//! header, before they are read) and by their number of values, layers inflated from gzip by
//! their total size.
//!
//! The `tar` crate returns a short member silently when the input ends early, and treats an input
//! ending on a member boundary as a complete archive; [`read_archive`] counts the input bytes itself
//! so both are reported as [`ArchiveError::Truncated`].

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::assemble::assemble;
pub use super::error::ArchiveError;
use super::members::{Content, FileMember, Member, Members};
use crate::Digest;
use crate::digest::Hasher;

/// Size limits that keep a hostile tarball from exhausting memory.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Members up to this size are held in memory (configs, manifests); larger ones stream to the sink.
    pub inline_threshold: u64,
    /// Total bytes of members held in memory.
    pub max_inline_total: u64,
    /// Number of tar members.
    pub max_members: usize,
    /// Largest JSON document (`manifest.json`, `index.json`, configs, OCI manifests and indexes):
    /// a member named like metadata and larger is refused from its tar header, unread.
    pub max_json_bytes: u64,
    /// Values (array elements and object members, at any depth) in one JSON document, counted
    /// before the document is parsed into anything: bounds what parsing it allocates.
    pub max_json_values: usize,
    /// Images `manifest.json` lists, or `index.json` reaches.
    pub max_images: usize,
    /// Layers of one image (Docker refuses more than 128 anyway).
    pub max_layers: usize,
    /// `history` entries of one config.
    pub max_history: usize,
    /// Bytes handed to the sink in total, counted after gunzipping: a small gzip layer that
    /// inflates to gigabytes (a gzip bomb) is refused once it passes this. The server sets its
    /// upload limit here.
    pub max_content_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inline_threshold: 1 << 20,
            max_inline_total: 64 << 20,
            max_members: 100_000,
            max_json_bytes: 8 << 20,
            max_json_values: 200_000,
            max_images: 10_000,
            max_layers: 1_000,
            max_history: 10_000,
            max_content_bytes: u64::MAX,
        }
    }
}

/// Where layer content goes while the archive streams by (a temp file on the server).
pub trait BlobSink {
    /// Owns the stored bytes until the caller keeps them; dropping it must discard them.
    type Handle;
    /// Reads `content` to its end and stores it.
    ///
    /// An error from `content` itself (truncated input, bad gzip) must be passed on: the reader tells
    /// it apart from the sink's own errors.
    fn store(&mut self, content: &mut dyn Read) -> io::Result<Self::Handle>;

    /// Called right after a successful [`BlobSink::store`] with the digest (the diff_id) and size
    /// of the content it stored, so a sink can act on a layer (upload it) while the archive still
    /// streams, without hashing it a second time. The content is not verified against any config
    /// yet. The default does nothing.
    fn stored(&mut self, _handle: &mut Self::Handle, _digest: Digest, _size: u64) {}
}

/// A layer streamed to the sink: its diff_id, uncompressed size and the sink's handle.
#[derive(Debug)]
pub struct StoredBlob<H> {
    /// sha256 of the uncompressed layer tar (the diff_id).
    pub digest: Digest,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// What the sink returned; keep it to keep the content.
    pub handle: H,
}

/// An image found in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedImage {
    /// Config digest.
    pub id: Digest,
    /// The image this one was built on, from `manifest.json`'s `Parent` (always an image of the
    /// same archive).
    pub parent: Option<Digest>,
    /// `repo:tag` names the image was saved with.
    pub tags: Vec<String>,
    /// The config's `rootfs.diff_ids`, bottom-up; each is a key of [`ParsedArchive::layers`].
    pub diff_ids: Vec<Digest>,
    /// The OCI manifests naming this image (OCI layout only): on the containerd image store an
    /// image's ID is its manifest's digest, not its config's, so a pusher maps IDs through this.
    pub manifests: Vec<Digest>,
}

/// A verified archive: every image's config and every layer it names are present and match.
#[derive(Debug)]
pub struct ParsedArchive<H> {
    /// Images with parents before children.
    pub images: Vec<ParsedImage>,
    /// Raw config JSON by digest.
    pub configs: HashMap<Digest, Bytes>,
    /// Layers by diff_id.
    pub layers: HashMap<Digest, StoredBlob<H>>,
}

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Input read after the end-of-archive marker so a pipe or HTTP body is consumed to its end; more
/// than this is left unread (Docker pads to a 10 KiB record).
const MAX_TRAILER: u64 = 1 << 20;
/// Tar block size: headers and data are padded to it.
const BLOCK: u64 = 512;

/// Streams a `docker save` tarball, storing layers through `sink`.
///
/// Errors: [`ArchiveError::Io`] when reading `input` fails, [`ArchiveError::Store`] when the sink
/// fails; every other variant means the tarball is not a valid, complete `docker save` output.
/// Stored handles are dropped (so discarded) on error.
pub fn read_archive<R: Read, S: BlobSink>(
    input: R,
    sink: &mut S,
    limits: &Limits,
) -> Result<ParsedArchive<S::Handle>, ArchiveError> {
    let state = Rc::new(InputState::default());
    let mut archive = tar::Archive::new(CountingInput {
        inner: input,
        state: Rc::clone(&state),
    });
    let mut members = collect_members(&mut archive, &state, sink, limits)?;
    // Consume the end-of-archive padding so the writer of a pipe or body is not cut off.
    let mut rest = archive.into_inner();
    io::copy(&mut (&mut rest).take(MAX_TRAILER), &mut io::sink())?;

    members.check_links()?;
    let refs = members.image_refs()?;
    assemble(&mut members, refs, sink)
}

/// What the counting reader saw of the input, shared with the error classification.
#[derive(Default)]
pub(super) struct InputState {
    /// Bytes read so far.
    pos: Cell<u64>,
    /// The input returned end-of-file.
    eof: Cell<bool>,
    /// The input itself returned an error (not its content's fault).
    failed: Cell<bool>,
}

/// Wraps the input to count bytes and notice its end, which the `tar` crate hides.
struct CountingInput<R> {
    inner: R,
    state: Rc<InputState>,
}

impl<R: Read> Read for CountingInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.eof.set(true);
                Ok(0)
            }
            Ok(n) => {
                self.state.pos.set(self.state.pos.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// Hashes and counts what passes through, and remembers whether the inner reader failed.
struct Tapped<R> {
    inner: R,
    /// `None` when another tap already hashes the same bytes.
    hasher: Option<Hasher>,
    failed: bool,
}

impl<R: Read> Tapped<R> {
    fn new(inner: R) -> Self {
        Tapped {
            inner,
            hasher: Some(Hasher::new()),
            failed: false,
        }
    }

    /// Only notices failures; for bytes another [`Tapped`] hashes anyway.
    fn unhashed(inner: R) -> Self {
        Tapped {
            inner,
            hasher: None,
            failed: false,
        }
    }
}

impl<R: Read> Read for Tapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = true;
                }
                Err(e)
            }
        }
    }
}

/// Maps an error of the `tar` crate to the right variant, using what the input reader saw.
fn tar_error(e: io::Error, state: &InputState, member: Option<&str>, seen: usize) -> ArchiveError {
    if state.failed.get() {
        ArchiveError::Io(e)
    } else if seen == 0 {
        ArchiveError::NotDockerSave {
            reason: format!("it is not a tar archive ({e})"),
        }
    } else if state.eof.get() {
        ArchiveError::Truncated {
            offset: state.pos.get(),
            member: member.map(str::to_string),
        }
    } else {
        ArchiveError::BadTar {
            offset: state.pos.get(),
            reason: e.to_string(),
        }
    }
}

/// Streams every member, keeping small files, storing large ones, recording links.
fn collect_members<R: Read, S: BlobSink>(
    archive: &mut tar::Archive<CountingInput<R>>,
    state: &InputState,
    sink: &mut S,
    limits: &Limits,
) -> Result<Members<S::Handle>, ArchiveError> {
    let mut members = Members {
        map: HashMap::new(),
        limits: limits.clone(),
        budget: Rc::new(Budget::new(limits.max_content_bytes)),
    };
    let mut seen = 0usize;
    let mut inline_total = 0u64;
    // Where the last member's padded data ends: an end-of-archive block must follow it.
    let mut last_end = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| tar_error(e, state, None, seen))?
    {
        let mut entry = entry.map_err(|e| tar_error(e, state, None, seen))?;
        seen += 1;
        if seen > limits.max_members {
            return Err(ArchiveError::TooLarge {
                what: "members".to_string(),
                limit: limits.max_members as u64,
            });
        }
        let size = entry.size();
        last_end = entry.raw_file_position() + size.div_ceil(BLOCK) * BLOCK;
        let path = normalize_member_path(&entry.path_bytes())?;
        let kind = entry.header().entry_type();
        let member = match kind {
            EntryType::Regular | EntryType::Continuous => {
                if path.is_empty() {
                    return Err(ArchiveError::UnsafePath {
                        path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    });
                }
                let metadata = is_metadata_name(&path);
                if metadata && size > limits.max_json_bytes {
                    return Err(ArchiveError::TooLarge {
                        what: format!("bytes in JSON member `{path}` ({size} bytes)"),
                        limit: limits.max_json_bytes,
                    });
                }
                let keep = size <= limits.inline_threshold || metadata;
                let file = if keep {
                    inline_total += size;
                    if inline_total > limits.max_inline_total {
                        return Err(ArchiveError::TooLarge {
                            what: "bytes in small members held in memory".to_string(),
                            limit: limits.max_inline_total,
                        });
                    }
                    read_inline(&mut entry, &path, size, state)?
                } else {
                    let budget = Rc::clone(&members.budget);
                    let stored = store_content(&mut entry, &path, sink, Some(state), &budget)?;
                    if stored.raw_size != size {
                        return Err(ArchiveError::Truncated {
                            offset: state.pos.get(),
                            member: Some(path),
                        });
                    }
                    FileMember {
                        raw_digest: stored.raw_digest,
                        content: Content::Stored {
                            handle: Some(stored.handle),
                            digest: stored.digest,
                            size: stored.size,
                        },
                    }
                };
                Member::File(file)
            }
            EntryType::Directory => {
                if path.is_empty() {
                    continue; // `./`, the archive root
                }
                Member::Dir
            }
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if kind == EntryType::Symlink {
                    Member::Symlink(target)
                } else {
                    Member::Hardlink(target)
                }
            }
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(ArchiveError::UnsupportedMember {
                    path,
                    kind: format!("{other:?}"),
                });
            }
        };
        members.insert(path, member)?;
    }
    if seen == 0 {
        return Err(ArchiveError::NotDockerSave {
            reason: "it is empty or has no tar members".to_string(),
        });
    }
    if state.pos.get() < last_end + BLOCK {
        return Err(ArchiveError::Truncated {
            offset: state.pos.get(),
            member: None,
        });
    }
    Ok(members)
}

/// Reads a small member into memory, refusing a short one.
fn read_inline<H>(
    entry: &mut impl Read,
    path: &str,
    size: u64,
    state: &InputState,
) -> Result<FileMember<H>, ArchiveError> {
    // `size` is at most the inline threshold, so this allocation is bounded.
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut buf)
        .map_err(|e| tar_error(e, state, Some(path), 1))?;
    if buf.len() as u64 != size {
        return Err(ArchiveError::Truncated {
            offset: state.pos.get(),
            member: Some(path.to_string()),
        });
    }
    Ok(FileMember {
        raw_digest: Digest::of(&buf),
        content: Content::Inline(Bytes::from(buf)),
    })
}

/// A member after it went through the sink.
pub(super) struct Streamed<H> {
    pub(super) handle: H,
    /// Digest and size of the bytes as read (compressed, for gzip).
    raw_digest: Digest,
    raw_size: u64,
    /// Digest and size of the content the sink received (uncompressed).
    pub(super) digest: Digest,
    pub(super) size: u64,
}

/// The bytes the sink may still receive ([`Limits::max_content_bytes`]), shared by all members.
#[derive(Debug)]
pub(super) struct Budget {
    used: Cell<u64>,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget {
            used: Cell::new(0),
            limit,
        }
    }

    fn exceeded(&self) -> bool {
        self.used.get() > self.limit
    }
}

/// Counts the content going to the sink against a [`Budget`] and fails the read past it, so a
/// gzip bomb stops at the limit instead of filling the disk.
struct Budgeted<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let b = self.budget;
        b.used.set(b.used.get().saturating_add(n as u64));
        if b.exceeded() {
            return Err(io::Error::other(format!(
                "the layers' content exceeds {} bytes",
                b.limit
            )));
        }
        Ok(n)
    }
}

/// Passes `raw` to the sink, gunzipping it when it starts with the gzip magic, hashing both sides.
///
/// `state` is the input's state when `raw` reads from the tarball (to report truncation), `None`
/// for in-memory members. What the sink receives counts against `budget`.
pub(super) fn store_content<S: BlobSink>(
    raw: &mut dyn Read,
    path: &str,
    sink: &mut S,
    state: Option<&InputState>,
    budget: &Budget,
) -> Result<Streamed<S::Handle>, ArchiveError> {
    let input_error = |e: io::Error| match state {
        Some(st) => tar_error(e, st, Some(path), 1),
        None => ArchiveError::Io(e),
    };
    let mut raw = Tapped::new(raw);
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < magic.len() {
        match raw.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(input_error(e)),
        }
    }
    let gzip = got == 2 && magic == GZIP_MAGIC;
    let (result, content_failed, content_hash) = {
        let prefixed = io::Cursor::new(&magic[..got]).chain(&mut raw);
        // Uncompressed content is the raw bytes: `raw` hashes them once for both digests.
        let mut content: Tapped<Box<dyn Read + '_>> = if gzip {
            Tapped::new(Box::new(MultiGzDecoder::new(prefixed)))
        } else {
            Tapped::unhashed(Box::new(prefixed))
        };
        // A sink that stops early must not leave the hashes short: drain what it left.
        let mut counted = Budgeted {
            inner: &mut content,
            budget,
        };
        let result = sink
            .store(&mut counted)
            .and_then(|h| io::copy(&mut counted, &mut io::sink()).map(|_| h));
        (result, content.failed, content.hasher)
    };
    let mut handle = match result {
        Ok(h) => h,
        Err(_) if budget.exceeded() => {
            return Err(ArchiveError::ContentTooLarge {
                limit: budget.limit,
            });
        }
        Err(e) if raw.failed => return Err(input_error(e)),
        Err(e) if state.is_some_and(|st| st.eof.get()) => return Err(input_error(e)),
        Err(e) if content_failed && gzip => {
            return Err(ArchiveError::BadGzip {
                path: path.to_string(),
                reason: e.to_string(),
            });
        }
        Err(source) => {
            return Err(ArchiveError::Store {
                path: path.to_string(),
                source,
            });
        }
    };
    let (raw_digest, raw_size) = raw.hasher.unwrap_or_default().finish();
    let (digest, size) = match content_hash {
        Some(h) => h.finish(),
        None => (raw_digest, raw_size),
    };
    sink.stored(&mut handle, digest, size);
    Ok(Streamed {
        handle,
        raw_digest,
        raw_size,
        digest,
        size,
    })
}

/// Whether a member is metadata by its name (`manifest.json`, `<hex>.json` configs, `<id>/json`,
/// `repositories`), kept in memory up to [`Limits::max_json_bytes`] so large configs can still be
/// verified.
fn is_metadata_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".json") || name == "json" || name == "repositories"
}

/// Normalizes a member path (`./a//b/` → `a/b`), refusing absolute paths, `..` and non-UTF-8.
pub(super) fn normalize_member_path(raw: &[u8]) -> Result<String, ArchiveError> {
    let unsafe_path = || ArchiveError::UnsafePath {
        path: String::from_utf8_lossy(raw).into_owned(),
    };
    let text = std::str::from_utf8(raw).map_err(|_| unsafe_path())?;
    if text.starts_with('/') || text.contains('\0') {
        return Err(unsafe_path());
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_path()),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_normalized_and_traversal_refused() {
        assert_eq!(normalize_member_path(b"./a//b/").unwrap(), "a/b");
        assert_eq!(normalize_member_path(b"./").unwrap(), "");
        for bad in [&b"/etc/passwd"[..], b"a/../../b", b"..", b"a\xff"] {
            assert!(
                matches!(
                    normalize_member_path(bad),
                    Err(ArchiveError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
