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
//! The `tar` crate returns a short member silently when the input ends early, and treats an input
//! ending on a member boundary as a complete archive; [`read_archive`] counts the input bytes itself
//! so both are reported as [`ArchiveError::Truncated`].

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::rc::Rc;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use tar::EntryType;

pub use super::error::ArchiveError;
use super::format::{
    INDEX_MEDIA_TYPES, ImageConfig, ManifestItem, OciIndex, OciManifest, parse_json,
};
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inline_threshold: 1 << 20,
            max_inline_total: 64 << 20,
            max_members: 100_000,
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
/// Links followed before giving up (Docker writes chains of length 1).
const MAX_LINK_HOPS: usize = 32;
/// Nesting of OCI image indexes followed from `index.json`.
const MAX_INDEX_DEPTH: usize = 4;
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
struct InputState {
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

/// A regular file member.
struct FileMember<H> {
    /// sha256 of the member's bytes as stored in the tar (compressed, if it is gzip).
    raw_digest: Digest,
    /// Its content, in memory or in the sink.
    content: Content<H>,
}

/// Where a file member's content is.
enum Content<H> {
    /// Small member held in memory, as stored (possibly gzip).
    Inline(Bytes),
    /// Member passed through the sink, uncompressed.
    Stored {
        /// Taken when a layer claims it; `None` afterwards.
        handle: Option<H>,
        /// sha256 of the uncompressed content.
        digest: Digest,
        /// Uncompressed size.
        size: u64,
    },
}

/// One tar member, by kind.
enum Member<H> {
    File(FileMember<H>),
    Dir,
    /// Target relative to the link's directory.
    Symlink(String),
    /// Target relative to the archive root.
    Hardlink(String),
}

/// All members of the archive by normalized path.
struct Members<H> {
    map: HashMap<String, Member<H>>,
    /// [`Limits::inline_threshold`], to report a metadata member that was too large to keep.
    inline_threshold: u64,
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
        inline_threshold: limits.inline_threshold,
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
                let keep = size <= limits.inline_threshold
                    || (is_metadata_name(&path) && size <= limits.max_inline_total);
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
                    let stored = store_content(&mut entry, &path, sink, Some(state))?;
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
struct Streamed<H> {
    handle: H,
    /// Digest and size of the bytes as read (compressed, for gzip).
    raw_digest: Digest,
    raw_size: u64,
    /// Digest and size of the content the sink received (uncompressed).
    digest: Digest,
    size: u64,
}

/// Passes `raw` to the sink, gunzipping it when it starts with the gzip magic, hashing both sides.
///
/// `state` is the input's state when `raw` reads from the tarball (to report truncation), `None`
/// for in-memory members.
fn store_content<S: BlobSink>(
    raw: &mut dyn Read,
    path: &str,
    sink: &mut S,
    state: Option<&InputState>,
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
        let result = sink
            .store(&mut content)
            .and_then(|h| io::copy(&mut content, &mut io::sink()).map(|_| h));
        (result, content.failed, content.hasher)
    };
    let mut handle = match result {
        Ok(h) => h,
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
/// `repositories`), kept in memory whatever its size so large configs can still be verified.
fn is_metadata_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".json") || name == "json" || name == "repositories"
}

/// Normalizes a member path (`./a//b/` → `a/b`), refusing absolute paths, `..` and non-UTF-8.
fn normalize_member_path(raw: &[u8]) -> Result<String, ArchiveError> {
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

/// Where a link points, as a normalized archive path; `None` if it leaves the archive.
fn link_target(link: &str, member: &Member<impl Sized>) -> Option<(String, String)> {
    let (base, target): (&str, &str) = match member {
        Member::Symlink(t) => (link.rsplit_once('/').map_or("", |(dir, _)| dir), t),
        Member::Hardlink(t) => ("", t),
        _ => return None,
    };
    Some((base.to_string(), target.to_string()))
}

/// Joins a link target onto its base directory; `None` when it is absolute or climbs above the root.
fn join_target(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl<H> Members<H> {
    /// Adds a member; a repeated path must have the same content (or link target).
    fn insert(&mut self, path: String, member: Member<H>) -> Result<(), ArchiveError> {
        let same = match (self.map.get(&path), &member) {
            (None, _) => {
                self.map.insert(path, member);
                return Ok(());
            }
            (Some(Member::File(a)), Member::File(b)) => a.raw_digest == b.raw_digest,
            (Some(Member::Dir), Member::Dir) => true,
            (Some(Member::Symlink(a)), Member::Symlink(b))
            | (Some(Member::Hardlink(a)), Member::Hardlink(b)) => a == b,
            _ => false,
        };
        if same {
            Ok(()) // the first copy is kept; this one (and its sink handle) is dropped
        } else {
            Err(ArchiveError::DuplicateMember { path })
        }
    }

    /// Follows links from `path` to a file or directory member, returning its path.
    fn resolve(&self, path: &str, referenced_by: &str) -> Result<String, ArchiveError> {
        let mut current = path.to_string();
        let mut referrer = referenced_by.to_string();
        for _ in 0..=MAX_LINK_HOPS {
            let member = self
                .map
                .get(&current)
                .ok_or_else(|| ArchiveError::MissingMember {
                    path: current.clone(),
                    referenced_by: referrer.clone(),
                })?;
            let Some((base, target)) = link_target(&current, member) else {
                return Ok(current);
            };
            let next = join_target(&base, &target).ok_or_else(|| ArchiveError::LinkEscapes {
                path: current.clone(),
                target: target.clone(),
            })?;
            referrer = current;
            current = next;
        }
        Err(ArchiveError::LinkLoop {
            path: path.to_string(),
        })
    }

    /// Every link must stay inside the archive and reach an existing member.
    fn check_links(&self) -> Result<(), ArchiveError> {
        let mut links: Vec<&String> = self
            .map
            .iter()
            .filter(|(_, m)| matches!(m, Member::Symlink(_) | Member::Hardlink(_)))
            .map(|(p, _)| p)
            .collect();
        links.sort(); // deterministic error for several bad links
        for link in links {
            self.resolve(link, link)?;
        }
        Ok(())
    }

    /// The regular file `path` (after links) names, for a reference from `referenced_by`.
    fn file(
        &mut self,
        path: &str,
        referenced_by: &str,
    ) -> Result<(String, &mut FileMember<H>), ArchiveError> {
        let resolved = self.resolve(path, referenced_by)?;
        match self.map.get_mut(&resolved) {
            Some(Member::File(f)) => Ok((resolved, f)),
            _ => Err(ArchiveError::NotAFile {
                path: resolved,
                referenced_by: referenced_by.to_string(),
            }),
        }
    }

    /// The bytes of a small JSON-ish member (manifest, index, config).
    fn small_file(&mut self, path: &str, referenced_by: &str) -> Result<Bytes, ArchiveError> {
        let (resolved, file) = self.file(path, referenced_by)?;
        match &file.content {
            Content::Inline(b) => Ok(b.clone()),
            Content::Stored { .. } => Err(ArchiveError::TooLarge {
                what: format!("bytes in `{resolved}` (metadata is held in memory)"),
                limit: self.inline_threshold,
            }),
        }
    }

    /// The images `manifest.json` (or else `index.json`) names.
    fn image_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        if self.map.contains_key("manifest.json") {
            let mut refs = self.legacy_refs()?;
            // Engine 25+ writes both: `index.json` names the manifests, whose digests are the
            // image IDs of the containerd store. A bad index does not spoil a good manifest.json.
            if self.map.contains_key("index.json")
                && let Ok(oci) = self.oci_refs()
            {
                for r in &mut refs {
                    r.manifest = oci
                        .iter()
                        .find(|o| o.config_digest == r.config_digest)
                        .and_then(|o| o.manifest);
                }
            }
            Ok(refs)
        } else if self.map.contains_key("index.json") {
            self.oci_refs()
        } else {
            Err(ArchiveError::NotDockerSave {
                reason: "it has no `manifest.json` or `index.json` member".to_string(),
            })
        }
    }

    fn legacy_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        const MANIFEST: &str = "manifest.json";
        let bytes = self.small_file(MANIFEST, "the archive root")?;
        let items: Vec<ManifestItem> = parse_json(MANIFEST, &bytes)?;
        if items.is_empty() {
            return Err(ArchiveError::NoImages {
                path: MANIFEST.to_string(),
            });
        }
        items
            .into_iter()
            .map(|item| {
                let config_path = normalize_member_path(item.config.as_bytes())?;
                let expected = digest_from_name(&config_path).ok_or_else(|| {
                    ArchiveError::ConfigNotDigestNamed {
                        path: item.config.clone(),
                        referenced_by: MANIFEST.to_string(),
                    }
                })?;
                let layers = item
                    .layers
                    .iter()
                    .map(|l| normalize_member_path(l.as_bytes()))
                    .collect::<Result<_, _>>()?;
                Ok(ImageRef {
                    config_path,
                    config_digest: expected,
                    layers,
                    tags: item.repo_tags.unwrap_or_default(),
                    parent: item.parent,
                    referenced_by: MANIFEST.to_string(),
                    manifest: None,
                })
            })
            .collect()
    }

    fn oci_refs(&mut self) -> Result<Vec<ImageRef>, ArchiveError> {
        const INDEX: &str = "index.json";
        let bytes = self.small_file(INDEX, "the archive root")?;
        let index: OciIndex = parse_json(INDEX, &bytes)?;
        let mut refs = Vec::new();
        for desc in &index.manifests {
            let tags: Vec<String> = oci_tag(&desc.annotations).into_iter().collect();
            self.walk_oci(desc, &tags, INDEX, 0, true, &mut refs)?;
        }
        if refs.is_empty() {
            return Err(ArchiveError::NoImages {
                path: INDEX.to_string(),
            });
        }
        Ok(refs)
    }

    /// Follows a descriptor of `index.json` or a nested index down to image manifests.
    ///
    /// `required` is false inside nested indexes: `docker save` of a multi-platform image includes
    /// only the platforms the engine has.
    fn walk_oci(
        &mut self,
        desc: &super::format::Descriptor,
        tags: &[String],
        referenced_by: &str,
        depth: usize,
        required: bool,
        out: &mut Vec<ImageRef>,
    ) -> Result<(), ArchiveError> {
        let path = blob_path(&desc.digest);
        if !required && !self.map.contains_key(&path) {
            return Ok(());
        }
        if desc
            .annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
        {
            return Ok(()); // build provenance, not an image
        }
        let bytes = self.small_file(&path, referenced_by)?;
        let found = Digest::of(&bytes);
        if found != desc.digest {
            return Err(ArchiveError::BlobDigestMismatch {
                path,
                expected: desc.digest,
                found,
            });
        }
        let is_index = match desc.media_type.as_deref() {
            Some(mt) => INDEX_MEDIA_TYPES.contains(&mt),
            None => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some()),
        };
        if is_index {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ArchiveError::BadJson {
                    path,
                    reason: format!("image indexes are nested more than {MAX_INDEX_DEPTH} deep"),
                });
            }
            let nested: OciIndex = parse_json(&path, &bytes)?;
            for child in &nested.manifests {
                self.walk_oci(child, tags, &path, depth + 1, false, out)?;
            }
            return Ok(());
        }
        let manifest: OciManifest = parse_json(&path, &bytes)?;
        let is_image_config = manifest.config.media_type.as_deref().is_none_or(|mt| {
            mt == "application/vnd.oci.image.config.v1+json"
                || mt == "application/vnd.docker.container.image.v1+json"
        });
        if !is_image_config {
            return Ok(()); // an artifact (attestation, signature), not an image
        }
        out.push(ImageRef {
            config_path: blob_path(&manifest.config.digest),
            config_digest: manifest.config.digest,
            layers: manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect(),
            tags: tags.to_vec(),
            parent: None,
            referenced_by: path,
            manifest: Some(desc.digest),
        });
        Ok(())
    }
}

