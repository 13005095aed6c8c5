//! A request id on every request: in the `x-request-id` response header, in the request's log
//! span, and in the body of a 5xx answer, so "internal error, request id X" finds its log lines
//! without the client ever seeing paths or database messages.
//!
//! The id is the client's or proxy's `x-request-id` when it sends one, else a fresh UUID
//! (tower-http's `SetRequestId`); [`scope`] makes it readable by [`current`] wherever the
//! request's response is made, including errors turned into responses.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of `req` as text (empty if it has none, which the layers in `routes.rs` rule out).
pub fn of(req: &Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Middleware: runs the rest of the request with its id in [`current`].
pub async fn scope(req: Request, next: Next) -> Response {
    let id = of(&req);
    REQUEST_ID.scope(id, next.run(req)).await
}

/// The id of the request being answered, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
