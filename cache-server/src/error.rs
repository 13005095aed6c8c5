//! [`ServerError`]: every way a request can fail, mapped once to an HTTP status and a JSON
//! [`ErrorBody`].

use std::io;
use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use layercache_shared::api::{ErrorBody, ErrorDetail};
use layercache_shared::archive::ArchiveError;
use layercache_shared::{Digest, DigestError, NameError};

use crate::store::blobs::BlobError;

/// Why a request failed. Handlers return it; [`IntoResponse`] logs the cause and answers.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{what}: {source}")]
    InvalidDigest {
        /// Where the bad digest was found (a path segment, a header, a config).
        what: String,
        source: DigestError,
    },
    #[error("{message}")]
    BadRequest {
        /// What was wrong with the request and how to fix it.
        message: String,
    },
    #[error("{what} was not found")]
    NotFound {
        /// The thing asked for, e.g. "entry `acme/web` `k`".
        what: String,
    },
    #[error("the tarball was refused: {source}")]
    BadArchive {
        /// Boxed: the reader's error is large and would bloat every `Result` here.
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("the upload is larger than the server's limit of {limit} bytes (--max-upload-bytes)")]
    TooLarge {
        /// The configured `max_upload_bytes`.
        limit: u64,
    },
    #[error("{what}: the server's limit for JSON requests; split the request")]
    JsonTooLarge {
        /// Which body, and which limit it passed.
        what: String,
    },
    #[error(
        "the uploaded content has digest {found}, not the {expected} named in the URL: upload it again"
    )]
    DigestMismatch { expected: Digest, found: Digest },
    #[error("{} blob(s) are not on the server: upload them, then commit again", missing.len())]
    MissingBlobs {
        /// Digests the commit needs but the server lacks.
        missing: Vec<Digest>,
    },
    #[error("config blob {digest} is not a usable image config: {reason}")]
    BadConfig { digest: Digest, reason: String },
    #[error("the requested range is not within the blob's {len} bytes")]
    RangeNotSatisfiable {
        /// Blob length, for the `Content-Range: bytes */len` header.
        len: u64,
    },
    #[error("the server's disk is full while {action}: free space or delete entries")]
    StorageFull {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the upload needs {requested} bytes but the size quota (--max-size {max_size} bytes) has \
         room for {} next to uploads in progress: retry later, or raise --max-size",
        max_size.saturating_sub(*reserved)
    )]
    QuotaFull {
        /// Bytes the upload asked for.
        requested: u64,
        /// Bytes other uploads in progress hold.
        reserved: u64,
        /// `--max-size`.
        max_size: u64,
    },
    #[error("{action} `{}` failed: {source}", path.display())]
    Io {
        /// What the server was doing.
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the request body failed (did the client disconnect?): {source}")]
    UploadBroken {
        #[source]
        source: io::Error,
    },
    #[error(
        "blob {digest} is corrupt on the server ({on_disk} bytes on disk, {recorded} recorded): \
         it is not served; an operator should run `layercache-server verify`"
    )]
    CorruptBlob {
        digest: Digest,
        /// Size in the index.
        recorded: u64,
        /// Size of the file.
        on_disk: u64,
    },
    #[error("this method is not allowed on this route (see the v1 API in README.md)")]
    MethodNotAllowed,
    #[error("{reason}")]
    Unauthorized {
        /// Why no token was accepted (missing, malformed, unknown or revoked) and what to send.
        reason: String,
    },
    #[error("{reason}")]
    Forbidden {
        /// Which role or namespace the token lacks for this request.
        reason: String,
    },
    #[error("{message}")]
    InvalidPolicy {
        /// What is wrong with a role or namespace pattern given for a token.
        message: String,
    },
    #[error("{message}")]
    Tls {
        /// Which certificate or key file could not be used, and why.
        message: String,
    },
    #[error("{message}")]
    Registry {
        /// The distribution spec's code, which also decides the status.
        code: crate::registry::error::OciCode,
        /// What failed and what to do.
        message: String,
    },
    #[error(
        "the server is busy: {limit} {what} are in progress (its limit); retry in \
         {retry_after_secs}s"
    )]
    Busy {
        /// Which kind of transfer is at its limit ("uploads", "downloads", "tarball uploads").
        what: &'static str,
        /// The limit (`--max-uploads`, `--max-downloads`, `--max-tarball-uploads`).
        limit: usize,
        /// Sent as `Retry-After`.
        retry_after_secs: u64,
    },
    #[error("the database failed: {0}")]
    Db(#[from] crate::store::meta::MetaError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// The HTTP status and the stable `code` of the error body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ServerError::*;
        match self {
            InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            InvalidDigest { .. } => (StatusCode::BAD_REQUEST, "invalid_digest"),
            BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            BadArchive { source } => {
                let code = source.code();
                // `storage`: the server could not store a member, not the tarball's fault;
                // `too_large`: a document or count over a limit (the message names it).
                let status = match code {
                    "storage" => StatusCode::INTERNAL_SERVER_ERROR,
                    "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, code)
            }
            TooLarge { .. } | JsonTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "digest_mismatch"),
            MissingBlobs { .. } => (StatusCode::BAD_REQUEST, "missing_blobs"),
            BadConfig { .. } => (StatusCode::BAD_REQUEST, "bad_config"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "bad_range"),
            StorageFull { .. } | QuotaFull { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "storage_full")
            }
            Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
            UploadBroken { .. } => (StatusCode::BAD_REQUEST, "upload_broken"),
            CorruptBlob { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_blob"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            InvalidPolicy { .. } => (StatusCode::BAD_REQUEST, "invalid_policy"),
            Tls { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "tls_error"),
            Registry { code, .. } => (code.status(), code.as_str()),
            Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Db(e) if e.is_unavailable() => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "database_error"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// An I/O failure, reported as 507 when the disk is full.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        if is_storage_full(&source) {
            return ServerError::StorageFull {
                action: format!("{action} `{}`", path.into().display()),
                source,
            };
        }
        ServerError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A request the server cannot act on, with the reason to show.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ServerError::BadRequest {
            message: message.into(),
        }
    }

    /// A missing entry, blob or route.
    pub fn not_found(what: impl Into<String>) -> Self {
        ServerError::NotFound { what: what.into() }
    }
}

