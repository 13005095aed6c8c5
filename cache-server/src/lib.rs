//! layercache cache server: stores `docker save` tarballs as deduplicated, content-addressed layer
//! blobs and serves them back as docker-loadable tarballs.
//!
//! - [`settings`]: data dir and limits.
//! - [`routes`]: the router and the state handlers share.
//! - [`handlers`]: one module per resource (images, blobs, lookup, stats).
//! - [`ingest`]: tarball and blob uploads, commits from uploaded blobs.
//! - [`registry`]: the OCI distribution API under `/v2/` over the same store.
//! - [`tarball`]: streaming responses assembled from inline bytes and blob files.
//! - [`store`]: blobs ([`store::blobs`]: files, or an S3-compatible bucket) and the SQLite index
//!   ([`store::sqlite`]).
//! - [`auth`]: bearer tokens, roles and namespace patterns; the middleware on every route.
//! - [`serving`]: the accept loop: connection cap, timeouts, graceful shutdown with a deadline.
//! - [`transfers`]: bounded uploads and downloads (`503` + `Retry-After` beyond the limits).
//! - [`receive`]: upload bodies read on the runtime, written in short blocking steps.
//! - [`tls`]: optional HTTPS (rustls) for [`serve_tls`].
//! - [`error`]: [`ServerError`], mapped once to status + JSON body.
//! - [`dashboard`]: the HTML pages at `/` and `/entries/{ns}/{key}`.
//! - [`metrics`]: `GET /metrics` (Prometheus text) and the request-counting middleware.
//! - [`lru`]: quota and time-to-live accounting (which entries to evict), no I/O.
//! - [`gc`]: the collector (eviction, blob deletion, orphans) and `verify`.
//! - [`migrate`]: `layercache-server migrate`, an embedded cache into PostgreSQL and a bucket.

pub mod auth;
pub mod auth_gate;
pub mod bulk;
pub mod dashboard;
pub mod error;
pub mod gc;
pub mod handlers;
pub mod ingest;
pub mod lru;
pub mod metrics;
pub mod migrate;
pub mod receive;
pub mod registry;
pub mod request_id;
pub mod routes;
pub mod serving;
pub mod settings;
pub mod store;
pub mod tarball;
pub mod tls;
pub mod transfers;

use std::future::Future;
use std::sync::Arc;

pub use error::ServerError;
pub use settings::Settings;

use routes::{AppState, router};
use store::Store;

/// Serves the API on `listener` until `shutdown` completes, then stops accepting connections and
/// lets in-flight requests (including streaming downloads) finish for up to
/// [`Settings::shutdown_timeout`]; see [`serving`] for the limits on connections.
///
/// Fails when the data dir cannot be opened (permissions, a corrupt database) or the listener
/// breaks.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_on(listener, serving::Transport::Plain, settings, shutdown).await
}

/// Like [`serve`], over HTTPS with `tls` (from [`tls::load_config`]).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    settings: Settings,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let transport = serving::Transport::Tls(tokio_rustls::TlsAcceptor::from(tls));
    serve_on(listener, transport, settings, shutdown).await
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    transport: serving::Transport,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if settings.redirect_blobs && !settings.blob_store.is_remote() {
        return Err(ServerError::bad_request(
            "--redirect-blobs needs blobs in an object store (--blob-store s3://BUCKET[/PREFIX]): \
             local blob files have no URL to redirect to",
        ));
    }
    let data_dir = settings.data_dir.clone();
    let blob_store = settings.blob_store.clone();
    let policy = gc::policy_of(&settings);
    let grace_secs = settings.upload_grace.as_secs();
    let database = settings.database.clone();
    // Before the first bulk task (the start-up collection below may read blobs).
    bulk::configure(
        settings
            .bulk_threads
            .unwrap_or_else(|| bulk::default_threads(settings.blob_store.is_remote())),
        settings.bulk_priority,
    );
    let lease_ttl = settings.lease_ttl;
    let (store, live_tokens) = tokio::task::spawn_blocking(move || {
        let store = Store::open_with_index(&data_dir, &blob_store, database.as_deref())?;
        store.pins.set_lease_ttl(lease_ttl);
        store.quota.set_lease_ttl(lease_ttl);
        // Alone on its index nothing is in flight yet: files a crash left without a row can go
        // at once. On a shared index (replicas, which share a bucket too), other replicas'
        // uploads are in flight: their blobs are stored before their rows are, so orphans get the
        // upload grace period. (A bucket with a SQLite index belongs to that one server.)
        let shared = database.is_some();
        let sweep = gc::Sweep {
            grace_secs,
            orphans: Some(if shared { grace_secs } else { 0 }),
        };
        gc::collect(&store, &policy, sweep, store::sqlite::now())?;
        // Here, not on the runtime: PostgreSQL's client blocks.
        let live_tokens = store.db.live_token_count()?;
        Ok::<_, ServerError>((store, live_tokens))
    })
    .await??;
    tracing::info!(index = store.db.backend(), "index open");
    store.quota.set_max_size(settings.max_size);
    let gate = auth_gate::AuthGate::at_start(settings.open, live_tokens);
    let state = AppState {
        auth: Arc::new(gate),
        store: Arc::new(store),
        settings: Arc::new(settings),
        metrics: Default::default(),
    };
    let collector = tokio::spawn(gc::run_collector(
        Arc::clone(&state.store),
        Arc::clone(&state.settings),
    ));
    let uses = tokio::spawn(Arc::clone(&state.store).run_use_flusher());
    let heartbeat = tokio::spawn(Arc::clone(&state.store).run_heartbeat());
    let store = Arc::clone(&state.store);
    let expiry = tokio::spawn(registry::uploads::run_expiry(
        Arc::clone(&state.store),
        state.settings.upload_timeout,
    ));
    let addr = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        data_dir = %state.settings.data_dir.display(),
        blobs = %state.store.blobs.describe(),
        "serving"
    );
    let settings = Arc::clone(&state.settings);
    let result = serving::run(listener, transport, router(state), &settings, shutdown)
        .await
        .map_err(|e| ServerError::io("serving on", format!("{addr:?}"), e));
    collector.abort();
    heartbeat.abort();
    expiry.abort();
    uses.abort();
    // The hits and misses of the last requests.
    store.blocking(|s| Ok(s.db.flush_uses()?)).await?;
    result
}
