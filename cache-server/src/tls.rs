//! Optional HTTPS: a PEM certificate chain and key loaded into a rustls config ([`load_config`]),
//! and [`TlsListener`], an axum listener doing TLS handshakes on accepted TCP connections.
//!
//! Handshakes run in their own tasks (bounded by [`HANDSHAKE_TIMEOUT`]), so a client that connects
//! and then stalls holds up nobody else's accept; finished streams reach axum through a channel.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::ServerError;

/// How long a client may take to finish its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections handshaken but not yet taken by axum; small, since axum accepts promptly.
const READY_QUEUE: usize = 64;

fn tls_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls {
        message: format!(
            "{what} `{}` failed: {e}; give PEM files (--tls-cert: the certificate chain, \
             --tls-key: its private key)",
            path.display()
        ),
    }
}

/// A rustls server config from PEM files: `cert` (leaf first, then intermediates) and `key`
/// (PKCS#8, PKCS#1 or SEC1). Offers HTTP/1.1 only, as the server speaks nothing else.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServerError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error("reading the TLS certificate", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("reading the TLS certificate", cert, e))?;
    if certs.is_empty() {
        return Err(tls_error(
            "reading the TLS certificate",
            cert,
            "no CERTIFICATE block",
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_error("reading the TLS private key", key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("setting up TLS for", cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_error("pairing the certificate with the key", key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands axum only those whose TLS handshake succeeded.
pub struct TlsListener {
    /// Handshaken connections from the accept task.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// The bound address, for logs.
    local: SocketAddr,
    /// The accept task; aborted when the listener is dropped (server stopped).
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Usually EMFILE: wait for descriptors to free up instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when aborted, which happens on drop: never while polled.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
