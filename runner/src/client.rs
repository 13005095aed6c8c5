//! The cache server's HTTP API (v1), one method per route, one error type.
//!
//! Timeouts: connecting 3 s (a dead server must not stall CI), a lookup 10 s in all; downloads and
//! uploads have no overall limit but fail when the server stops sending for a minute.

use std::time::Duration;

use layercache_shared::api::{
    CommitRequest, EntryList, ErrorBody, LookupRequest, LookupResponse, MissingRequest,
    MissingResponse, PutReport, Stats,
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
        "the cache server answered {what} ({url}) with something that is not the expected JSON: {detail}"
    )]
    Garbage {
        what: &'static str,
        url: String,
        detail: String,
    },
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

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    /// Base URL without a trailing slash.
    base: String,
    /// Shared connection pool.
    http: reqwest::Client,
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
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8700`).
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|cause| ClientError::Unreachable {
                what: "setting up the HTTP client",
                url: base.to_string(),
                cause,
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
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
    pub async fn missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, ClientError> {
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
        Ok(resp.missing)
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

    /// `GET /v1/entries[?namespace=NS]`.
    pub async fn entries(&self, ns: Option<&Namespace>) -> Result<EntryList, ClientError> {
        let mut url = format!("{}/v1/entries", self.base);
        if let Some(ns) = ns {
            url = format!("{url}?namespace={}", enc(ns.as_str()));
        }
        self.call("the entry listing", Method::GET, url, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_percent_encode_the_namespace() {
        let c = Client::new("http://h:1/").unwrap();
        let url = c.image_url(&"acme/web".parse().unwrap(), &"sha256:ab".parse().unwrap());
        assert_eq!(url, "http://h:1/v1/images/acme%2Fweb/sha256%3Aab");
    }

    #[tokio::test]
    async fn a_dead_server_is_unreachable_and_the_message_names_the_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let req = LookupRequest {
            namespaces: vec!["main".parse().unwrap()],
            key: "k".parse().unwrap(),
            prefixes: vec![],
        };
        let err = c.lookup(&req).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }
}
