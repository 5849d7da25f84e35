//! TLS termination: the cluster's own certificate authority, which issues a certificate for each
//! app hostname on first use, and user certificates chosen by SNI. TLS 1.2 and 1.3 only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::Routing;

/// Errors of the certificate authority and of certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Cannot read or write the certificate authority in {path}")]
    CaIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot create or load the certificate authority key in {path}")]
    CaKey { path: PathBuf, source: rcgen::Error },
    #[error("Cannot issue a certificate for {host}")]
    Issue { host: String, source: rcgen::Error },
    #[error("The certificate for {host} is not valid PEM")]
    CertPem { host: String },
    #[error("The private key for {host} is not valid PEM or not a supported key type")]
    KeyPem { host: String },
    #[error("Cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The ACME module's errors as the edge reports them (their host, as a certificate's).
impl From<crate::acme::AcmeError> for TlsError {
    fn from(e: crate::acme::AcmeError) -> TlsError {
        match e {
            crate::acme::AcmeError::Cert { host, source } => TlsError::Issue { host, source },
            crate::acme::AcmeError::Key { host } => TlsError::KeyPem { host },
        }
    }
}

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// The cluster's certificate authority. Its key and certificate live in a directory so every
/// edge of the cluster (and `aloft certs root`) agrees on the same root.
pub struct Ca {
    key: KeyPair,
    root_pem: String,
    root_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
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
    p
}

impl Ca {
    /// Loads the CA from `dir`, creating a new key and self-signed root there if it has none.
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<Ca, TlsError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::CaIo { path, source }
        };
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let (key, root_pem) = if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::CaKey {
                path: key_path.clone(),
                source,
            })?;
            (
                key,
                std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            )
        } else {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate().map_err(|source| TlsError::CaKey {
                path: key_path.clone(),
                source,
            })?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|source| TlsError::CaKey {
                    path: key_path.clone(),
                    source,
                })?;
            write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            (key, cert.pem())
        };
        let root_der =
            CertificateDer::from_pem_slice(root_pem.as_bytes()).map_err(|_| TlsError::CertPem {
                host: cert_path.display().to_string(),
            })?;
        Ok(Ca {
            key,
            root_pem,
            root_der,
        })
    }

    /// A CA from its root certificate and key (PEM), e.g. the cluster CA the control plane
    /// hands to every edge.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let root_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| TlsError::CertPem {
                host: "the CA".to_string(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::KeyPem {
            host: "the CA".to_string(),
        })?;
        Ok(Ca {
            key,
            root_pem: cert_pem.to_string(),
            root_der,
        })
    }

    /// The root certificate, PEM-encoded, for clients to trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a certificate for `host` signed by this CA.
    pub fn issue(&self, host: &str) -> Result<CertifiedKey, TlsError> {
        let err = |source| TlsError::Issue {
            host: host.to_string(),
            source,
        };
        let issuer = Issuer::new(ca_params(), &self.key);
        let leaf_key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, host);
        let today = days_since_epoch();
        let ((y0, m0, d0), (y1, m1, d1)) = (date(today - 1), date(today + LEAF_DAYS));
        params.not_before = rcgen::date_time_ymd(y0, m0, d0);
        params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        let cert = params.signed_by(&leaf_key, &issuer).map_err(err)?;
        let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| TlsError::KeyPem {
                host: host.to_string(),
            })?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.root_der.clone()],
            signing,
        ))
    }
}

/// Leaf certificates are short-lived (clients such as Apple's reject long-lived ones even from
/// private roots) and re-issued well before they expire.
const LEAF_DAYS: i64 = 90;
const LEAF_RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(60 * 86_400);

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

/// The calendar date (year, month, day) `days` after 1970-01-01, proleptic Gregorian.
fn date(days: i64) -> (i32, u8, u8) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Parses a user certificate chain and key for `host`.
pub(crate) fn certified_key(
    host: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::CertPem {
            host: host.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::CertPem {
            host: host.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::KeyPem {
        host: host.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| TlsError::KeyPem {
            host: host.to_string(),
        })?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Picks the certificate for a TLS handshake by SNI: a user certificate (exact name, then
/// wildcard), else one issued by the cluster CA for a hostname in the route table.
pub(crate) struct CertResolver {
    user: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    issued: Mutex<HashMap<String, (std::time::Instant, Arc<CertifiedKey>)>>,
    ca: ArcSwapOption<Ca>,
    routes: Arc<ArcSwap<Routing>>,
    /// ACME challenges: `acme-tls/1` handshakes get their challenge certificate.
    acme: crate::acme::Challenges,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(ca: Option<Arc<Ca>>, routes: Arc<ArcSwap<Routing>>) -> Self {
        CertResolver {
            user: RwLock::default(),
            issued: Mutex::default(),
            ca: ArcSwapOption::new(ca),
            routes,
            acme: crate::acme::Challenges::default(),
        }
    }

    /// The ACME challenges answered (TLS-ALPN-01 here, HTTP-01 by the request path).
    pub fn acme(&self) -> &crate::acme::Challenges {
        &self.acme
    }

    /// Serves `key` for `host` (which may be `*.example.com`) from now on.
    pub fn add_user(&self, host: String, key: Arc<CertifiedKey>) {
        let mut user = self.user.write().unwrap_or_else(|e| e.into_inner());
        user.insert(host, key);
    }

    /// Replaces every user certificate with `certs`.
    pub fn set_users(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        *self.user.write().unwrap_or_else(|e| e.into_inner()) = certs;
    }

    /// Issues app certificates from `ca` from now on (those issued by another CA are dropped).
    pub fn set_ca(&self, ca: Arc<Ca>) {
        let same = self
            .ca
            .load()
            .as_ref()
            .is_some_and(|c| c.root_pem() == ca.root_pem());
        if !same {
            self.ca.store(Some(ca));
            self.issued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    fn user_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let user = self.user.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = user.get(name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        user.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == crate::acme::ALPN))
        {
            return self.acme.tls_alpn01(&name);
        }
        if let Some(c) = self.user_cert(&name) {
            return Some(c);
        }
        let ca = self.ca.load_full()?;
        self.routes.load().app_for_host(&name)?;
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, c)) = issued.get(&name) {
            if at.elapsed() < LEAF_RENEW_AFTER {
                return Some(c.clone());
            }
        }
        match ca.issue(&name) {
            Ok(c) => {
                tracing::info!(host = %name, "issued a certificate from the cluster CA");
                let c = Arc::new(c);
                issued.insert(name, (std::time::Instant::now(), c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::error!(host = %name, error = %e, "cannot issue a certificate");
                None
            }
        }
    }
}

/// The server-side TLS configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1 (and
/// `acme-tls/1`, which only ACME validation handshakes offer).
pub(crate) fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        crate::acme::ALPN.to_vec(),
    ];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_leafs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem());
        assert!(ca.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leaf = again.issue("shop.aloft.test").unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert!(matches!(
            certified_key("x", "nope", "nope"),
            Err(TlsError::CertPem { .. })
        ));
    }
}

#[cfg(test)]
mod date_tests {
    use super::date;

    #[test]
    fn civil_dates_from_days() {
        assert_eq!(date(0), (1970, 1, 1));
        assert_eq!(date(-1), (1969, 12, 31));
        assert_eq!(date(11_016), (2000, 2, 29));
        assert_eq!(date(20_513), (2026, 3, 1));
    }
}
