//! The distribution spec's error codes ([`OciCode`]) and the `{"errors": [...]}` body every
//! `/v2/` failure answers with ([`OciError`]).
//!
//! Errors stay [`ServerError`]s inside the server (one enum, one status mapping); registry-only
//! failures are its `Registry` variant, and [`ServerError::oci_code`] gives every other variant
//! the code a registry client understands. Only the body differs between the two doors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ServerError;

/// An error code of the distribution spec (plus `UNKNOWN`, distribution's catch-all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// The server is at a transfer limit (503 `UNAVAILABLE`, as distribution answers).
    Unavailable,
    /// A path naming no endpoint (404 with `NAME_UNKNOWN`, as distribution answers).
    NotFound,
    /// A chunk that does not continue the upload where it stands (416 `BLOB_UPLOAD_INVALID`).
    RangeInvalid,
    /// Anything the client cannot fix.
    Unknown,
}

impl OciCode {
    /// The code in error bodies.
    pub fn as_str(self) -> &'static str {
        use OciCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid | RangeInvalid => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown | NotFound => "NAME_UNKNOWN",
            SizeInvalid => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            Unavailable => "UNAVAILABLE",
            Unknown => "UNKNOWN",
        }
    }

    /// The status the spec pairs with the code.
    pub fn status(self) -> StatusCode {
        use OciCode::*;
        match self {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown | NotFound => {
                StatusCode::NOT_FOUND
            }
            BlobUploadInvalid | DigestInvalid | ManifestBlobUnknown | ManifestInvalid
            | NameInvalid | SizeInvalid => StatusCode::BAD_REQUEST,
            RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A [`ServerError`] with this code and `message` (what failed and what to do).
    pub fn err(self, message: impl Into<String>) -> ServerError {
        ServerError::Registry {
            code: self,
            message: message.into(),
        }
    }
}

impl ServerError {
    /// The registry error code of any failure.
    pub fn oci_code(&self) -> OciCode {
        use ServerError::*;
        match self {
            Registry { code, .. } => *code,
            InvalidName(_) => OciCode::NameInvalid,
            InvalidDigest { .. } | DigestMismatch { .. } => OciCode::DigestInvalid,
            TooLarge { .. } => OciCode::SizeInvalid,
            NotFound { .. } => OciCode::NotFound,
            MissingBlobs { .. } => OciCode::ManifestBlobUnknown,
            Unauthorized { .. } => OciCode::Unauthorized,
            Forbidden { .. } => OciCode::Denied,
            MethodNotAllowed => OciCode::Unsupported,
            BadRequest { .. } | UploadBroken { .. } => OciCode::BlobUploadInvalid,
            Busy { .. } => OciCode::Unavailable,
            _ => OciCode::Unknown,
        }
    }
}

/// One error of the body.
#[derive(Serialize)]
struct Item {
    code: &'static str,
    message: String,
}

/// The body: `{"errors": [{"code", "message"}]}`.
#[derive(Serialize)]
struct Body {
    errors: Vec<Item>,
}

/// A [`ServerError`] answered the registry way: the v1 status (or, for registry-only errors, the
/// code's), the spec's body, and a `Basic` challenge on 401 so `docker login` sends the token as
/// the password.
pub struct OciError(pub ServerError);

impl From<ServerError> for OciError {
    fn from(e: ServerError) -> Self {
        OciError(e)
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let err = self.0;
        let (status, _) = err.status_and_code();
        let code = err.oci_code();
        err.log(code.as_str());
        let body = Body {
            errors: vec![Item {
                code: code.as_str(),
                message: err.client_message(),
            }],
        };
        let mut resp = super::with_version((status, axum::Json(body)).into_response());
        let h = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"layercache\""),
            );
        }
        if let ServerError::RangeNotSatisfiable { len } = err
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        err.add_retry_after(&mut resp);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_statuses_through_the_server_error() {
        let e = OciCode::ManifestBlobUnknown.err("x");
        assert_eq!(e.status_and_code().0, StatusCode::BAD_REQUEST);
        assert_eq!(e.oci_code().as_str(), "MANIFEST_BLOB_UNKNOWN");
        let e = OciCode::RangeInvalid.err("x");
        assert_eq!(e.status_and_code().0, StatusCode::RANGE_NOT_SATISFIABLE);
        let e = ServerError::TooLarge { limit: 1 };
        assert_eq!(e.oci_code(), OciCode::SizeInvalid);
    }

    #[test]
    fn unauthorized_answers_carry_a_basic_challenge() {
        let resp = OciError(OciCode::Unauthorized.err("no")).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"layercache\""
        );
    }
}
