//! TLS for the listeners that take an API token as a password
//! (`serve.postgres_listen`, `serve.flight_sql_listen`): the certificate
//! chain and key of `serve.tls_cert` and `serve.tls_key` (PEM), read and
//! checked once at start. With them the token travels encrypted, so those
//! listeners may listen beyond loopback (`config::password_listener`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS identity, for pgwire (rustls) and tonic.
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Reads `cert` (a PEM chain, the server's certificate first) and `key`
    /// (a PEM private key) and checks they make an identity.
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, or a key
    /// that is not the certificate's; the message names the key in force.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{name} = \"{}\": {e}", path.display()))
        };
        let cert_pem = read("serve.tls_cert", cert)?;
        let key_pem = read("serve.tls_key", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("serve.tls_cert = \"{}\": {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "serve.tls_cert = \"{}\" holds no certificate (PEM, `-----BEGIN CERTIFICATE-----`)",
                cert.display()
            ));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "serve.tls_key = \"{}\": no private key in it: {e}",
                key.display()
            )
        })?;
        // ring, as tonic's `tls-ring` uses: rustls 0.23.48 deprecates it
        // for lacking post-quantum key exchange, which aws-lc-rs has at the
        // cost of a CMake build of its C library on every fresh machine.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                format!(
                    "serve.tls_cert = \"{}\" and serve.tls_key = \"{}\" are not a certificate and its key: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(Tls {
            cert_pem,
            key_pem,
            config: Arc::new(config),
        })
    }

    /// For the PostgreSQL listener (its clients' `SSLRequest`).
    pub fn acceptor(&self) -> pgwire::tokio::TlsAcceptor {
        pgwire::tokio::TlsAcceptor::from(self.config.clone())
    }

    /// For the Flight SQL listener (gRPC over TLS: `grpc+tls://`).
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}
