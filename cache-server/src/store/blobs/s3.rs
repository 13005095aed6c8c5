//! [`S3BlobStore`]: blobs as objects in an S3-compatible bucket (`--blob-store
//! s3://BUCKET[/PREFIX]`), through the `object_store` crate (signing, retries, multipart uploads).
//! Configured the way S3 tools are: the binary passes the `AWS_*` environment
//! ([`S3Location::with_env`]): `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint,
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` for virtual-hosted-style requests (path style is the
//! default, which every S3-compatible server speaks). The library itself reads no environment, so
//! tests (and embedders) pass the settings explicitly ([`S3Location::option`]).
//!
//! Keys: `<PREFIX>/sha256/<2 hex>/<64 hex>` (the data dir's layout), corrupt blobs moved by
//! `verify` to `<PREFIX>/quarantine/<64 hex>`, chunks of registry upload sessions at
//! `<PREFIX>/uploads/<session>/<chunk>` (staging objects, see the parent module).
//!
//! Uploads: the content is staged in the data dir's `tmp/` and hashed on the way
//! ([`super::spool`]), exactly as for the local store; only at the commit, once the digest checked
//! out, is it sent to its content-addressed key, as one `PUT` up to [`SINGLE_PUT_MAX`] and as a
//! multipart upload above it, read from the temp file a part at a time ([`PARTS_IN_FLIGHT`] parts
//! of at least [`PART_SIZE`] in flight). So a key only ever holds content that hashes to its name,
//! a failed or abandoned upload leaves nothing in the bucket but, after a crash mid-commit, an
//! incomplete multipart upload (invisible; an `AbortIncompleteMultipartUpload` lifecycle rule
//! reclaims it), and memory per commit is bounded by the parts in flight. The price is that the
//! bytes go to the bucket after the upload is received rather than while it is. Streaming parts
//! to a temporary key during the upload and copying it into place afterwards was the alternative:
//! it needs a temporary object that a crash leaves behind (visible, billed, to be swept), a
//! server-side copy that S3 limits to 5 GiB per request, and a second write of every byte on
//! stores whose copy is not a metadata operation.
//!
//! Reads: [`BlobRead::chunk`] keeps one ranged `GET` streaming from the offset asked and serves
//! the following chunks from it, so a restore costs one request per blob, not one per MiB; a read
//! at another offset, or after the stream broke (the client's own pace can outlast a request
//! timeout), opens a new ranged `GET` there.
//!
//! The trait is blocking; `object_store` is async. The store owns a small runtime of its own and
//! blocks on it ([`tokio::runtime::Handle::block_on`]), which is allowed on the blocking threads
//! the callers use and also works in the `gc` and `verify` commands, which have no runtime.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use layercache_shared::Digest;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::spool::{Spool, StageFile};
use super::{BlobError, BlobRead, BlobStore, BlobWriter, Committed, StagedWrite};

/// Blobs up to this size are sent in one `PUT` (read whole into memory: bounded by this).
pub const SINGLE_PUT_MAX: u64 = 8 << 20;

/// The smallest part of a multipart upload (S3 wants at least 5 MiB but the last). Larger blobs
/// get larger parts so that no upload needs more than [`MAX_PARTS`].
pub const PART_SIZE: usize = 8 << 20;

/// S3 allows 10 000 parts; a margin for rounding.
const MAX_PARTS: u64 = 9_000;

/// Parts of one upload being sent at once: enough to keep a fast link busy, and the bound on a
/// commit's memory (`(PARTS_IN_FLIGHT + 1) × part size`).
pub const PARTS_IN_FLIGHT: usize = 4;

/// The largest object S3 copies in one request: a larger staging object is not adopted (the
/// session copies it through the server instead).
pub const MAX_COPY: u64 = 5 << 30;

/// A ranged read that broke is reopened this many times in a row before the chunk fails.
const READ_RETRIES: u32 = 3;

/// `s3://BUCKET[/PREFIX]` and the client settings: where an [`S3BlobStore`] keeps its objects.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket (it must exist; the server does not create it).
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// Client settings as `object_store` S3 config keys and values (`aws_endpoint_url`,
    /// `aws_region`, `aws_access_key_id`, `aws_allow_http`, ...); unknown keys are ignored.
    pub options: Vec<(String, String)>,
}

