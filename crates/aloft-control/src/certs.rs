//! The cluster's TLS material: one certificate authority for every edge (kept in the data
//! directory as `ca/ca.pem` and `ca/ca-key.pem`, mode 0600, created on first use), and user
//! certificates by hostname (in the store's `edge_certificates` table). Edges fetch both with a
//! join token, so every edge's certificates chain to the root `aloft certs root` prints.
//!
//! Each certificate's hostname belongs to one app (as with `fly certs add HOST -a APP`): the
//! route table lists an app's exact hostnames, so edges route them to it. Adding, ordering or
//! removing a certificate bumps the store's revision, so edges learn the change at once.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aloft_api::certs::{
    AddCertificateRequest, CertificateInfo, EdgeCertificate, EdgeTls, RootCertificate,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rusqlite::{params, Connection, OptionalExtension as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};

use crate::api::ApiError;
use crate::control::Control;
use crate::store::now_rfc3339;

/// Why the cluster CA could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("The store has no data directory for the cluster CA")]
    NoDataDir,
    #[error("Cannot read or write the cluster CA in {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("Cannot create the cluster CA")]
    Generate(#[source] rcgen::Error),
}

impl From<CertsError> for ApiError {
    fn from(e: CertsError) -> Self {
        let mut detail = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            detail.push_str(&format!(": {source}"));
        }
        ApiError::Internal(detail)
    }
}

/// The root certificate and key of the cluster CA, PEM.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    pub certificate: String,
    pub private_key: String,
}

fn ca_dir(conn: &Connection) -> Result<PathBuf, CertsError> {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .ok_or(CertsError::NoDataDir)?;
    Ok(Path::new(db)
        .parent()
        .ok_or(CertsError::NoDataDir)?
        .join("ca"))
}

/// Loads the CA from `dir`, creating a key and a self-signed root there if it has none.
pub fn load_or_create_ca(dir: &Path) -> Result<ClusterCa, CertsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| CertsError::Io(path, e)
    };
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(ClusterCa {
            certificate: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            private_key: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate().map_err(CertsError::Generate)?;
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
    let cert = p.self_signed(&key).map_err(CertsError::Generate)?;
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
    std::fs::write(&cert_path, &ca.certificate).map_err(io(&cert_path))?;
    Ok(ca)
}

pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS edge_certificates (
    hostname TEXT PRIMARY KEY,
    certificate TEXT NOT NULL,
    private_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    app TEXT
)";

/// The app a stored certificate's hostname belongs to: `None` when no certificate (user or
/// ACME) is stored for it, `Some(None)` for one stored before hostnames belonged to apps.
pub(crate) fn hostname_owner(
    conn: &Connection,
    host: &str,
) -> Result<Option<Option<String>>, ApiError> {
    conn.execute(SCHEMA, [])?;
    Ok(conn
        .query_row(
            "SELECT app FROM edge_certificates WHERE hostname = ?1
             UNION ALL SELECT app FROM acme_certificates WHERE hostname = ?1",
            [host],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?)
}

/// Checks that `app` exists and may take `host`: refuses a hostname another app holds.
pub(crate) fn claim(inner: &crate::store::Inner, host: &str, app: &str) -> Result<(), ApiError> {
    inner.get_app(app)?;
    match hostname_owner(&inner.conn, host)? {
        Some(Some(owner)) if owner != app => Err(ApiError::Conflict(format!(
            "Hostname {host} belongs to app {owner:?}; remove its certificate first \
             (`aloft certs remove {host}`)"
        ))),
        _ => Ok(()),
    }
}

/// Every app's hostnames (wildcards `*.example.com` included), sorted, for the route table.
pub(crate) fn app_hostnames(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, Vec<String>>, ApiError> {
    conn.execute(SCHEMA, [])?;
    let mut stmt = conn.prepare(
        "SELECT app, hostname FROM edge_certificates WHERE app IS NOT NULL
         UNION SELECT app, hostname FROM acme_certificates WHERE app IS NOT NULL
         ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for row in rows {
        let (app, host) = row?;
        out.entry(app).or_default().push(host);
    }
    Ok(out)
}

/// A hostname as certificates are keyed: lowercase, no trailing dot; `*.` only as a prefix.
pub fn normalize_hostname(raw: &str) -> Result<String, ApiError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| ApiError::BadRequest(format!("Hostname {raw:?} {why}"));
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
fn validate(hostname: &str, certificate: &str, private_key: &str) -> Result<String, ApiError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ApiError::BadRequest(format!("The certificate for {hostname} is not valid PEM"))
            })?;
    let Some(leaf) = chain.first() else {
        return Err(ApiError::BadRequest(format!(
            "The certificate for {hostname} holds no CERTIFICATE block"
        )));
    };
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes()).map_err(|_| {
        ApiError::BadRequest(format!("The private key for {hostname} is not valid PEM"))
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        ApiError::BadRequest(format!(
            "The private key for {hostname} is not a supported type (RSA, ECDSA P-256/P-384 or Ed25519)"
        ))
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| {
        ApiError::BadRequest(format!(
            "The private key for {hostname} does not belong to its certificate"
        ))
    })?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        ApiError::BadRequest(format!(
            "The certificate for {hostname} cannot be parsed: {e}"
        ))
    })?;
    // A wildcard certificate is checked against one name it covers.
    let probe = match hostname.strip_prefix("*.") {
        Some(parent) => format!("aloft-probe.{parent}"),
        None => hostname.to_owned(),
    };
    let name = ServerName::try_from(probe.as_str())
        .map_err(|_| ApiError::BadRequest(format!("Hostname {hostname:?} is not a DNS name")))?;
    ee.verify_is_valid_for_subject_name(&name).map_err(|_| {
        ApiError::BadRequest(format!("The certificate is not valid for {hostname}"))
    })?;
    Ok(hex::encode(Sha256::digest(leaf.as_ref())))
}

