//! Optional HTTPS: a PEM certificate chain and key loaded into a rustls config ([`load_config`]).
//!
//! Handshakes run in each connection's own task ([`crate::serving`]), bounded by
//! [`HANDSHAKE_TIMEOUT`], so a client that connects and then stalls holds up nobody else's accept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// How long a client may take to finish its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
