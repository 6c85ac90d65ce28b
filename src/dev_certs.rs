//! Local development certificates (rcgen): a throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1.
//! Never for production; the keys are git-ignored and written readable by their owner only. The CA is name-constrained
//! to the names it was made for, so that trusting it (as a browser or a client must, in development) trusts nothing
//! else even if its key leaks.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CidrSubnet, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
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

/// Generate a CA named `ca_name`, constrained to `names`, and a leaf for `names` (DNS names or IP addresses), usable
/// as server and client.
pub fn generate(ca_name: &str, names: &[&str]) -> Result<DevCerts, DevCertsError> {
    let (ca, ca_key_pem) = ca(ca_name, names)?;
    let (cert_pem, key_pem) = leaf(&ca, names)?;
    Ok(DevCerts {
        ca_cert_pem: ca.pem(),
        ca_key_pem,
        cert_pem,
        key_pem,
    })
}

/// A CA that may only certify `names`: DNS names and their subdomains, IP addresses exactly.
fn ca(
    ca_name: &str,
    names: &[&str],
) -> Result<(CertifiedIssuer<'static, KeyPair>, String), DevCertsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.name_constraints = Some(NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => GeneralSubtree::DnsName((*n).to_owned()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    Ok((CertifiedIssuer::self_signed(ca_params, ca_key)?, ca_key_pem))
}

/// A leaf for `names` signed by `ca`: certificate and key, in PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
) -> Result<(String, String), DevCertsError> {
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
    let leaf = leaf_params.signed_by(&leaf_key, ca)?;
    Ok((leaf.pem(), leaf_key.serialize_pem()))
}

/// Write `ca.crt`, `ca.key`, `server.crt` and `server.key` for localhost into `dir`; returns the paths written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, DevCertsError> {
    let certs = generate("credgate dev CA", &["localhost", "127.0.0.1", "::1"])?;
    std::fs::create_dir_all(dir).map_err(|source| DevCertsError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    // Keys readable by their owner only; certificates by anyone.
    let files = [
        ("ca.crt", &certs.ca_cert_pem, 0o644),
        ("ca.key", &certs.ca_key_pem, 0o600),
        ("server.crt", &certs.cert_pem, 0o644),
        ("server.key", &certs.key_pem, 0o600),
    ];
    let mut written = Vec::new();
    for (name, content, mode) in files {
        let path = dir.join(name);
        write_file(&path, content, mode).map_err(|source| DevCertsError::Write {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Write `content` to `path` with `mode`, also when the file exists already (a key rewritten stays private).
fn write_file(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    /// Whether a leaf for `name`, signed by a dev CA made for `names`, verifies as `name`.
    fn verifies(names: &[&str], name: &'static str) -> bool {
        let (ca, _) = ca("test CA", names).expect("ca");
        let (cert_pem, _) = leaf(&ca, &[name]).expect("leaf");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
        let server = ServerName::try_from(name).expect("name");
        verifier
            .verify_server_cert(&cert, &[], &server, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn the_dev_ca_certifies_only_the_names_it_was_made_for() {
        let names = ["localhost", "127.0.0.1", "::1"];
        assert!(verifies(&names, "localhost"));
        assert!(verifies(&names, "127.0.0.1"));
        assert!(
            !verifies(&names, "bank.example"),
            "a leaked dev CA key could certify any host"
        );
        assert!(!verifies(&names, "10.0.0.1"));
    }

    #[test]
    fn keys_are_written_private_and_certificates_public() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("credgate-dev-certs-{}", std::process::id()));
        let written = write(&dir).expect("write");
        for path in &written {
            let mode = std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777;
            let want = if path.extension().is_some_and(|e| e == "key") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode, want, "{}", path.display());
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
