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

use super::error::ConnectError;
use super::stream::Stream;

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

/// libpq's `channel_binding`: whether SCRAM authentication is bound to the TLS channel
/// (SCRAM-SHA-256-PLUS with `tls-server-end-point`), so that a man in the middle who
/// terminates TLS himself cannot relay the exchange to the real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    Disable,
    /// Bind when the connection is TLS and the server offers it.
    #[default]
    Prefer,
    /// Refuse any server that does not authenticate with SCRAM-SHA-256-PLUS over TLS.
    Require,
}

impl ChannelBindingMode {
    pub fn parse(value: &str) -> Option<ChannelBindingMode> {
        Some(match value {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
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

    /// Whether the server's certificate chain is checked against a trusted CA: only then is a
    /// TLS peer known to be the server (and not whoever answers at its address).
    pub fn verifies_peer(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
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

/// The `tls-server-end-point` channel binding data (RFC 5929) of a TLS connection: the hash of
/// the server's certificate, with the hash function of the certificate's signature (SHA-256
/// for MD5 and SHA-1), as Postgres computes it. `None` off TLS, or for a signature algorithm
/// that names no such hash (Ed25519, RSA-PSS).
pub(crate) fn server_end_point(stream: &Stream) -> Option<Vec<u8>> {
    use sha2::Digest;
    let Stream::Tls(tls) = stream else {
        return None;
    };
    let certificate = tls.get_ref().1.peer_certificates()?.first()?;
    let der = certificate.as_ref();
    Some(match signature_hash(der)? {
        Hash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a certificate's `signatureAlgorithm`, read from its DER:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, … }, … }`.
/// Three headers and one OID, each bounds-checked: an X.509 parser crate would bring a dozen
/// dependencies for this one field.
fn signature_hash(der: &[u8]) -> Option<Hash> {
    const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let (certificate, _) = der_element(der, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    if let Some(&[last]) = oid.strip_prefix(&ECDSA_SHA2[..]) {
        return match last {
            1 => Some(Hash::Sha224),
            2 => Some(Hash::Sha256),
            3 => Some(Hash::Sha384),
            4 => Some(Hash::Sha512),
            _ => None,
        };
    }
    if let Some(&[last]) = oid.strip_prefix(&RSA[..]) {
        // md5, sha1, sha256, sha384, sha512, sha224 WithRSAEncryption.
        return match last {
            4 | 5 | 11 => Some(Hash::Sha256),
            12 => Some(Hash::Sha384),
            13 => Some(Hash::Sha512),
            14 => Some(Hash::Sha224),
            _ => None,
        };
    }
    None
}

/// The contents of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    Some(rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_point_hash_follows_the_certificate_signature() {
        for (algorithm, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Hash::Sha256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Hash::Sha384),
            (&rcgen::PKCS_ED25519, Hash::Sha256),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let der = params.self_signed(&key).unwrap().der().to_vec();
            let expected = (algorithm != &rcgen::PKCS_ED25519).then_some(hash);
            assert_eq!(signature_hash(&der), expected, "{algorithm:?}");
        }
    }

    #[test]
    fn truncated_or_foreign_input_has_no_end_point_hash() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        for len in 0..der.len() {
            // Every prefix: never a panic; a cut inside the algorithm is no answer.
            let _ = signature_hash(&der[..len]);
        }
        assert_eq!(signature_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(signature_hash(b"not a certificate"), None);
    }
}
