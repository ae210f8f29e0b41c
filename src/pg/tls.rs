//! TLS from the gateway to Postgres, with libpq's `sslmode` semantics, on rustls.
//!
//! | sslmode | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `prefer` | if the server offers it | no | no |
//! | `require` | yes | only with `sslrootcert` (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! Failures are reported in words that say what is wrong and what to change, because
//! "certificate does not match host name" and "server does not support SSL" are among the
//! errors people search for most.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::Stream;
use super::error::ConnectError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How to secure connections to one upstream: the mode and a ready rustls configuration.
#[derive(Clone)]
pub struct TlsConnector {
    mode: SslMode,
    config: Option<Arc<ClientConfig>>,
    root_cert: Option<std::path::PathBuf>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("mode", &self.mode)
            .finish()
    }
}

impl TlsConnector {
    pub fn disabled() -> TlsConnector {
        TlsConnector {
            mode: SslMode::Disable,
            config: None,
            root_cert: None,
        }
    }

    /// Builds the rustls configuration for `mode`; `root_cert` is `sslrootcert` (a PEM file of
    /// CA certificates), otherwise the Mozilla root set is trusted.
    pub fn new(mode: SslMode, root_cert: Option<&Path>) -> Result<TlsConnector, String> {
        if mode == SslMode::Disable {
            return Ok(TlsConnector::disabled());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert {} holds no certificate",
                        path.display()
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        // libpq: `require` with a root certificate file behaves like `verify-ca`.
        let check = match mode {
            SslMode::Prefer => Check::Nothing,
            SslMode::Require if root_cert.is_none() => Check::Nothing,
            SslMode::Require | SslMode::VerifyCa => Check::Chain,
            SslMode::VerifyFull | SslMode::Disable => Check::ChainAndName,
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let verifier = Arc::new(Verifier {
            check,
            webpki,
            provider: provider.clone(),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(TlsConnector {
            mode,
            config: Some(Arc::new(config)),
            root_cert: root_cert.map(Path::to_owned),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The mode and the CA file: two connectors with the same description verify alike.
    pub fn describe(&self) -> String {
        match &self.root_cert {
            Some(path) => format!(
                "sslmode={} sslrootcert={}",
                self.mode.as_str(),
                path.display()
            ),
            None => format!("sslmode={}", self.mode.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

#[derive(Debug)]
struct Verifier {
    check: Check,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check {
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::ChainAndName => {
                self.webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Check::Chain => match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    // Handshake signatures are always verified: even without certificate checks, the peer
    // must hold the key of the certificate it presented.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends Postgres's SSLRequest and, if the server agrees, runs the TLS handshake.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    tls: &TlsConnector,
) -> Result<Stream, ConnectError> {
    let Some(config) = tls.config.clone() else {
        return Ok(Stream::Tcp(tcp));
    };
    let mut request = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let answer = tcp.read_u8().await?;
    if answer != b'S' {
        if tls.mode == SslMode::Prefer {
            return Ok(Stream::Tcp(tcp));
        }
        return Err(ConnectError::Tls(format!(
            "the server at {host} does not support SSL, but sslmode={} requires it: enable ssl on \
             the server, or set sslmode=prefer (or disable) in the upstream URL",
            tls.mode.as_str()
        )));
    }
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError::Tls(format!("\"{host}\" is not a valid TLS server name")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(server_name, tcp).await {
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
        Err(e) => Err(ConnectError::Tls(explain(&e, host, tls.mode))),
    }
}

fn explain(error: &std::io::Error, host: &str, mode: SslMode) -> String {
    let inner = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "server certificate does not match host name \"{host}\": connect by a name the \
             certificate lists, or use sslmode=verify-ca to check the CA only"
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "server certificate for \"{host}\" is not signed by a trusted CA (sslmode={}): set \
             sslrootcert to the file of the CA that signed the server's certificate",
            mode.as_str()
        ),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => {
            format!("server certificate for \"{host}\" has expired")
        }
        Some(other) => format!("TLS handshake with {host} failed: {other}"),
        None => format!("TLS handshake with {host} failed: {error}"),
    }
}
