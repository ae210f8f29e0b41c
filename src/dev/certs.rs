//! Throwaway certificates: a CA and server certificates for `sluice dev --tls` and the TLS
//! tests, and the files `sluice dev --tls` writes (removed when dropped).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The files of `sluice dev --tls`, removed when dropped.
pub(super) struct DevCertificates {
    pub(super) dir: PathBuf,
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

impl DevCertificates {
    pub(super) fn write() -> Result<DevCertificates, String> {
        let dir = std::env::temp_dir().join(format!("sluice-dev-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ca = DevCa::new("sluice dev CA")?;
        let issued = ca.issue(&["localhost", "127.0.0.1", "::1"], 1)?;
        let files = DevCertificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        fs::write(&files.ca, &ca.cert_pem).map_err(|e| e.to_string())?;
        fs::write(&files.cert, &issued.cert_pem).map_err(|e| e.to_string())?;
        fs::write(&files.key, &issued.key_pem).map_err(|e| e.to_string())?;
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(files)
    }
}

impl Drop for DevCertificates {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway certificate authority, for `sluice dev --tls` and the TLS tests.
pub struct DevCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate (PEM): what clients must trust.
    pub cert_pem: String,
}

/// A certificate issued by a [`DevCa`], with its private key (PEM).
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn new(name: &str) -> Result<DevCa, String> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert_pem = params.self_signed(&key).map_err(|e| e.to_string())?.pem();
        Ok(DevCa {
            params,
            key,
            cert_pem,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses) with `serial`.
    pub fn issue(&self, names: &[&str], serial: u64) -> Result<DevCert, String> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
