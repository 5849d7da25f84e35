//! The cluster's TLS material: one certificate authority for every edge (`pem.rs`), and
//! certificates by hostname: the user's own, and those the ACME service orders (their keys
//! sealed under the data directory's key). Edges fetch them all with a join token, so every
//! edge's certificates chain to the root `aloft certs root` prints.
//!
//! Each certificate's hostname belongs to one app (as with `fly certs add HOST -a APP`): the
//! route table lists an app's exact hostnames, so edges route them to it. Adding, ordering or
//! removing a certificate bumps the store's revision, so edges learn the change at once.

mod pem;

use std::sync::Arc;

use aloft_api::certs::{
    AddCertificateRequest, CertificateInfo, CertificateSource, EdgeCertificate, EdgeTls,
    RootCertificate,
};
use sha2::{Digest as _, Sha256};

pub use pem::{load_or_create_ca, normalize_hostname, CaError, ClusterCa};

use crate::core::keys::{self, KeyError};
use crate::core::{now_rfc3339, Db, Store, StoreError};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A hostname, certificate or key that is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "Hostname {host} belongs to app {owner:?}; remove its certificate first \
         (`aloft certs remove {host}`)"
    )]
    HostnameTaken { host: String, owner: String },
    #[error("No certificate is stored for {0}")]
    NotFound(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("The key of the ACME certificate of {0} does not decrypt with the current key")]
    Sealed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an ACME certificate's key is sealed to.
pub fn key_aad(host: &str) -> String {
    format!("ACME certificate key of {host}")
}

/// Checks that `app` exists and may take `host`: refuses a hostname another app holds.
pub fn claim(db: Db<'_>, host: &str, app: &str) -> Result<(), CertError> {
    db.require_app(app)?;
    match db.hostname_owner(host)? {
        Some(Some(owner)) if owner != app => Err(CertError::HostnameTaken {
            host: host.to_owned(),
            owner,
        }),
        _ => Ok(()),
    }
}

/// The certificate service.
#[derive(Debug)]
pub struct Certs {
    store: Arc<Store>,
}

impl Certs {
    pub fn new(store: Arc<Store>) -> Certs {
        Certs { store }
    }

    /// The cluster CA, created on first use.
    pub fn cluster_ca(&self) -> Result<ClusterCa, CertError> {
        Ok(load_or_create_ca(&self.store.data_dir().join("ca"))?)
    }

    pub fn root_certificate(&self) -> Result<RootCertificate, CertError> {
        Ok(RootCertificate {
            certificate: self.cluster_ca()?.certificate,
        })
    }

    /// Stores (or replaces) the user certificate for a hostname.
    pub fn add(&self, req: &AddCertificateRequest) -> Result<CertificateInfo, CertError> {
        let hostname = normalize_hostname(&req.hostname)?;
        let fingerprint = pem::validate(&hostname, &req.certificate, &req.private_key)?;
        let created_at = now_rfc3339();
        let mut inner = self.store.lock();
        claim(inner.db(), &hostname, &req.app)?;
        let cert = EdgeCertificate {
            hostname: hostname.clone(),
            certificate: req.certificate.clone(),
            private_key: req.private_key.clone(),
        };
        // A user certificate replaces an ACME one of the same name.
        let ((), revision) = inner.write(|db, _| {
            db.put_user_certificate(&cert, &fingerprint, &created_at, &req.app)
                .map_err(CertError::from)
        })?;
        drop(inner);
        self.store.notify(revision);
        tracing::info!(%hostname, app = %req.app, "user certificate stored");
        Ok(CertificateInfo {
            hostname,
            app: Some(req.app.clone()),
            fingerprint,
            created_at,
            source: CertificateSource::User,
            status: None,
            challenge: None,
            error: None,
            expires_at: None,
        })
    }

    /// Every certificate, or those of one app.
    pub fn list(&self, app: Option<&str>) -> Result<Vec<CertificateInfo>, CertError> {
        let inner = self.store.lock();
        let mut all = inner.db().user_certificates()?;
        all.extend(inner.db().acme_certificates()?);
        if let Some(app) = app {
            all.retain(|c| c.app.as_deref() == Some(app));
        }
        all.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(all)
    }

    /// The certificate of a hostname (user or ACME).
    pub fn get(&self, hostname: &str) -> Result<CertificateInfo, CertError> {
        let host = normalize_hostname(hostname)?;
        self.list(None)?
            .into_iter()
            .find(|c| c.hostname == host)
            .ok_or(CertError::NotFound(host))
    }

    /// Removes the certificate of a hostname (user or ACME); the hostname no longer routes to
    /// its app.
    pub fn remove(&self, hostname: &str) -> Result<(), CertError> {
        let host = normalize_hostname(hostname)?;
        let mut inner = self.store.lock();
        let (user, revision) = inner.write(|db, _| {
            let user = db.delete_user_certificate(&host)?;
            let acme = db.delete_acme_certificate(&host)?;
            if !user && !acme {
                return Err(CertError::NotFound(host.clone()));
            }
            Ok(user)
        })?;
        drop(inner);
        self.store.notify(revision);
        let source = if user { "user" } else { "ACME" };
        tracing::info!(hostname = %host, "{source} certificate removed");
        Ok(())
    }

    /// The CA and every certificate with its key, for edges (a user certificate wins over an
    /// ACME one of the same name).
    pub fn edge_tls(&self) -> Result<EdgeTls, CertError> {
        let ca = self.cluster_ca()?;
        let inner = self.store.lock();
        let mut digest = Sha256::new();
        digest.update(ca.certificate.as_bytes());
        let mut certificates = Vec::new();
        for (cert, fingerprint) in inner.db().user_certificates_with_keys()? {
            digest.update(cert.hostname.as_bytes());
            digest.update(fingerprint.as_bytes());
            certificates.push(cert);
        }
        let issued = inner.db().issued_acme_certificates()?;
        if !issued.is_empty() {
            let key = keys::load_or_create_key(&keys::key_path(self.store.data_dir()))?;
            for row in issued {
                if certificates.iter().any(|c| c.hostname == row.hostname) {
                    continue;
                }
                let private_key = keys::open(
                    &key,
                    key_aad(&row.hostname).as_bytes(),
                    &row.key_nonce,
                    &row.key_sealed,
                )
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| CertError::Sealed(row.hostname.clone()))?;
                digest.update(row.hostname.as_bytes());
                digest.update(row.fingerprint.as_bytes());
                certificates.push(EdgeCertificate {
                    hostname: row.hostname,
                    certificate: row.chain,
                    private_key,
                });
            }
        }
        Ok(EdgeTls {
            version: hex::encode(digest.finalize()),
            ca_certificate: ca.certificate,
            ca_private_key: ca.private_key,
            certificates,
        })
    }
}