fn user_info() -> CertificateInfo {
    CertificateInfo {
        hostname: String::new(),
        app: None,
        fingerprint: String::new(),
        created_at: String::new(),
        source: aloft_api::certs::CertificateSource::User,
        status: None,
        challenge: None,
        error: None,
        expires_at: None,
    }
}

impl Control {
    /// The cluster CA, created on first use.
    pub fn cluster_ca(&self) -> Result<ClusterCa, ApiError> {
        let inner = self.lock();
        Ok(load_or_create_ca(&ca_dir(&inner.conn)?)?)
    }

    pub fn root_certificate(&self) -> Result<RootCertificate, ApiError> {
        Ok(RootCertificate {
            certificate: self.cluster_ca()?.certificate,
        })
    }

    /// Stores (or replaces) the user certificate for a hostname.
    pub fn add_certificate(
        &self,
        req: &AddCertificateRequest,
    ) -> Result<CertificateInfo, ApiError> {
        let hostname = normalize_hostname(&req.hostname)?;
        let fingerprint = validate(&hostname, &req.certificate, &req.private_key)?;
        let created_at = now_rfc3339();
        let mut inner = self.lock();
        claim(&inner, &hostname, &req.app)?;
        let tx = inner.conn.transaction()?;
        tx.execute(
            "INSERT INTO edge_certificates (hostname, certificate, private_key, fingerprint, created_at, app)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(hostname) DO UPDATE SET certificate = ?2, private_key = ?3,
               fingerprint = ?4, created_at = ?5, app = ?6",
            params![hostname, req.certificate, req.private_key, fingerprint, created_at, req.app],
        )?;
        // A user certificate replaces an ACME one of the same name.
        crate::acme::remove(&tx, &hostname)?;
        let revision = crate::store::bump_revision(&tx)?;
        tx.commit()?;
        inner.revision = revision;
        drop(inner);
        self.notify(revision);
        tracing::info!(%hostname, app = %req.app, "user certificate stored");
        Ok(CertificateInfo {
            hostname,
            app: Some(req.app.clone()),
            fingerprint,
            created_at,
            ..user_info()
        })
    }

