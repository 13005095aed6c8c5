//! The cache server's HTTP API (v1), one method per route, one error type.
//!
//! Timeouts: connecting 3 s (a dead server must not stall CI), a lookup 10 s in all; downloads and
//! uploads have no overall limit but fail when the server stops sending for a minute.
//!
//! Retries: connection errors, `429`/`502`/`503`/`504` (honouring `Retry-After`) and, for requests
//! that are safe to repeat, transfers cut off on the way are tried again with jittered exponential
//! backoff ([`crate::retry`]); each retry is one log line, and the final error says how many
//! attempts were made. A streamed upload (`POST /v1/blobs`) cannot be replayed and is tried once;
//! file uploads reopen their file for each attempt.
//!
//! Auth: with a token (`LAYERCACHE_TOKEN` / `--token`) every request carries
//! `Authorization: Bearer <token>`; a 401 or 403 becomes [`ClientError::TokenRefused`], so the
//! message says it is the token, not the server, that is the problem.

use std::time::Duration;

use layercache_shared::api::{
    BlobStored, BuildRecorded, BuildReport, CommitRequest, EntryList, ErrorBody, LookupRequest,
    LookupResponse, MissingRequest, MissingResponse, PutReport, Stats,
};
use layercache_shared::{CacheKey, Digest, Namespace};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::retry::{self, RetryPolicy};

/// Why a request to the cache server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cache server for {what} ({url}){}: {}", tries(*.attempts), chain(.cause))]
    Unreachable {
        what: &'static str,
        url: String,
        /// How many times it was tried (1: no retry was allowed or left).
        attempts: u32,
        /// Not a `#[source]`: its causes are already in the message, once.
        cause: reqwest::Error,
    },
    #[error("the cache server refused {what} ({url}){}: HTTP {status} {code}: {message}", tries(*.attempts))]
    Refused {
        what: &'static str,
        url: String,
        /// How many times it was tried (more than 1 only for overload and gateway answers).
        attempts: u32,
        status: StatusCode,
        code: String,
        message: String,
        /// For `missing_blobs`: what the server lacks.
        missing: Vec<Digest>,
    },
    #[error(
        "the cache server refused the token: HTTP {status} for {what} ({url}): {message}; {hint}"
    )]
    TokenRefused {
        what: &'static str,
        url: String,
        /// 401 (no, unknown or revoked token) or 403 (role or namespace not allowed).
        status: StatusCode,
        /// The server's reason.
        message: String,
        /// What to do about it, depending on the status and whether a token was sent.
        hint: &'static str,
    },
    #[error(
        "the cache server answered {what} ({url}) with something that is not the expected JSON: {detail}"
    )]
    Garbage {
        what: &'static str,
        url: String,
        detail: String,
    },
    #[error("cannot set up the HTTP client for the cache server {url}: {detail}")]
    Setup { url: String, detail: String },
    #[error("cannot read the file to upload for blob {digest}: {source}")]
    File {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether the same request might succeed later: the server was unreachable or the transfer
    /// broke, or it was overloaded or behind a failing gateway.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { cause, .. } => retry::retryable_error(cause),
            ClientError::Refused { status, .. } => retry::retryable_status(*status),
            _ => false,
        }
    }
}

/// An error and its causes in one line: reqwest's own message hides the useful part
/// ("connection refused", "operation timed out") in its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = cause.source();
    }
    parts.join(": ")
}

/// ", after N attempts" when a request was retried, so the final error says retrying did not help.
fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

/// What to do about a 401 or 403.
fn token_hint(status: StatusCode, has_token: bool) -> &'static str {
    match (status == StatusCode::UNAUTHORIZED, has_token) {
        (true, false) => "this server needs a token: set LAYERCACHE_TOKEN or pass --token",
        (true, true) => {
            "the token is unknown or revoked: check LAYERCACHE_TOKEN / --token with the server's admin"
        }
        (false, _) => {
            "the token's role or namespaces do not allow this: use a token that may write this namespace"
        }
    }
}

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    /// Base URL without a trailing slash.
    base: String,
    /// Shared connection pool; carries the `Authorization` header when a token was given.
    http: reqwest::Client,
    /// Whether a token is sent (for the hint of a 401).
    has_token: bool,
    /// The token, for the registry credentials BuildKit gets (`None`: an open server).
    token: Option<String>,
    /// How failed requests are retried.
    retry: RetryPolicy,
}

