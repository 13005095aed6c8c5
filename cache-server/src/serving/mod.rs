//! The serving loop: accepts TCP connections and serves HTTP/1.1 on them with hyper, bounded so
//! slow or hostile clients cannot take the server down.
//!
//! - Every accepted socket gets `TCP_NODELAY` and a slot in the connection table ([`conns`]): at
//!   the cap (`--max-connections`, lowered to fit the open-file limit, see [`fdlimit`]) the
//!   longest-idle connection is closed for the newcomer, or, when all are busy, the newcomer is.
//! - TLS handshakes run in the connection's own task, bounded by [`crate::tls::HANDSHAKE_TIMEOUT`].
//! - Headers must arrive within `--header-timeout-secs` (hyper's header-read timer, which also
//!   bounds how long a kept-alive connection waits for its next request).
//! - A request body that sends nothing for `--body-timeout-secs` fails the read, so a stalled
//!   upload ends with an error instead of holding its slot.
//! - A connection outside a handler that moves no byte for `--idle-timeout-secs` is closed (a
//!   client that stopped reading its download).
//! - On shutdown the listener closes, connections finish their requests (idle ones close at once),
//!   and the loop returns in time for the process to exit within `--shutdown-timeout-secs` even if
//!   a client is still stalled.

pub mod conns;
pub mod fdlimit;
pub mod sized;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::settings::Settings;
use crate::transfers::Held;
use conns::{ConnInfo, Slot, Table};

/// Of the shutdown deadline, what is kept for the exit after the drain (aborting the collector,
/// stopping the runtime), so the process is gone within the deadline, not just the drain.
const EXIT_MARGIN: Duration = Duration::from_millis(500);

/// How often the accept loop may log that it turned connections away.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Plain HTTP or HTTPS.
#[derive(Clone)]
pub enum Transport {
    /// HTTP.
    Plain,
    /// HTTPS with this acceptor.
    Tls(TlsAcceptor),
}

/// The timeouts a connection task applies.
#[derive(Clone, Copy)]
struct Timeouts {
    /// A request body silent this long fails.
    body: Duration,
    /// A connection outside handlers silent this long is closed.
    idle: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains as the module docs say.
/// Only a broken listener setup fails; a failed accept (usually out of descriptors) is logged and
/// retried.
pub async fn run(
    listener: TcpListener,
    transport: Transport,
    app: Router,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let soft = fdlimit::current().map(|(soft, _)| soft).unwrap_or(1024);
    let table = Table::new(fdlimit::connection_cap(settings.max_connections, soft));
    tracing::info!(
        max_connections = table.cap(),
        open_file_limit = soft,
        header_timeout_secs = settings.header_timeout.as_secs_f64(),
        body_timeout_secs = settings.body_timeout.as_secs_f64(),
        idle_timeout_secs = settings.idle_timeout.as_secs_f64(),
        "connection limits"
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    let timeouts = Timeouts {
        body: settings.body_timeout,
        idle: settings.idle_timeout,
    };
    let graceful = GracefulShutdown::new();
    let mut refused = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Usually EMFILE: wait for descriptors to free up instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
        }
        let Some(slot) = table.admit().await else {
            drop(tcp);
            refused += 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                tracing::warn!(
                    refused,
                    max_connections = table.cap(),
                    "at the connection cap with every connection busy: closing new connections \
                     (raise --max-connections or the open-file limit)"
                );
                last_refusal_log = Some(Instant::now());
            }
            continue;
        };
        tokio::spawn(connection(
            tcp,
            peer,
            transport.clone(),
            app.clone(),
            http.clone(),
            graceful.watcher(),
            slot,
            timeouts,
        ));
    }
    drop(listener);
    let open = table.len();
    tracing::info!(
        connections = open,
        deadline_secs = settings.shutdown_timeout.as_secs_f64(),
        "stopped accepting; finishing in-flight requests"
    );
    let drain = settings.shutdown_timeout.saturating_sub(EXIT_MARGIN);
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => tracing::warn!(
            connections = table.len(),
            "shutdown deadline passed with connections still open: exiting anyway"
        ),
    }
    Ok(())
}

/// One connection: handshake (TLS), then HTTP until it ends, is evicted, or goes idle.
#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    app: Router,
    http: http1::Builder,
    watcher: Watcher,
    slot: Slot,
    timeouts: Timeouts,
) {
    let info = Arc::clone(&slot.info);
    match transport {
        Transport::Plain => serve_io(tcp, peer, app, http, watcher, info, timeouts).await,
        Transport::Tls(acceptor) => {
            let handshake = acceptor.accept(tcp);
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => serve_io(tls, peer, app, http, watcher, info, timeouts).await,
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        }
    }
    drop(slot);
}

async fn serve_io<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    http: http1::Builder,
    watcher: Watcher,
    info: Arc<ConnInfo>,
    timeouts: Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let info = Arc::clone(&info);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mark = info.begin();
            let req = req.map(|b| {
                // The timeout wrapper hides the declared length; `Sized` keeps it.
                let hint = hyper::body::Body::size_hint(&b);
                Body::new(sized::Sized::new(
                    Body::new(TimeoutBody::new(timeouts.body, b)),
                    &hint,
                ))
            });
            let app = app.clone();
            async move {
                let Ok(resp) = app.oneshot(req).await;
                let mark = mark.responded();
                Ok::<_, Infallible>(resp.map(|b| Body::new(Held::new(b, mark))))
            }
        })
    };
    let io = TokioIo::new(Tracked {
        inner: io,
        info: Arc::clone(&info),
    });
    let conn = watcher.watch(http.serve_connection(io, service));
    tokio::pin!(conn);
    let tick = (timeouts.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = info.evict.notified() => {
                if info.is_idle() {
                    tracing::debug!(%peer, "closing an idle connection to admit a new one");
                    return;
                }
                info.keep();
            }
            _ = ticks.tick() => {
                if !info.is_handling() && info.idle_for() >= timeouts.idle {
                    tracing::debug!(%peer, "closing a connection idle for {:?}", timeouts.idle);
                    return;
                }
            }
        }
    }
}

/// A socket that records when it last moved a byte (see [`ConnInfo::idle_for`]).
struct Tracked<IO> {
    /// The socket (or TLS stream).
    inner: IO,
    /// Where activity is recorded.
    info: Arc<ConnInfo>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.info.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.info.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.info.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
