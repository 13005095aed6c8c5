//! Bounded transfers: at most `--max-uploads` blob uploads, `--max-tarball-uploads` tarball
//! uploads and `--max-downloads` downloads run at once, one [`Semaphore`] per kind. A request
//! over the limit waits up to `--queue-wait-secs` for a slot, then is answered `503` with
//! `Retry-After` (the v1 JSON error, or the registry's error body under `/v2/`).
//!
//! The middleware ([`limit`]) sits inside auth, so a refused token never takes a slot; the slot is
//! held until the response body has been sent (a download streams after its handler returned).
//! Other requests (lookups, commits, stats, `/healthz`) are never queued here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;
use crate::registry::error::OciError;
use crate::settings::Settings;

/// What a request transfers, for the purpose of limiting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A blob body read into the store (v1 blob PUT/POST, registry uploads and chunks).
    Upload,
    /// A `docker save` tarball read through the archive reader on a blocking thread.
    TarballUpload,
    /// A blob or tarball streamed back.
    Download,
}

impl Kind {
    /// Which kind of transfer `method` on `path` is, if any.
    pub fn of(method: &Method, path: &str) -> Option<Kind> {
        let v1_blob =
            path == "/v1/blobs" || (path.starts_with("/v1/blobs/") && path != "/v1/blobs/missing");
        let v1_image = path.starts_with("/v1/images/") && !path.ends_with("/manifest");
        let v2_upload = path.starts_with("/v2/") && path.contains("/blobs/uploads");
        let v2_blob = path.starts_with("/v2/") && path.contains("/blobs/") && !v2_upload;
        match *method {
            Method::GET if v1_blob || v1_image || v2_blob => Some(Kind::Download),
            Method::PUT if v1_image => Some(Kind::TarballUpload),
            Method::PUT | Method::POST if v1_blob => Some(Kind::Upload),
            Method::PUT | Method::POST | Method::PATCH if v2_upload => Some(Kind::Upload),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Upload => "uploads",
            Kind::TarballUpload => "tarball uploads",
            Kind::Download => "downloads",
        }
    }
}

/// One semaphore per [`Kind`], sized from the settings.
pub struct TransferLimits {
    /// Blob uploads.
    uploads: Arc<Semaphore>,
    /// Tarball uploads.
    tarballs: Arc<Semaphore>,
    /// Downloads.
    downloads: Arc<Semaphore>,
    /// The sizes, for the 503 message.
    limits: [usize; 3],
    /// How long a request waits for a slot.
    queue_wait: Duration,
}

impl TransferLimits {
    /// Limits as `settings` ask (each at least 1).
    pub fn new(settings: &Settings) -> TransferLimits {
        let limits = [
            settings.max_uploads.max(1),
            settings.max_tarball_uploads.max(1),
            settings.max_downloads.max(1),
        ];
        TransferLimits {
            uploads: Arc::new(Semaphore::new(limits[0])),
            tarballs: Arc::new(Semaphore::new(limits[1])),
            downloads: Arc::new(Semaphore::new(limits[2])),
            limits,
            queue_wait: settings.queue_wait,
        }
    }

    /// A slot for a `kind` transfer, waiting up to the queue wait; [`ServerError::Busy`] when
    /// none freed up.
    pub async fn acquire(&self, kind: Kind) -> Result<OwnedSemaphorePermit, ServerError> {
        let (sem, limit) = match kind {
            Kind::Upload => (&self.uploads, self.limits[0]),
            Kind::TarballUpload => (&self.tarballs, self.limits[1]),
            Kind::Download => (&self.downloads, self.limits[2]),
        };
        if let Ok(p) = Arc::clone(sem).try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout(self.queue_wait, Arc::clone(sem).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // Closed never happens (nothing closes these); treat it like a full queue.
            Ok(Err(_)) | Err(_) => Err(ServerError::Busy {
                what: kind.what(),
                limit,
                // Slots free up as transfers end: a short pause spreads the retries.
                retry_after_secs: self.queue_wait.as_secs().clamp(1, 30),
            }),
        }
    }
}

/// The middleware: takes a slot for transfers, answers 503 when none is free in time.
pub async fn limit(
    State(limits): State<Arc<TransferLimits>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(kind) = Kind::of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let registry = req.uri().path().starts_with("/v2/");
    match limits.acquire(kind).await {
        Ok(permit) => next.run(req).await.map(|b| Body::new(Held::new(b, permit))),
        Err(e) if registry => crate::registry::with_version(OciError(e).into_response()),
        Err(e) => e.into_response(),
    }
}

/// A response body that keeps `guard` (a slot, a connection's in-flight mark) until the body has
/// been sent or dropped. Size and end-of-stream pass through, so `Content-Length` is kept.
pub struct Held<G> {
    /// The body.
    inner: Body,
    /// Released when this body is dropped.
    _guard: G,
}

impl<G> Held<G> {
    /// `inner`, holding `guard` for as long as it lives.
    pub fn new(inner: Body, guard: G) -> Held<G> {
        Held {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Send + Unpin + 'static> HttpBody for Held<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_told_from_other_requests() {
        let k = |m: Method, p: &str| Kind::of(&m, p);
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(k(Method::POST, "/v1/blobs"), Some(Kind::Upload));
        assert_eq!(
            k(Method::PUT, &format!("/v1/blobs/{d}")),
            Some(Kind::Upload)
        );
        assert_eq!(
            k(Method::GET, &format!("/v1/blobs/{d}")),
            Some(Kind::Download)
        );
        assert_eq!(k(Method::HEAD, &format!("/v1/blobs/{d}")), None);
        assert_eq!(k(Method::POST, "/v1/blobs/missing"), None);
        assert_eq!(k(Method::PUT, "/v1/images/a/k"), Some(Kind::TarballUpload));
        assert_eq!(k(Method::GET, "/v1/images/a/k"), Some(Kind::Download));
        assert_eq!(k(Method::PUT, "/v1/images/a/k/manifest"), None);
        assert_eq!(k(Method::POST, "/v1/lookup"), None);
        assert_eq!(k(Method::GET, "/healthz"), None);
        assert_eq!(
            k(Method::PATCH, "/v2/a/b/blobs/uploads/1"),
            Some(Kind::Upload)
        );
        assert_eq!(
            k(Method::POST, "/v2/a/b/blobs/uploads/"),
            Some(Kind::Upload)
        );
        assert_eq!(k(Method::GET, "/v2/a/b/blobs/uploads/1"), None);
        assert_eq!(
            k(Method::GET, &format!("/v2/a/b/blobs/{d}")),
            Some(Kind::Download)
        );
        assert_eq!(k(Method::GET, "/v2/a/b/manifests/latest"), None);
    }

    #[tokio::test]
    async fn a_full_kind_answers_busy_after_the_queue_wait() {
        let settings = Settings {
            max_uploads: 1,
            queue_wait: Duration::from_millis(20),
            ..Settings::new("/unused")
        };
        let limits = TransferLimits::new(&settings);
        let held = limits.acquire(Kind::Upload).await.unwrap();
        let e = limits.acquire(Kind::Upload).await.unwrap_err();
        assert!(matches!(e, ServerError::Busy { limit: 1, .. }), "{e}");
        // Other kinds are not affected.
        drop(limits.acquire(Kind::Download).await.unwrap());
        drop(held);
        drop(limits.acquire(Kind::Upload).await.unwrap());
    }
}
