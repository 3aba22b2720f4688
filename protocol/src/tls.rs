//! TLS for gRPC channels and listeners (rustls on *ring*): PEM loading, the crypto
//! provider, and the client side that wraps a dialled stream (docs/security.md).
//!
//! tonic's own TLS is left off: it cannot reload certificates and applies on the client only
//! to its built-in connector, while our channels go through [`crate::transport`]'s dialer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::transport::BoxStream;

/// The only protocol spoken over TLS: gRPC needs HTTP/2, negotiated by ALPN.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable of the kind needed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the certificates or key (e.g. the key does not match the certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// Why.
        source: rustls::Error,
    },
    /// Another setting is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// The crypto provider every TLS config here is built with (passed explicitly, so no
/// process-wide default is installed or needed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring's provider lacks post-quantum key exchange (hence the deprecation); aws-lc,
    // which has it, is a long C build this project does not take on (docs/security.md).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (a chain: leaf first); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("no usable private key: {e}"),
    })
}

/// The certificates of a CA file as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_, refused) = roots.add_parsable_certificates(load_certs(path)?);
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("none of its {refused} certificates is a usable CA"),
        });
    }
    Ok(roots)
}

/// Where a client's TLS settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that signed the servers' certificates (PEM).
    pub ca: PathBuf,
    /// A client certificate chain (PEM), for servers that require one.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The name the servers' certificates must carry [default: each address's host].
    pub server_name: Option<String>,
}

/// A client's TLS settings, reloadable from their files.
#[derive(Debug)]
pub struct ClientTls {
    files: ClientTlsFiles,
    config: RwLock<Arc<ClientConfig>>,
}

impl ClientTls {
    /// Loads the files.
    pub fn load(files: ClientTlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = client_config(&files)?;
        Ok(Arc::new(Self {
            files,
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again; connections made from now on use them. On an error the
    /// settings in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(client_config(&self.files)?);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The files the settings come from.
    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    /// Runs the TLS handshake over `stream` to `host` (an address's host part, or the
    /// configured server name) and checks that HTTP/2 was agreed.
    pub async fn wrap(&self, stream: BoxStream, host: &str) -> std::io::Result<BoxStream> {
        let name = self.files.server_name.as_deref().unwrap_or(host);
        // An IPv6 address comes bracketed from a URI.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad TLS server name {name:?}: {e}"),
            )
        })?;
        let config = Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()));
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the server did not agree to HTTP/2 over TLS (ALPN h2)",
            ));
        }
        Ok(Box::new(tls))
    }
}

fn client_config(files: &ClientTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(&files.ca)?;
    let rustls_error = |source| TlsError::Rustls {
        context: "cannot build the TLS client config".into(),
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                context: format!(
                    "client certificate {} with key {}",
                    cert.display(),
                    key.display()
                ),
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Invalid(
                "a client certificate needs its key and a key its certificate".into(),
            ));
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