impl fmt::Debug for S3Location {
    /// Names the settings, never their values (they include the secret key).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("options", &keys)
            .finish()
    }
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]` (no settings yet); `None` for anything else.
    pub fn parse(s: &str) -> Option<S3Location> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return None;
        }
        Some(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            options: Vec::new(),
        })
    }

    /// Adds a client setting (`key` as in the `AWS_*` variable, any case: `AWS_ENDPOINT_URL` or
    /// `aws_endpoint_url`).
    pub fn option(mut self, key: &str, value: impl Into<String>) -> Self {
        self.options.push((key.to_ascii_lowercase(), value.into()));
        self
    }

    /// Adds every `AWS_*` variable of the process environment, as S3 tools read them.
    pub fn with_env(mut self) -> Self {
        for (key, value) in std::env::vars() {
            if key.starts_with("AWS_") {
                self = self.option(&key, value);
            }
        }
        self
    }

    /// The endpoint setting, for messages.
    fn endpoint(&self) -> &str {
        self.options
            .iter()
            .find(|(k, _)| k == "aws_endpoint_url" || k == "aws_endpoint")
            .map_or("AWS (no AWS_ENDPOINT_URL)", |(_, v)| v.as_str())
    }

    /// `<prefix>/<rest>` as an object path.
    fn path(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// Blobs in an S3-compatible bucket.
#[derive(Clone)]
pub struct S3BlobStore {
    /// The client and its runtime, shared with open readers and writers.
    inner: Arc<Inner>,
    /// `<data>/tmp`, where uploads are staged.
    tmp: PathBuf,
}

/// What readers and writers share with the store.
struct Inner {
    /// Runs the client's futures; `None` once dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    /// Handle of `runtime`, to block on.
    handle: tokio::runtime::Handle,
    /// The configured client.
    s3: AmazonS3,
    /// Bucket and prefix.
    location: S3Location,
}

impl Drop for Inner {
    /// Without waiting: the store may be dropped on an async thread (the end of `serve`), where
    /// dropping a runtime the ordinary way panics.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    /// Runs `f` to completion on the store's runtime. Call on a blocking thread.
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// The key of blob `digest`.
    fn key(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        self.location.path(&format!("sha256/{}/{hex}", &hex[..2]))
    }

    /// The key of staging object `name`.
    fn staging_key(&self, name: &str) -> Path {
        self.location.path(&format!("uploads/{name}"))
    }

    /// `s3://bucket/key`, for messages.
    fn url(&self, key: &Path) -> String {
        format!("s3://{}/{key}", self.location.bucket)
    }

    /// The object's size, `None` when absent.
    fn head(&self, key: &Path) -> io::Result<Option<object_store::ObjectMeta>> {
        match self.block_on(self.s3.head(key)) {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io_error("reading the size of", key, e)),
        }
    }

    /// An object-store error as an I/O error naming the object.
    fn io_error(&self, action: &str, key: &Path, e: object_store::Error) -> io::Error {
        let kind = io::Error::from(e);
        io::Error::new(kind.kind(), format!("{action} {}: {kind}", self.url(key)))
    }

    /// Sends the verified temp file `file` (`size` bytes) to `key`: one `PUT`, or a multipart
    /// upload that is aborted when anything fails.
    fn upload(&self, key: &Path, file: &FsPath, size: u64) -> io::Result<()> {
        let mut f = File::open(file)?;
        if size <= SINGLE_PUT_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)?;
            self.block_on(self.s3.put(key, PutPayload::from(buf)))
                .map_err(|e| self.io_error("uploading", key, e))?;
            return Ok(());
        }
        let part = part_size(size);
        // `WriteMultipart` spawns each part's request on the current runtime: this one.
        let _entered = self.handle.enter();
        let upload = self
            .block_on(self.s3.put_multipart(key))
            .map_err(|e| self.io_error("starting a multipart upload of", key, e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, part);
        let sent = (|| {
            loop {
                let mut buf = BytesMut::zeroed(part);
                let n = read_full(&mut f, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                self.block_on(parts.wait_for_capacity(PARTS_IN_FLIGHT))
                    .map_err(|e| self.io_error("uploading a part of", key, e))?;
                parts.put(buf.freeze());
            }
        })();
        match sent {
            Ok(()) => self
                .block_on(parts.finish())
                .map(|_| ())
                .map_err(|e| self.io_error("completing the multipart upload of", key, e)),
            Err(e) => {
                if let Err(abort) = self.block_on(parts.abort()) {
                    tracing::warn!(key = %self.url(key), error = %abort,
                        "aborting a failed multipart upload failed; a lifecycle rule reclaims it");
                }
                Err(e)
            }
        }
    }
}