/// An image as a manifest names it, before verification.
struct ImageRef {
    /// Normalized path of the config member.
    config_path: String,
    /// The digest the config's name (or descriptor) claims.
    config_digest: Digest,
    /// Normalized paths of the layer members, bottom-up.
    layers: Vec<String>,
    tags: Vec<String>,
    parent: Option<Digest>,
    /// The manifest naming this image, for errors.
    referenced_by: String,
    /// The OCI manifest's digest (`None` in the legacy layout).
    manifest: Option<Digest>,
}

/// `blobs/sha256/<hex>`, where OCI layouts keep a blob.
fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The digest a member's name encodes: `blobs/sha256/<hex>` or `[dir/]<hex>.json`.
fn digest_from_name(path: &str) -> Option<Digest> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex).ok();
    }
    let name = path.rsplit('/').next()?;
    Digest::from_hex(name.strip_suffix(".json")?).ok()
}

/// A `repo:tag` from OCI annotations, in Docker's short form (`docker.io/library/` removed).
fn oci_tag(annotations: &HashMap<String, String>) -> Option<String> {
    let full = match annotations.get("io.containerd.image.name") {
        Some(name) => name.as_str(),
        None => {
            // `ref.name` may be a bare tag (`latest`); only a full `name:tag` is usable.
            let r = annotations.get("org.opencontainers.image.ref.name")?;
            let last = r.rsplit('/').next().unwrap_or(r);
            if !last.contains(':') {
                return None;
            }
            r.as_str()
        }
    };
    if full.contains('@') {
        return None; // a digest reference, not a tag
    }
    let short = full
        .strip_prefix("docker.io/library/")
        .or_else(|| full.strip_prefix("docker.io/"))
        .unwrap_or(full);
    Some(short.to_string())
}