/// Whether an I/O error means "no space left on device".
pub fn is_storage_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

impl From<BlobError> for ServerError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Mismatch {
                expected, found, ..
            } => ServerError::DigestMismatch { expected, found },
            BlobError::Io {
                action,
                path,
                source,
            } => ServerError::io(action, path, source),
            BlobError::Remote {
                action,
                location,
                source,
            } => ServerError::io(action, location, source),
        }
    }
}

impl From<rusqlite::Error> for ServerError {
    fn from(e: rusqlite::Error) -> Self {
        ServerError::Db(e.into())
    }
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServerError::Internal(format!("a blocking task failed: {e}"))
    }
}

impl ServerError {
    /// Logs the failure: server errors with their cause at ERROR, refusals at INFO.
    pub fn log(&self, code: &str) {
        if self.status_and_code().0.is_server_error() {
            tracing::error!(error = %self, source = ?std::error::Error::source(self), code, "request failed");
        } else {
            tracing::info!(error = %self, code, "request refused");
        }
    }

    /// The message for the client: the error's own text for what the client can act on; for
    /// server failures only what kind it is and the request id that finds the details (paths,
    /// SQLite messages) in the server's log.
    pub fn client_message(&self) -> String {
        let (status, _) = self.status_and_code();
        let id = crate::request_id::current().unwrap_or_default();
        match self {
            ServerError::StorageFull { .. } => format!(
                "the cache server's disk is full: its operator must free space (or lower \
                 --max-size); request id {id}"
            ),
            _ if status == StatusCode::INTERNAL_SERVER_ERROR => format!(
                "internal error: the cache server could not finish this request; its log has \
                 the details under request id {id}"
            ),
            _ => self.to_string(),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        self.log(code);
        let missing = match &self {
            ServerError::MissingBlobs { missing } => missing.clone(),
            _ => Vec::new(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.client_message(),
                missing,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let ServerError::Unauthorized { .. } = self {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"layercache\""),
            );
        }
        if let ServerError::RangeNotSatisfiable { len } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        self.add_retry_after(&mut resp);
        resp
    }
}

impl ServerError {
    /// `Retry-After` on a busy answer, so clients back off as long as the server asks.
    pub fn add_retry_after(&self, resp: &mut Response) {
        if let ServerError::Busy {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_reported_as_insufficient_storage() {
        let e = ServerError::io("writing", "/x", io::Error::from_raw_os_error(28));
        assert_eq!(e.status_and_code().0, StatusCode::INSUFFICIENT_STORAGE);
        let e = ServerError::io("writing", "/x", io::Error::other("boom"));
        assert_eq!(e.status_and_code().0, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn missing_blobs_are_listed_in_the_body() {
        let d = Digest::of(b"x");
        let resp = ServerError::MissingBlobs { missing: vec![d] }.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
