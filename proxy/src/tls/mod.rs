//! TLS on both legs with rustls (ring provider): the client-facing acceptor built from
//! `client_tls_*`, the server-facing connector built from `server_tls_*`, the stream type both
//! legs use, and the tls-server-end-point channel binding for SCRAM-SHA-256-PLUS.
//!
//! Certificates and keys are read when the configuration loads (at start, `pgvane check` and
//! every RELOAD), so a RELOAD rotates them: new connections get the new ones, established
//! sessions keep the TLS session they have.

mod der;
mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use der::{subject_common_name, tls_server_end_point};
pub use stream::{Progress, Stream};

/// The ALPN protocol PostgreSQL 17 uses, mandatory with direct TLS (`sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The first byte of a TLS handshake record: a client starting TLS directly.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Why TLS could not be set up or used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate, key or CA file is unreadable or holds no usable PEM item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificates or keys (e.g. the key does not match the certificate).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from `client_tls_ca_file`.
    #[error("client_tls_ca_file: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// A file the mode needs is not configured.
    #[error("{0} are required")]
    Missing(&'static str),
    /// The server's host name is not a valid DNS name or IP address for TLS.
    #[error("invalid server name for TLS: {0}")]
    ServerName(String),
}

/// `client_tls_sslmode`: TLS between clients and pgvane (PgBouncer's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// No TLS: SSLRequest is answered `N`.
    #[default]
    Disable,
    /// TLS when the client asks for it; a client certificate is not checked.
    Allow,
    /// The same as `allow` (the client decides).
    Prefer,
    /// Clients must use TLS; plain-text logins are refused.
    Require,
    /// Clients must use TLS with a certificate signed by `client_tls_ca_file`.
    VerifyCa,
    /// The same as `verify-ca` (PgBouncer's name; `auth_type = "cert"` also matches the
    /// certificate's CommonName to the user).
    VerifyFull,
}

impl ClientTlsMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Prefer => "prefer",
            ClientTlsMode::Require => "require",
            ClientTlsMode::VerifyCa => "verify-ca",
            ClientTlsMode::VerifyFull => "verify-full",
        }
    }

    /// True when a plain-text login is refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, ClientTlsMode::Require | ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull)
    }

    /// True when clients must present a certificate signed by `client_tls_ca_file`.
    pub fn verifies_client(self) -> bool {
        matches!(self, ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull)
    }
}

/// `server_tls_sslmode`: TLS between pgvane and the servers (libpq's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without checking its certificate; plain otherwise.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate chain signed by `server_tls_ca_file`.
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host pgvane connects to.
    VerifyFull,
}

/// The file names of one side's TLS configuration, resolved against the config file.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM).
    pub ca: Option<PathBuf>,
}

/// The client-facing side, ready to accept handshakes.
#[derive(Clone)]
pub struct ClientTls {
    /// `client_tls_sslmode`.
    pub mode: ClientTlsMode,
    /// `None` when the mode is `disable`.
    acceptor: Option<TlsAcceptor>,
    /// tls-server-end-point of pgvane's certificate; `None` when its signature algorithm has
    /// no defined hash (then SCRAM-SHA-256-PLUS is not offered).
    channel_binding: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the certificate, key and (for `verify-*`) CA files for `mode`.
    pub fn load(mode: ClientTlsMode, files: &TlsFiles) -> Result<ClientTls, TlsError> {
        if mode == ClientTlsMode::Disable {
            return Ok(ClientTls::disabled());
        }
        let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
            return Err(TlsError::Missing("client_tls_cert_file and client_tls_key_file"));
        };
        let certs = read_certs(cert)?;
        let key = read_key(key)?;
        let channel_binding = certs.first().and_then(|c| tls_server_end_point(c)).map(Arc::from);
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match (&files.ca, mode.verifies_client()) {
            (Some(ca), true) => {
                let roots = Arc::new(read_roots(ca)?);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientTls { mode, acceptor: Some(TlsAcceptor::from(Arc::new(config))), channel_binding })
    }

    /// A configuration without TLS.
    pub fn disabled() -> ClientTls {
        ClientTls { mode: ClientTlsMode::Disable, acceptor: None, channel_binding: None }
    }

    /// The acceptor, unless TLS is disabled.
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    /// pgvane's certificate's tls-server-end-point data.
    pub fn channel_binding(&self) -> Option<&Arc<[u8]>> {
        self.channel_binding.as_ref()
    }
}

/// The server-facing side.
#[derive(Clone)]
pub struct ServerTls {
    /// `server_tls_sslmode`.
    pub mode: ServerTlsMode,
    /// `None` when the mode is `disable`.
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the CA and client-certificate files for `mode`.
    pub fn load(mode: ServerTlsMode, files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match (mode, &files.ca) {
            (ServerTlsMode::Disable, _) => return Ok(ServerTls { mode, connector: None }),
            (ServerTlsMode::VerifyFull, Some(ca)) => builder.with_root_certificates(read_roots(ca)?),
            (ServerTlsMode::VerifyCa, Some(ca)) => {
                let roots = Arc::new(read_roots(ca)?);
                builder.dangerous().with_custom_certificate_verifier(verify::ChainOnly::new(roots, provider)?)
            }
            // prefer and require (and verify-* without a CA file, which validation refuses)
            _ => builder.dangerous().with_custom_certificate_verifier(Arc::new(verify::Unverified::new(provider))),
        };
        let mut config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls { mode, connector: Some(TlsConnector::from(Arc::new(config))) })
    }

    /// A configuration without TLS.
    pub fn disabled() -> ServerTls {
        ServerTls { mode: ServerTlsMode::Disable, connector: None }
    }

    /// True when pgvane asks the server for TLS.
    pub fn enabled(&self) -> bool {
        self.connector.is_some()
    }

    /// Runs the TLS handshake with the server `host` on `tcp` (after its `S`).
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> Result<Stream, TlsConnectError> {
        let Some(connector) = &self.connector else {
            return Ok(Stream::Plain(tcp));
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))?;
        let tls = connector.connect(name, tcp).await.map_err(TlsConnectError::Handshake)?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }
}

/// Why a TLS handshake with a server failed.
#[derive(Debug, Error)]
pub enum TlsConnectError {
    /// Not even started.
    #[error(transparent)]
    Setup(#[from] TlsError),
    /// The handshake failed (e.g. the certificate did not verify).
    #[error("TLS handshake with the server failed: {0}")]
    Handshake(#[source] std::io::Error),
}

/// The tls-server-end-point data of the certificate the peer of `stream` presented (the
/// server, on pgvane's connections to servers).
pub fn peer_channel_binding(stream: &Stream) -> Option<Vec<u8>> {
    let Stream::Tls(tls) = stream else { return None };
    let (_, common) = tls.get_ref();
    common.peer_certificates()?.first().and_then(|c| tls_server_end_point(c))
}

/// The CommonName of the certificate the client presented, if any.
pub fn peer_common_name(stream: &Stream) -> Option<String> {
    let Stream::Tls(tls) = stream else { return None };
    let (_, common) = tls.get_ref();
    common.peer_certificates()?.first().and_then(|c| subject_common_name(c))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: message.to_string() }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}