/// A verified image, with what is needed to check `Parent` links.
struct Verified {
    image: ParsedImage,
    history: Vec<serde_json::Value>,
}

/// Verifies every image's config and layers and builds the result.
fn assemble<S: BlobSink>(
    members: &mut Members<S::Handle>,
    refs: Vec<ImageRef>,
    sink: &mut S,
) -> Result<ParsedArchive<S::Handle>, ArchiveError> {
    let mut configs = HashMap::new();
    let mut layers: HashMap<Digest, StoredBlob<S::Handle>> = HashMap::new();
    let mut images: Vec<Verified> = Vec::new();
    for r in refs {
        let bytes = members.small_file(&r.config_path, &r.referenced_by)?;
        let found = Digest::of(&bytes);
        if found != r.config_digest {
            return Err(ArchiveError::ConfigDigestMismatch {
                path: r.config_path,
                expected: r.config_digest,
                found,
            });
        }
        let config: ImageConfig = parse_json(&r.config_path, &bytes)?;
        let id = found;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != r.layers.len() {
            return Err(ArchiveError::LayerCountMismatch {
                image: id,
                layers: r.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        for (index, (path, expected)) in r.layers.iter().zip(&diff_ids).enumerate() {
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
                let stored = store_content(&mut &data[..], &resolved, sink, None)?;
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
        configs.insert(id, bytes);
        match images.iter_mut().find(|v| v.image.id == id) {
            Some(seen) => {
                // The same image listed twice (several tags): merge.
                for tag in r.tags {
                    if !seen.image.tags.contains(&tag) {
                        seen.image.tags.push(tag);
                    }
                }
                seen.image.parent = seen.image.parent.or(r.parent);
                if let Some(m) = r.manifest
                    && !seen.image.manifests.contains(&m)
                {
                    seen.image.manifests.push(m);
                }
            }
            None => images.push(Verified {
                image: ParsedImage {
                    id,
                    parent: r.parent,
                    tags: dedup(r.tags),
                    diff_ids,
                    manifests: r.manifest.into_iter().collect(),
                },
                history: config.history,
            }),
        }
    }
    check_parents(&images)?;
    Ok(ParsedArchive {
        images: parents_first(images)?,
        configs,
        layers,
    })
}

fn dedup(tags: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    tags.into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// Each `Parent` must be an image of the archive that `docker load` accepts as the parent: its
/// layers a prefix of the child's, its history the child's minus one entry.
fn check_parents(images: &[Verified]) -> Result<(), ArchiveError> {
    for child in images {
        let Some(parent_id) = child.image.parent else {
            continue;
        };
        let parent =
            images
                .iter()
                .find(|v| v.image.id == parent_id)
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
        let (ch, ph) = (&child.history, &parent.history);
        if !(ch.is_empty() && ph.is_empty()) && (ch.len() != ph.len() + 1 || !ch.starts_with(ph)) {
            return Err(invalid(
                "the child's history is not the parent's plus one step (docker load would refuse it)",
            ));
        }
    }
    Ok(())
}

/// Orders images so each parent precedes its children, otherwise keeping the manifest order.
fn parents_first(mut pending: Vec<Verified>) -> Result<Vec<ParsedImage>, ArchiveError> {
    let mut done: Vec<ParsedImage> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|v| {
            v.image
                .parent
                .is_none_or(|p| done.iter().any(|d| d.id == p))
        });
        match ready {
            Some(i) => done.push(pending.remove(i).image),
            None => {
                let stuck = &pending[0].image;
                return Err(ArchiveError::InvalidParent {
                    image: stuck.id,
                    parent: stuck.parent.unwrap_or(stuck.id),
                    reason: "the parent links form a cycle".to_string(),
                });
            }
        }
    }
    Ok(done)
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

    #[test]
    fn link_targets_resolve_relative_to_the_link_and_stay_inside() {
        assert_eq!(join_target("a", "../b/layer.tar").unwrap(), "b/layer.tar");
        assert_eq!(join_target("", "b/./c").unwrap(), "b/c");
        assert_eq!(join_target("a", "../../x"), None);
        assert_eq!(join_target("a", "/etc/passwd"), None);
        assert_eq!(join_target("a", ""), None);
    }

    #[test]
    fn config_names_encode_their_digest() {
        let d = Digest::of(b"c");
        assert_eq!(digest_from_name(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(
            digest_from_name(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_from_name("config.json"), None);
        assert_eq!(digest_from_name(&d.hex()), None);
    }

    #[test]
    fn oci_tags_prefer_the_containerd_name_in_short_form() {
        let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let both = ann(&[
            ("io.containerd.image.name", "docker.io/library/web:2"),
            ("org.opencontainers.image.ref.name", "2"),
        ]);
        assert_eq!(oci_tag(&both).as_deref(), Some("web:2"));
        let bare = ann(&[("org.opencontainers.image.ref.name", "latest")]);
        assert_eq!(oci_tag(&bare), None, "a bare tag has no repository");
        let full = ann(&[("org.opencontainers.image.ref.name", "reg:5000/acme/web:1")]);
        assert_eq!(oci_tag(&full).as_deref(), Some("reg:5000/acme/web:1"));
        let port_only = ann(&[("org.opencontainers.image.ref.name", "reg:5000/web")]);
        assert_eq!(oci_tag(&port_only), None);
    }
}
