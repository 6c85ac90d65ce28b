//! Local development certificates (rcgen): a throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1.
//! Never for production; the keys are git-ignored.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and a leaf it signed, in PEM.
#[derive(Debug)]
pub struct DevCerts {
    /// CA certificate.
    pub ca_cert_pem: String,
    /// CA private key (to sign more leaves, e.g. client certificates).
    pub ca_key_pem: String,
    /// Leaf certificate.
    pub cert_pem: String,
    /// Leaf private key.
    pub key_pem: String,
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertsError {
    /// rcgen failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Generate a CA named `ca_name` and a leaf for `names` (DNS names or IP addresses), usable as server and client.
pub fn generate(ca_name: &str, names: &[&str]) -> Result<DevCerts, DevCertsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    Ok(DevCerts {
        ca_cert_pem: ca.pem(),
        ca_key_pem,
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Write `ca.crt`, `ca.key`, `server.crt` and `server.key` for localhost into `dir`; returns the paths written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, DevCertsError> {
    let certs = generate("credgate dev CA", &["localhost", "127.0.0.1", "::1"])?;
    std::fs::create_dir_all(dir).map_err(|source| DevCertsError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let files = [
        ("ca.crt", &certs.ca_cert_pem),
        ("ca.key", &certs.ca_key_pem),
        ("server.crt", &certs.cert_pem),
        ("server.key", &certs.key_pem),
    ];
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|source| DevCertsError::Write {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}
