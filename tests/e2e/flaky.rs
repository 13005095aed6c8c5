//! A reverse proxy in front of the real server that misbehaves on cue, as a busy server or a bad
//! network does: it answers chosen requests `503` with `Retry-After`, or cuts a response off
//! after some bytes. Everything else passes through unchanged, streamed both ways.
//!
//! Built on axum and reqwest (no hand-written HTTP), on its own tokio runtime thread, so the
//! blocking e2e tests can use it like [`crate::util::TestServer`].

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

/// What to do to a matching request.
#[derive(Debug, Clone, Copy)]
pub enum Misdeed {
    /// Answer `503` with `Retry-After: secs` without asking the server.
    Busy { retry_after_secs: u64 },
    /// Pass it on, then break the connection after this many bytes of the answer's body.
    CutAfter(usize),
}

/// A misdeed for the next `times` requests whose method and path start as given.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: &'static str,
    pub path_prefix: &'static str,
    pub misdeed: Misdeed,
    pub times: usize,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    faults: Mutex<Vec<Fault>>,
    /// How many times each fault (by index in the list given) was applied.
    applied: Mutex<Vec<usize>>,
}

/// The running proxy; stops when dropped.
pub struct FlakyProxy {
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl FlakyProxy {
    /// Proxies to `upstream` (e.g. the test server's URL), applying `faults`.
    pub fn start(upstream: &str, faults: Vec<Fault>) -> FlakyProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            applied: Mutex::new(vec![0; faults.len()]),
            faults: Mutex::new(faults),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(proxy)
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        FlakyProxy {
            url,
            shared,
            _runtime: runtime,
        }
    }

    /// How many times fault number `i` was applied.
    pub fn applied(&self, i: usize) -> usize {
        self.shared.applied.lock().unwrap()[i]
    }

    /// Replaces the faults (and their counts).
    pub fn set_faults(&self, faults: Vec<Fault>) {
        *self.shared.applied.lock().unwrap() = vec![0; faults.len()];
        *self.shared.faults.lock().unwrap() = faults;
    }
}

/// The first fault with uses left that matches, used up by one.
fn take_fault(shared: &Shared, method: &str, path: &str) -> Option<Misdeed> {
    let mut faults = shared.faults.lock().unwrap();
    let (i, fault) = faults
        .iter_mut()
        .enumerate()
        .find(|(_, f)| f.times > 0 && f.method == method && path.starts_with(f.path_prefix))?;
    fault.times -= 1;
    shared.applied.lock().unwrap()[i] += 1;
    Some(fault.misdeed)
}

async fn proxy(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let misdeed = take_fault(&shared, method.as_str(), req.uri().path());
    if let Some(Misdeed::Busy { retry_after_secs }) = misdeed {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from(retry_after_secs));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let body = r#"{"error":{"code":"busy","message":"the proxy plays a busy server"}}"#;
        return (StatusCode::SERVICE_UNAVAILABLE, headers, body).into_response();
    }
    let mut out = shared
        .http
        .request(method, format!("{}{path_and_query}", shared.upstream));
    for (name, value) in req.headers() {
        if name != "host" {
            out = out.header(name, value);
        }
    }
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    let resp = match out.body(body).send().await {
        Ok(resp) => resp,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let stream = resp.bytes_stream();
    let body = match misdeed {
        Some(Misdeed::CutAfter(limit)) => {
            let mut sent = 0usize;
            Body::from_stream(stream.map(move |chunk| {
                let chunk = chunk.map_err(std::io::Error::other)?;
                if sent + chunk.len() > limit {
                    return Err(std::io::Error::other("the proxy cuts the answer off"));
                }
                sent += chunk.len();
                Ok::<Bytes, std::io::Error>(chunk)
            }))
        }
        _ => Body::from_stream(stream),
    };
    builder.body(body).unwrap()
}
