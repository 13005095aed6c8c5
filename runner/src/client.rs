//! The cache server's HTTP API (v1), one method per route, one error type.
//!
//! Timeouts: connecting 3 s (a dead server must not stall CI), a lookup 10 s in all; downloads and
//! uploads have no overall limit but fail when the server stops sending for a minute.
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

/// Why a request to the cache server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cache server for {what} ({url}): {}", chain(.cause))]
    Unreachable {
        what: &'static str,
        url: String,
        /// Not a `#[source]`: its causes are already in the message, once.
        cause: reqwest::Error,
    },
    #[error("the cache server refused {what} ({url}): HTTP {status} {code}: {message}")]
    Refused {
        what: &'static str,
        url: String,
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
}

/// Connect timeout: a dead server should cost seconds, not minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole-request timeout of lookups and other small JSON calls.
const SMALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer that stalls this long is broken.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

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
        })
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
        let req = self.registry_request(Method::HEAD, &url).header(
            reqwest::header::ACCEPT,
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        );
        match self.send("a registry tag check", &url, req).await {
            Ok(_) => Ok(true),
            Err(ClientError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn image_url(&self, ns: &Namespace, key: &CacheKey) -> String {
        format!(
            "{}/v1/images/{}/{}",
            self.base,
            enc(ns.as_str()),
            enc(key.as_str())
        )
    }

    /// Sends `req`; a non-2xx answer becomes [`ClientError::Refused`] with the server's reason.
    async fn send(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|cause| ClientError::Unreachable {
            what,
            url: url.to_string(),
            cause,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
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
            return Err(ClientError::TokenRefused {
                what,
                url: url.to_string(),
                status,
                message,
                hint: token_hint(status, self.has_token),
            });
        }
        Err(ClientError::Refused {
            what,
            url: url.to_string(),
            status,
            code,
            message,
            missing,
        })
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
        let mut req = self.http.request(method, &url).timeout(SMALL_TIMEOUT);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = self.send(what, &url, req).await?;
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
            what: "the build report",
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        self.call(
            "the build report",
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
mod tests {
    use super::*;

    #[test]
    fn image_urls_percent_encode_the_namespace() {
        let c = Client::new("http://h:1/", None).unwrap();
        let url = c.image_url(&"acme/web".parse().unwrap(), &"sha256:ab".parse().unwrap());
        assert_eq!(url, "http://h:1/v1/images/acme%2Fweb/sha256%3Aab");
    }

    #[tokio::test]
    async fn a_dead_server_is_unreachable_and_the_message_names_the_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let req = LookupRequest {
            namespaces: vec!["main".parse().unwrap()],
            key: "k".parse().unwrap(),
            prefixes: vec![],
        };
        let err = c.lookup(&req).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }

    /// Accepts one connection, records the request head and answers `status` with an error body.
    async fn one_shot_server(status: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let body =
                r#"{"error":{"code":"unauthorized","message":"the token is unknown or revoked"}}"#;
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        (url, task)
    }

    #[tokio::test]
    async fn the_token_is_sent_as_bearer_and_a_401_names_the_token() {
        let (url, task) = one_shot_server("401 Unauthorized").await;
        let c = Client::new(&url, Some("lc_secret")).unwrap();
        let err = c.stats().await.unwrap_err();
        let head = task.await.unwrap();
        assert!(head.contains("authorization: bearer lc_secret"), "{head}");
        assert!(
            matches!(err, ClientError::TokenRefused { status, .. } if status == StatusCode::UNAUTHORIZED),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("the cache server refused the token"),
            "{text}"
        );
        assert!(text.contains("unknown or revoked"), "{text}");
    }

    #[tokio::test]
    async fn without_a_token_no_header_is_sent_and_the_hint_says_to_set_one() {
        let (url, task) = one_shot_server("403 Forbidden").await;
        let err = Client::new(&url, None).unwrap().stats().await.unwrap_err();
        assert!(!task.await.unwrap().contains("authorization:"));
        assert!(
            matches!(err, ClientError::TokenRefused { status, .. } if status == StatusCode::FORBIDDEN),
            "{err:?}"
        );
        let (url, task) = one_shot_server("401 Unauthorized").await;
        let err = Client::new(&url, None).unwrap().stats().await.unwrap_err();
        task.await.unwrap();
        assert!(err.to_string().contains("LAYERCACHE_TOKEN"), "{err}");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_up_front() {
        let err = Client::new("http://h:1", Some("bad\ntoken")).err().unwrap();
        assert!(matches!(err, ClientError::Setup { .. }), "{err:?}");
        assert!(
            !err.to_string().contains("bad"),
            "the token must not be echoed: {err}"
        );
    }
}
