//! The cluster CA (kept in the data directory as `ca/ca.pem` and `ca/ca-key.pem`, mode 0600,
//! created on first use) and the checks on hostnames and user certificates.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};

use super::CertError;

/// Why the cluster CA could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Cannot read or write the cluster CA in {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("Cannot create the cluster CA")]
    Generate(#[source] rcgen::Error),
}

/// The root certificate and key of the cluster CA, PEM.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    pub certificate: String,
    pub private_key: String,
}

/// Loads the CA from `dir`, creating a key and a self-signed root there if it has none.
pub fn load_or_create_ca(dir: &Path) -> Result<ClusterCa, CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| CaError::Io(path, e)
    };
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(ClusterCa {
            certificate: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            private_key: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(
        dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .map_err(io(dir))?;
    let key = KeyPair::generate().map_err(CaError::Generate)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::OrganizationName, "Aloft");
    p.distinguished_name
        .push(DnType::CommonName, "Aloft cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = p.self_signed(&key).map_err(CaError::Generate)?;
    let ca = ClusterCa {
        certificate: cert.pem(),
        private_key: key.serialize_pem(),
    };
    // Key first: a crash between the writes leaves no root without its key.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io(&key_path))?;
    f.write_all(ca.private_key.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&key_path))?;
    // The certificate appears whole or not at all: a reader never sees half of it.
    let tmp = dir.join("ca.pem.tmp");
    std::fs::write(&tmp, &ca.certificate).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &cert_path).map_err(io(&cert_path))?;
    Ok(ca)
}

/// A hostname as certificates are keyed: lowercase, no trailing dot; `*.` only as a prefix.
pub fn normalize_hostname(raw: &str) -> Result<String, CertError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| CertError::Invalid(format!("Hostname {raw:?} {why}"));
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.is_empty() || host.len() > 253 {
        return Err(bad("is empty or longer than 253 characters"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad(
                "is not a DNS name (letters, digits and '-' in dot-separated labels, optionally starting with '*.')",
            ));
        }
    }
    Ok(host)
}

/// Checks a user certificate: the PEM parses, the leaf is valid for `hostname`, and the key
/// is one the edge can use and belongs to the leaf. Returns the leaf's sha256 fingerprint.
pub(super) fn validate(
    hostname: &str,
    certificate: &str,
    private_key: &str,
) -> Result<String, CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                CertError::Invalid(format!("The certificate for {hostname} is not valid PEM"))
            })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::Invalid(format!(
            "The certificate for {hostname} holds no CERTIFICATE block"
        )));
    };
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes()).map_err(|_| {
        CertError::Invalid(format!("The private key for {hostname} is not valid PEM"))
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        CertError::Invalid(format!(
            "The private key for {hostname} is not a supported type (RSA, ECDSA P-256/P-384 or Ed25519)"
        ))
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| {
        CertError::Invalid(format!(
            "The private key for {hostname} does not belong to its certificate"
        ))
    })?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        CertError::Invalid(format!(
            "The certificate for {hostname} cannot be parsed: {e}"
        ))
    })?;
    // A wildcard certificate is checked against one name it covers.
    let probe = match hostname.strip_prefix("*.") {
        Some(parent) => format!("aloft-probe.{parent}"),
        None => hostname.to_owned(),
    };
    let name = ServerName::try_from(probe.as_str())
        .map_err(|_| CertError::Invalid(format!("Hostname {hostname:?} is not a DNS name")))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| CertError::Invalid(format!("The certificate is not valid for {hostname}")))?;
    Ok(hex::encode(Sha256::digest(leaf.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_normalized_and_checked() {
        assert_eq!(
            normalize_hostname("Shop.Example.COM.").unwrap(),
            "shop.example.com"
        );
        assert_eq!(
            normalize_hostname("*.example.com").unwrap(),
            "*.example.com"
        );
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.b",
            "a b",
            "a.*.b",
            "x.example.com/path",
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ca_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_ca(&dir.path().join("ca")).unwrap();
        let b = load_or_create_ca(&dir.path().join("ca")).unwrap();
        assert_eq!(a.certificate, b.certificate);
        assert!(a.private_key.contains("PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn certificates_are_checked_against_their_name_and_key() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["shop.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (cert.pem(), key.serialize_pem());
        assert_eq!(validate("shop.example.com", &c, &k).unwrap().len(), 64);
        let err = validate("other.example.com", &c, &k).unwrap_err();
        assert!(err.to_string().contains("not valid for"), "{err}");
        let other = KeyPair::generate().unwrap().serialize_pem();
        let err = validate("shop.example.com", &c, &other).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(validate("shop.example.com", "junk", &k).is_err());
        assert!(validate("shop.example.com", &c, "junk").is_err());
    }
}