/// The part size for a `size`-byte upload: [`PART_SIZE`], or more when that would take more than
/// [`MAX_PARTS`] parts (rounded up to a MiB).
fn part_size(size: u64) -> usize {
    let min = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    (min as usize).max(PART_SIZE)
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl S3BlobStore {
    /// A reader of object `key` (a blob or a staging object), `None` when absent.
    fn open_key(&self, key: Path) -> io::Result<Option<Box<dyn BlobRead>>> {
        let Some(meta) = self.inner.head(&key)? else {
            return Ok(None);
        };
        Ok(Some(Box::new(S3BlobRead {
            inner: Arc::clone(&self.inner),
            key,
            size: meta.size,
            stream: Mutex::new(None),
        })))
    }

    /// Connects to the bucket of `location` with its settings, staging uploads in `tmp_dir`. Lists the prefix once, so a missing bucket, a wrong endpoint or credentials the
    /// store refuses stop the server at start with the store's own answer, not at the first push.
    pub fn open(location: &S3Location, tmp_dir: &FsPath) -> Result<S3BlobStore, BlobError> {
        let remote = |action, source| BlobError::Remote {
            action,
            location: location.to_string(),
            source,
        };
        std::fs::create_dir_all(tmp_dir).map_err(|source| BlobError::Io {
            action: "creating directory",
            path: tmp_dir.to_path_buf(),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("layercache-s3")
            .enable_all()
            .build()
            .map_err(|e| remote("starting the object store client for", e))?;
        // Retries for transient failures (5xx, timeouts, connection resets), bounded so that a
        // store that is down fails a request within a minute rather than three.
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::new();
        for (key, value) in &location.options {
            if let Ok(key) = key.parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let s3 = builder
            .with_bucket_name(&location.bucket)
            .with_retry(retry)
            .build()
            .map_err(|e| remote("configuring the client (AWS_* environment) for", e.into()))?;
        let inner = Inner {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            s3,
            location: location.clone(),
        };
        let root = inner.location.path("sha256");
        inner
            .block_on(inner.s3.list_with_delimiter(Some(&root)))
            .map_err(|e| {
                let endpoint = location.endpoint();
                let hint = io::Error::other(format!(
                    "{e} (endpoint {endpoint}; the bucket must exist and AWS_ACCESS_KEY_ID / \
                     AWS_SECRET_ACCESS_KEY must be allowed to list, read and write it)"
                ));
                remote("listing", hint)
            })?;
        Ok(S3BlobStore {
            inner: Arc::new(inner),
            tmp: tmp_dir.to_path_buf(),
        })
    }
}

impl BlobStore for S3BlobStore {
    /// A SigV4 query-signed URL of the blob's key (the client then talks to the store alone).
    fn presigned_get(&self, digest: &Digest, expires_in: Duration) -> io::Result<Option<String>> {
        let key = self.inner.key(digest);
        let signing = self.inner.s3.signed_url(Method::GET, &key, expires_in);
        match self.inner.block_on(signing) {
            Ok(url) => Ok(Some(url.to_string())),
            Err(e) => Err(self.inner.io_error("signing a URL of", &key, e)),
        }
    }

    fn open(&self, digest: &Digest) -> io::Result<Option<Box<dyn BlobRead>>> {
        self.open_key(self.inner.key(digest))
    }

    fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(self.inner.head(&self.inner.key(digest))?.map(|m| m.size))
    }

    fn begin_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(S3BlobWriter {
            spool: Spool::new(&self.tmp)?,
            inner: Arc::clone(&self.inner),
            tmp: self.tmp.clone(),
        }))
    }

    /// A `HEAD` first: S3 answers a `DELETE` of an absent key with success.
    fn delete(&self, digest: &Digest) -> io::Result<bool> {
        let key = self.inner.key(digest);
        if self.inner.head(&key)?.is_none() {
            return Ok(false);
        }
        match self.inner.block_on(self.inner.s3.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(self.inner.io_error("deleting", &key, e)),
        }
    }

    fn list(&self) -> io::Result<Vec<Digest>> {
        let root = self.inner.location.path("sha256");
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .block_on(self.inner.s3.list(Some(&root)).try_collect())
            .map_err(|e| self.inner.io_error("listing", &root, e))?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|name| Digest::from_hex(name).ok())
            .collect())
    }

    fn modified(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(self
            .inner
            .head(&self.inner.key(digest))?
            .map(|m| m.last_modified.timestamp().max(0) as u64))
    }

    /// A server-side copy to `quarantine/<hex>`, then the delete.
    fn quarantine(&self, digest: &Digest) -> io::Result<bool> {
        let key = self.inner.key(digest);
        let to = self
            .inner
            .location
            .path(&format!("quarantine/{}", digest.hex()));
        match self.inner.block_on(self.inner.s3.copy(&key, &to)) {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.inner.io_error("quarantining", &key, e)),
        }
        self.delete(digest)
    }

    fn describe(&self) -> String {
        self.inner.location.to_string()
    }

    fn stage(&self, name: &str) -> io::Result<Box<dyn StagedWrite>> {
        Ok(Box::new(S3StagedWrite {
            file: StageFile::new(&self.tmp)?,
            inner: Arc::clone(&self.inner),
            key: self.inner.staging_key(name),
        }))
    }

    fn open_staged(&self, name: &str) -> io::Result<Option<Box<dyn BlobRead>>> {
        self.open_key(self.inner.staging_key(name))
    }

    fn adopt_staged(&self, name: &str, size: u64, digest: Digest) -> Option<Box<dyn BlobWriter>> {
        (size <= MAX_COPY).then(|| {
            Box::new(S3Adopted {
                inner: Arc::clone(&self.inner),
                staged: self.inner.staging_key(name),
                size,
                digest,
            }) as Box<dyn BlobWriter>
        })
    }

    fn delete_staged(&self, name: &str) -> io::Result<()> {
        let key = self.inner.staging_key(name);
        match self.inner.block_on(self.inner.s3.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.inner.io_error("deleting", &key, e)),
        }
    }

    /// Lists `uploads/<session>/` and deletes what is there.
    fn delete_staged_session(&self, session: &str) -> io::Result<()> {
        let dir = self.inner.staging_key(session);
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .block_on(self.inner.s3.list(Some(&dir)).try_collect())
            .map_err(|e| self.inner.io_error("listing", &dir, e))?;
        for m in metas {
            match self.inner.block_on(self.inner.s3.delete(&m.location)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.inner.io_error("deleting", &m.location, e)),
            }
        }
        Ok(())
    }
}