    /// Every certificate, or those of one app.
    pub fn list_certificates(&self, app: Option<&str>) -> Result<Vec<CertificateInfo>, ApiError> {
        let inner = self.lock();
        inner.conn.execute(SCHEMA, [])?;
        let mut stmt = inner.conn.prepare(
            "SELECT hostname, fingerprint, created_at, app FROM edge_certificates ORDER BY hostname",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CertificateInfo {
                hostname: r.get(0)?,
                fingerprint: r.get(1)?,
                created_at: r.get(2)?,
                app: r.get(3)?,
                ..user_info()
            })
        })?;
        let mut all: Vec<CertificateInfo> = rows.collect::<Result<_, _>>()?;
        all.extend(crate::acme::list(&inner.conn)?);
        if let Some(app) = app {
            all.retain(|c| c.app.as_deref() == Some(app));
        }
        all.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(all)
    }

    /// The certificate of a hostname (user or ACME), or 404.
    pub fn certificate(&self, hostname: &str) -> Result<CertificateInfo, ApiError> {
        let host = normalize_hostname(hostname)?;
        self.list_certificates(None)?
            .into_iter()
            .find(|c| c.hostname == host)
            .ok_or_else(|| ApiError::NotFound(format!("No certificate is stored for {host}")))
    }

    /// Removes the certificate of a hostname (user or ACME); the hostname no longer routes to
    /// its app.
    pub fn remove_certificate(&self, hostname: &str) -> Result<(), ApiError> {
        let host = normalize_hostname(hostname)?;
        let mut inner = self.lock();
        inner.conn.execute(SCHEMA, [])?;
        let tx = inner.conn.transaction()?;
        let user = tx.execute("DELETE FROM edge_certificates WHERE hostname = ?1", [&host])? > 0;
        let acme = crate::acme::remove(&tx, &host)?;
        if !user && !acme {
            return Err(ApiError::NotFound(format!(
                "No certificate is stored for {host}"
            )));
        }
        let revision = crate::store::bump_revision(&tx)?;
        tx.commit()?;
        inner.revision = revision;
        drop(inner);
        self.notify(revision);
        let source = if user { "user" } else { "ACME" };
        tracing::info!(hostname = %host, "{source} certificate removed");
        Ok(())
    }

    /// The CA and every user certificate, for edges.
    pub fn edge_tls(&self) -> Result<EdgeTls, ApiError> {
        let ca = self.cluster_ca()?;
        let inner = self.lock();
        inner.conn.execute(SCHEMA, [])?;
        let mut stmt = inner.conn.prepare(
            "SELECT hostname, certificate, private_key, fingerprint FROM edge_certificates ORDER BY hostname",
        )?;
        let mut digest = Sha256::new();
        digest.update(ca.certificate.as_bytes());
        let rows = stmt.query_map([], |r| {
            Ok((
                EdgeCertificate {
                    hostname: r.get(0)?,
                    certificate: r.get(1)?,
                    private_key: r.get(2)?,
                },
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut certificates = Vec::new();
        for row in rows {
            let (cert, fingerprint) = row?;
            digest.update(cert.hostname.as_bytes());
            digest.update(fingerprint.as_bytes());
            certificates.push(cert);
        }
        // Issued ACME certificates (a user certificate of the same name wins).
        for (cert, fingerprint) in crate::acme::edge_certificates(&inner.conn)? {
            if certificates.iter().any(|c| c.hostname == cert.hostname) {
                continue;
            }
            digest.update(cert.hostname.as_bytes());
            digest.update(fingerprint.as_bytes());
            certificates.push(cert);
        }
        Ok(EdgeTls {
            version: hex::encode(digest.finalize()),
            ca_certificate: ca.certificate,
            ca_private_key: ca.private_key,
            certificates,
        })
    }
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