/// Whether a request may be sent again after it may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Repeating it changes nothing (GET, HEAD, PUT, DELETE, and the read-only POSTs).
    Safe,
    /// Retried only when it surely did not take effect: the connection was never made, or the
    /// server answered 429/503 (it refuses before doing anything).
    IfNotDone,
}

/// Connect timeout: a dead server should cost seconds, not minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole-request timeout of lookups and other small JSON calls.
const SMALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per chunk of an upload body (read from a spool file, or from the save stream): large
/// enough that the syscalls do not show.
pub const UPLOAD_CHUNK: usize = 256 * 1024;
/// A transfer that stalls this long is broken.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The manifest media types a registry request accepts: BuildKit's cache is an OCI index (or an
/// image manifest with `image-manifest=true`).
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// What the build report call is called, in messages and in [`Client::call`]'s replay rule.
const BUILD_REPORT: &str = "the build report";

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8700`) that sends `token` as a
    /// bearer token on every request. Fails on a token that cannot be an HTTP header value.
    pub fn new(base: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let setup = |detail: String| ClientError::Setup {
            url: base.to_string(),
            detail,
        };
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    setup(
                        "the token contains characters not allowed in an HTTP header; \
                         check LAYERCACHE_TOKEN / --token"
                            .into(),
                    )
                })?;
            // Keeps the token out of debug output and logs of the HTTP stack.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| setup(chain(&e)))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            has_token: token.is_some(),
            token: token.map(str::to_string),
            retry: RetryPolicy::default(),
        })
    }

    /// This client with `policy` for retries.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// How this client retries (also the policy of transfers retried above it, e.g. restores).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A registry request: registries take the token as the password of Basic auth (`docker login
    /// HOST -u anything -p TOKEN`), so this replaces the bearer header.
    fn registry_request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url).timeout(SMALL_TIMEOUT);
        match &self.token {
            Some(token) => req.basic_auth("layercache", Some(token)),
            None => req,
        }
    }

    /// `GET /v2/`: whether the server speaks the registry protocol (and takes the token there).
    pub async fn registry_available(&self) -> Result<(), ClientError> {
        let url = format!("{}/v2/", self.base);
        let req = self.registry_request(Method::GET, &url);
        self.send("the registry check", &url, req).await?;
        Ok(())
    }

    /// `HEAD /v2/{repo}/manifests/{tag}`: whether the registry holds that tag.
    pub async fn registry_has_tag(&self, repo: &str, tag: &str) -> Result<bool, ClientError> {
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.base);
        let req = self
            .registry_request(Method::HEAD, &url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        match self.send("a registry tag check", &url, req).await {
            Ok(_) => Ok(true),
            Err(ClientError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Tags `to` in `repo` with the manifest `from` names (`GET` it, `PUT` it back under the
    /// new tag, same bytes and media type): a second name for a cache already exported, without
    /// BuildKit exporting it twice.
    pub async fn registry_copy_tag(
        &self,
        repo: &str,
        from: &str,
        to: &str,
    ) -> Result<(), ClientError> {
        let what = "a registry tag copy";
        let src = format!("{}/v2/{repo}/manifests/{from}", self.base);
        let req = self
            .registry_request(Method::GET, &src)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        let resp = self.send(what, &src, req).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(reqwest::header::HeaderValue::from_static(
                "application/vnd.oci.image.index.v1+json",
            ));
        let body = resp
            .bytes()
            .await
            .map_err(|cause| ClientError::Unreachable {
                what,
                url: src.clone(),
                attempts: 1,
                cause,
            })?;
        let dst = format!("{}/v2/{repo}/manifests/{to}", self.base);
        let req = self
            .registry_request(Method::PUT, &dst)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(body);
        self.send(what, &dst, req).await?;
        Ok(())
    }

    fn image_url(&self, ns: &Namespace, key: &CacheKey) -> String {
        format!(
            "{}/v1/images/{}/{}",
            self.base,
            enc(ns.as_str()),
            enc(key.as_str())
        )
    }

    /// Sends `req`, retrying as [`Replay::Safe`] allows: see [`Self::send_with`].
    async fn send(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_with(what, url, req, Replay::Safe).await
    }

    /// Sends `req`; a non-2xx answer becomes [`ClientError::Refused`] with the server's reason.
    /// Retries (while the policy allows and the request can be cloned, i.e. has no streamed body)
    /// on connection errors and overload or gateway answers, waiting at least `Retry-After`; with
    /// [`Replay::Safe`] also when the transfer broke after it was sent.
    async fn send_with(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
        replay: Replay,
    ) -> Result<reqwest::Response, ClientError> {
        let mut first = Some(req);
        let mut keep: Option<reqwest::RequestBuilder> = None;
        self.send_each(what, url, replay, || {
            let Some(req) = first.take() else {
                return Ok(keep.as_ref().and_then(|k| k.try_clone()));
            };
            keep = req.try_clone();
            Ok(Some(req))
        })
        .await
    }

    /// The retry loop: `make` builds each attempt's request (`None`: it cannot be built again,
    /// the last error stands; an error: give up with it).
    async fn send_each(
        &self,
        what: &'static str,
        url: &str,
        replay: Replay,
        mut make: impl FnMut() -> Result<Option<reqwest::RequestBuilder>, ClientError>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut attempt = 1;
        let mut req = make()?.expect("the first attempt always has a request");
        loop {
            let (err, retry_after) = match self.attempt(what, url, req, attempt).await {
                Ok(resp) => return Ok(resp),
                Err(failed) => failed,
            };
            let retryable = match &err {
                ClientError::Unreachable { cause, .. } => {
                    retry::retryable_error(cause) && (replay == Replay::Safe || cause.is_connect())
                }
                ClientError::Refused { status, .. } => {
                    retry::retryable_status(*status)
                        && (replay == Replay::Safe
                            || matches!(
                                *status,
                                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                            ))
                }
                _ => false,
            };
            let Some(wait) = retryable
                .then(|| self.retry.next_wait(attempt, retry_after))
                .flatten()
            else {
                return Err(err);
            };
            let Some(again) = make()? else {
                return Err(err);
            };
            // On stderr like the rest of the run's log (stdout may be the --json summary).
            eprintln!(
                "retrying {what} in {:.1} s (attempt {} of {}): {err}",
                wait.as_secs_f64(),
                attempt + 1,
                self.retry.retries + 1
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
            req = again;
        }
    }

    /// One try of `req`: the response, or the error and the server's `Retry-After`.
    async fn attempt(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
        attempts: u32,
    ) -> Result<reqwest::Response, (ClientError, Option<std::time::Duration>)> {
        let resp = req.send().await.map_err(|cause| {
            let err = ClientError::Unreachable {
                what,
                url: url.to_string(),
                attempts,
                cause,
            };
            (err, None)
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let retry_after = retry::retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let (code, message, missing) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message, body.error.missing),
            Err(_) => (
                "unknown".to_string(),
                text.chars().take(200).collect(),
                vec![],
            ),
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let err = ClientError::TokenRefused {
                what,
                url: url.to_string(),
                status,
                message,
                hint: token_hint(status, self.has_token),
            };
            return Err((err, None));
        }
        let err = ClientError::Refused {
            what,
            url: url.to_string(),
            attempts,
            status,
            code,
            message,
            missing,
        };
        Err((err, retry_after))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|cause| ClientError::Unreachable {
                what,
                url: url.to_string(),
                attempts: 1,
                cause,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Garbage {
            what,
            url: url.to_string(),
            detail: e.to_string(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        what: &'static str,
        method: Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        // Every call is a read or an idempotent write but the build report, which a repeat
        // after a lost answer would count twice.
        let replay = if what == BUILD_REPORT {
            Replay::IfNotDone
        } else {
            Replay::Safe
        };
        let mut req = self.http.request(method, &url).timeout(SMALL_TIMEOUT);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = self.send_with(what, &url, req, replay).await?;
        self.json(what, &url, resp).await
    }

    /// `POST /v1/lookup`: `Ok(None)` on a miss.
    pub async fn lookup(&self, req: &LookupRequest) -> Result<Option<LookupResponse>, ClientError> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Garbage {
            what: "the lookup",
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        match self
            .call(
                "the lookup",
                Method::POST,
                format!("{}/v1/lookup", self.base),
                Some(body),
            )
            .await
        {
            Ok(found) => Ok(Some(found)),
            Err(ClientError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/images/{ns}/{key}?skip=…`: the response whose body is the tarball.
    pub async fn get_image(
        &self,
        ns: &Namespace,
        key: &CacheKey,
        skip: &[Digest],
    ) -> Result<reqwest::Response, ClientError> {
        let mut url = self.image_url(ns, key);
        if !skip.is_empty() {
            let list: Vec<String> = skip.iter().map(|d| d.to_string()).collect();
            url = format!("{url}?skip={}", list.join(","));
        }
        self.send("the image download", &url, self.http.get(&url))
            .await
    }

    /// `POST /v1/blobs/missing`.
    pub async fn missing(&self, digests: Vec<Digest>) -> Result<MissingResponse, ClientError> {
        let body =
            serde_json::to_value(MissingRequest { digests }).map_err(|e| ClientError::Garbage {
                what: "the missing-blobs query",
                url: self.base.clone(),
                detail: e.to_string(),
            })?;
        let resp: MissingResponse = self
            .call(
                "the missing-blobs query",
                Method::POST,
                format!("{}/v1/blobs/missing", self.base),
                Some(body),
            )
            .await?;
        Ok(resp)
    }

    /// `PUT /v1/blobs/{digest}` with `body` of `len` bytes.
    pub async fn put_blob(
        &self,
        digest: Digest,
        len: u64,
        body: reqwest::Body,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/blobs/{digest}", self.base);
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.send("a blob upload", &url, req).await?;
        Ok(())
    }

    /// `PUT /v1/blobs/{digest}` with the `len` bytes of the file at `path`, reopened for each
    /// attempt so an upload cut off on the way is sent again in full (a PUT of a digest is
    /// idempotent; the server keeps nothing of a broken one).
    pub async fn put_file(
        &self,
        digest: Digest,
        len: u64,
        path: &std::path::Path,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/blobs/{digest}", self.base);
        self.send_each("a blob upload", &url, Replay::Safe, || {
            let file =
                std::fs::File::open(path).map_err(|source| ClientError::File { digest, source })?;
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                UPLOAD_CHUNK,
            );
            Ok(Some(
                self.http
                    .put(&url)
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(stream)),
            ))
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/blobs`: uploads `body` (of a length not known up front) and returns the digest
    /// the server computed; the caller compares it with its own.
    pub async fn post_blob(&self, body: reqwest::Body) -> Result<BlobStored, ClientError> {
        let what = "a blob upload";
        let url = format!("{}/v1/blobs", self.base);
        let resp = self
            .send(what, &url, self.http.post(&url).body(body))
            .await?;
        self.json(what, &url, resp).await
    }

    /// `PUT /v1/images/{ns}/{key}/manifest`.
    pub async fn commit(
        &self,
        ns: &Namespace,
        key: &CacheKey,
        req: &CommitRequest,
    ) -> Result<PutReport, ClientError> {
        let url = format!("{}/manifest", self.image_url(ns, key));
        let resp = self
            .send("the commit", &url, self.http.put(&url).json(req))
            .await?;
        self.json("the commit", &url, resp).await
    }

    /// `POST /v1/builds`: reports how a build went, for the dashboard's time-saved figures.
    pub async fn report_build(&self, report: &BuildReport) -> Result<BuildRecorded, ClientError> {
        let body = serde_json::to_value(report).map_err(|e| ClientError::Garbage {
            what: BUILD_REPORT,
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        self.call(
            BUILD_REPORT,
            Method::POST,
            format!("{}/v1/builds", self.base),
            Some(body),
        )
        .await
    }

    /// `GET /healthz`: whether the server answers.
    pub async fn healthy(&self) -> Result<(), ClientError> {
        let url = format!("{}/healthz", self.base);
        self.send(
            "the health check",
            &url,
            self.http.get(&url).timeout(SMALL_TIMEOUT),
        )
        .await?;
        Ok(())
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.call(
            "the stats query",
            Method::GET,
            format!("{}/v1/stats", self.base),
            None,
        )
        .await
    }

    /// `GET /v1/entries[?namespace=NS]`, every page (the server pages its listings; older
    /// servers answer everything in one page without a cursor).
    pub async fn entries(&self, ns: Option<&Namespace>) -> Result<EntryList, ClientError> {
        let mut all = EntryList {
            entries: Vec::new(),
            next_cursor: None,
        };
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/entries?limit=1000", self.base);
            if let Some(ns) = ns {
                url = format!("{url}&namespace={}", enc(ns.as_str()));
            }
            if let Some(c) = &cursor {
                url = format!("{url}&cursor={}", enc(c));
            }
            let page: EntryList = self
                .call("the entry listing", Method::GET, url, None)
                .await?;
            all.entries.extend(page.entries);
            match page.next_cursor {
                Some(next) if cursor.as_ref() != Some(&next) => cursor = Some(next),
                _ => return Ok(all),
            }
        }
    }
}

#[cfg(test)]
mod tests;