/// A chunk on its way to `<PREFIX>/uploads/<session>/<chunk>`: staged in a local temp file
/// (memory stays bounded whatever the chunk's size), sent at `finish`.
struct S3StagedWrite {
    /// The temp file.
    file: StageFile,
    /// The client.
    inner: Arc<Inner>,
    /// Where it goes.
    key: Path,
}

impl Write for S3StagedWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StagedWrite for S3StagedWrite {
    fn finish(self: Box<Self>) -> io::Result<u64> {
        let S3StagedWrite { file, inner, key } = *self;
        let (size, temp) = file.finish()?;
        inner.upload(&key, &temp, size)?;
        Ok(size)
    }
}

/// A staging object adopted as a blob: committed by a server-side copy to its key.
struct S3Adopted {
    /// The client.
    inner: Arc<Inner>,
    /// `<PREFIX>/uploads/<session>/<chunk>`.
    staged: Path,
    /// Its size.
    size: u64,
    /// Its digest, as the session hashed it.
    digest: Digest,
}

impl Write for S3Adopted {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other(
            "an adopted staging object takes no writes",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for S3Adopted {
    fn written(&self) -> u64 {
        self.size
    }

    fn digest(&self) -> Digest {
        self.digest
    }

    /// The digest check, then a copy unless the key already holds an object of this size. The
    /// staging object stays (its session deletes it).
    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError> {
        if self.digest != *expected {
            return Err(BlobError::Mismatch {
                expected: *expected,
                found: self.digest,
                size: self.size,
            });
        }
        let inner = &self.inner;
        let key = inner.key(expected);
        let remote = |source| BlobError::Remote {
            action: "storing blob at",
            location: inner.url(&key),
            source,
        };
        if inner.head(&key).map_err(remote)?.map(|m| m.size) == Some(self.size) {
            return Ok(Committed {
                size: self.size,
                newly_stored: false,
            });
        }
        inner
            .block_on(inner.s3.copy(&self.staged, &key))
            .map_err(|e| remote(inner.io_error("copying", &self.staged, e)))?;
        Ok(Committed {
            size: self.size,
            newly_stored: true,
        })
    }
}

/// A blob object opened for sending.
struct S3BlobRead {
    inner: Arc<Inner>,
    key: Path,
    /// The object's size at `open`.
    size: u64,
    /// The ranged `GET` in progress, if any (a `Mutex` because `chunk` takes `&self`; only the
    /// one transfer that owns this reader locks it).
    stream: Mutex<Option<Ranged>>,
}

/// A streaming ranged `GET`.
struct Ranged {
    /// The object's offset of the next byte `leftover` or `body` yields.
    pos: u64,
    /// Received but not yet handed out.
    leftover: Bytes,
    /// The rest of the response body.
    body: BoxStream<'static, object_store::Result<Bytes>>,
}

impl S3BlobRead {
    /// A `GET` of `pos..size`.
    fn start(&self, pos: u64) -> io::Result<Ranged> {
        let opts = GetOptions::new().with_range(Some(pos..self.size));
        let got = self
            .inner
            .block_on(self.inner.s3.get_opts(&self.key, opts))
            .map_err(|e| self.inner.io_error("reading", &self.key, e))?;
        Ok(Ranged {
            pos,
            leftover: Bytes::new(),
            body: got.into_stream(),
        })
    }
}

impl BlobRead for S3BlobRead {
    fn size(&self) -> u64 {
        self.size
    }

    fn chunk(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        super::check_range(offset, len, self.size)?;
        let mut guard = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BytesMut::with_capacity(len);
        let mut failures = 0;
        while out.len() < len {
            let pos = offset + out.len() as u64;
            if guard.as_ref().is_none_or(|r| r.pos != pos) {
                *guard = Some(self.start(pos)?);
            }
            let Some(ranged) = guard.as_mut() else {
                unreachable!("opened just above");
            };
            if ranged.leftover.is_empty() {
                match self.inner.block_on(ranged.body.next()) {
                    Some(Ok(b)) => ranged.leftover = b,
                    Some(Err(e)) if failures < READ_RETRIES => {
                        failures += 1;
                        tracing::debug!(key = %self.key, pos, error = %e, "a ranged read broke; reopening");
                        *guard = None;
                    }
                    Some(Err(e)) => return Err(self.inner.io_error("reading", &self.key, e)),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} ended at {pos}", self.inner.url(&self.key)),
                        ));
                    }
                }
                continue;
            }
            failures = 0;
            let want = len - out.len();
            let take = ranged.leftover.split_to(want.min(ranged.leftover.len()));
            ranged.pos += take.len() as u64;
            if out.is_empty() && take.len() == len {
                return Ok(take); // one network frame held the whole chunk: no copy
            }
            out.extend_from_slice(&take);
        }
        Ok(out.freeze())
    }
}

/// An upload to an [`S3BlobStore`]: staged in a local temp file (deleted on drop), sent to the
/// bucket at the commit.
struct S3BlobWriter {
    /// The hashed temp file.
    spool: Spool,
    /// The client.
    inner: Arc<Inner>,
    /// For messages about the temp file.
    tmp: PathBuf,
}

impl Write for S3BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.spool.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
    }
}

impl BlobWriter for S3BlobWriter {
    fn written(&self) -> u64 {
        self.spool.written()
    }

    fn digest(&self) -> Digest {
        self.spool.digest()
    }

    fn park(&mut self) -> io::Result<()> {
        self.spool.park()
    }

    /// Verifies, then sends the content unless the key already holds an object of its size.
    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError> {
        let S3BlobWriter { spool, inner, tmp } = *self;
        let (found, size, temp) = spool.finish().map_err(|source| BlobError::Io {
            action: "writing upload to",
            path: tmp,
            source,
        })?;
        if found != *expected {
            return Err(BlobError::Mismatch {
                expected: *expected,
                found,
                size,
            });
        }
        let key = inner.key(expected);
        let remote = |source| BlobError::Remote {
            action: "storing blob at",
            location: inner.url(&key),
            source,
        };
        // An object of another size under this key is damage (or a crash of another store):
        // overwritten with content that was just verified.
        if inner.head(&key).map_err(remote)?.map(|m| m.size) == Some(size) {
            return Ok(Committed {
                size,
                newly_stored: false,
            });
        }
        inner.upload(&key, &temp, size).map_err(remote)?;
        Ok(Committed {
            size,
            newly_stored: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_the_part_limit() {
        assert_eq!(part_size(1), PART_SIZE);
        assert_eq!(part_size(70 << 30), PART_SIZE);
        let big = 1u64 << 40;
        let p = part_size(big) as u64;
        assert!(big.div_ceil(p) <= MAX_PARTS, "{p}");
        assert_eq!(p % (1 << 20), 0);
    }

    #[test]
    fn keys_follow_the_data_dir_layout() {
        let d = Digest::of(b"x");
        let hex = d.hex();
        let loc = S3Location::parse("s3://b/ci/cache").unwrap();
        assert_eq!(
            loc.path(&format!("sha256/{}/{hex}", &hex[..2])).as_ref(),
            format!("ci/cache/sha256/{}/{hex}", &hex[..2])
        );
        let root = S3Location::parse("s3://b").unwrap();
        assert_eq!(root.path("sha256").as_ref(), "sha256");
    }
}
