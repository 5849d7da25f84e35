//! The cluster's TLS material: one certificate authority for every edge (`pem.rs`), and
//! certificates by hostname: the user's own and those the ACME service orders, their keys
//! sealed under the data directory's key (`secrets.key`, the one app secrets are sealed
//! with). Edges fetch them all with a join token, so every edge's certificates chain to the
//! root `aloft certs root` prints.
//!
//! Each certificate's hostname belongs to one app (as with `fly certs add HOST -a APP`), by
//! the rules of `ownership.rs`: `<app>.<domain>` is its app's, always; a custom name is held
//! by the first app that claims it and routes to it only once its control is proven (DNS,
//! looked up by `dns.rs`, or a successful ACME validation). The route table lists an app's
//! proven hostnames, so edges route them to it. Adding, ordering, proving or removing a
//! certificate bumps the store's revision, so edges learn the change at once.

mod dns;
mod ownership;
mod pem;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use aloft_api::certs::{
    AddCertificateRequest, CertificateInfo, CertificateSource, EdgeCertificate, EdgeTls,
    RootCertificate,
};
use sha2::{Digest as _, Sha256};

pub use dns::{DnsError, DnsEvidence};
pub use ownership::{platform_name, txt_value, PlatformName, Proof};
pub use pem::{load_or_create_ca, normalize_hostname, CaError, ClusterCa};

use crate::core::keys::{self, KeyError};
use crate::core::store::{HostnameClaim, NewUserCert};
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
    #[error("Hostname {host} is under the apps' domain and belongs to app {owner:?} only")]
    PlatformName { host: String, owner: String },
    #[error("Hostname {0} is reserved for the platform: no app can claim it")]
    Reserved(String),
    #[error("DNS names app {other:?} as the owner of {host}, not app {app:?}")]
    DnsNamesOther {
        host: String,
        app: String,
        other: String,
    },
    #[error(
        "DNS does not show that app {app:?} controls {host}: point {host} at {app}.{domain} \
         with a CNAME, or add a TXT record _aloft-challenge.{base} with the value \"app={app}\", \
         then run `aloft certs check {host}`{detail}"
    )]
    Unproven {
        host: String,
        base: String,
        app: String,
        domain: String,
        detail: String,
    },
    #[error("No certificate is stored for {0}")]
    NotFound(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("The key of the certificate of {0} does not decrypt with the current key")]
    Sealed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an ACME certificate's key is sealed to.
pub fn key_aad(host: &str) -> String {
    format!("ACME certificate key of {host}")
}

/// What a user certificate's key is sealed to.
pub fn user_key_aad(host: &str) -> String {
    format!("user certificate key of {host}")
}

/// The outcome of a claim that may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Control of the name is proven for the claiming app.
    pub verified: bool,
}

/// Checks that `app` exists and may take `host` (see the module docs): a name under the
/// domain only by its app; a custom name held by another app only when that app never proved
/// it and `proof` proves it for `app` now; never a name DNS gives to another app.
pub fn claim(
    db: Db<'_>,
    host: &str,
    app: &str,
    domain: &str,
    proof: &Proof,
) -> Result<Claim, CertError> {
    db.require_app(app)?;
    match platform_name(host, domain) {
        PlatformName::App(owner) if owner == app => return Ok(Claim { verified: true }),
        PlatformName::App(owner) => {
            return Err(CertError::PlatformName {
                host: host.to_owned(),
                owner,
            })
        }
        PlatformName::Reserved => return Err(CertError::Reserved(host.to_owned())),
        PlatformName::Custom => {}
    }
    let held = db.hostname_claim(host)?;
    if let Some(HostnameClaim {
        app: Some(owner),
        verified,
    }) = &held
    {
        if owner != app && (*verified || !proof.for_app) {
            return Err(CertError::HostnameTaken {
                host: host.to_owned(),
                owner: owner.clone(),
            });
        }
    }
    if let Some(other) = &proof.other_app {
        return Err(CertError::DnsNamesOther {
            host: host.to_owned(),
            app: app.to_owned(),
            other: other.clone(),
        });
    }
    let kept = held.is_some_and(|c| c.verified && c.app.as_deref() == Some(app));
    Ok(Claim {
        verified: proof.for_app || kept,
    })
}

/// The certificate service.
#[derive(Debug)]
pub struct Certs {
    store: Arc<Store>,
    domain: String,
    resolver: OnceLock<SocketAddr>,
}

impl Certs {
    pub fn new(store: Arc<Store>, domain: &str) -> Certs {
        Certs {
            store,
            domain: domain.to_owned(),
            resolver: OnceLock::new(),
        }
    }

    /// Asks this resolver for ownership records instead of the system's (once, before serving).
    pub fn set_dns_resolver(&self, resolver: SocketAddr) {
        let _ = self.resolver.set(resolver);
    }

    /// The apps' domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// What DNS says about a custom `host` for `app`; a failed look-up proves nothing (and
    /// says why, for messages).
    pub async fn dns_proof(&self, host: &str, app: &str) -> (Proof, Option<String>) {
        if platform_name(host, &self.domain) != PlatformName::Custom {
            return (Proof::default(), None);
        }
        let evidence = match dns::resolver(self.resolver.get().copied()) {
            Ok(resolver) => dns::evidence(resolver, host).await,
            Err(e) => Err(e),
        };
        match evidence {
            Ok(evidence) => (ownership::proof(&evidence, app, &self.domain), None),
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot look up hostname ownership");
                (Proof::default(), Some(aloft_api::error::error_chain(&e)))
            }
        }
    }

    /// The cluster CA, created on first use. One caller at a time: requests that arrive
    /// together (every host fetching the edge's certificates at start) see the same CA.
    pub fn cluster_ca(&self) -> Result<ClusterCa, CertError> {
        static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        Ok(load_or_create_ca(&self.store.data_dir().join("ca"))?)
    }

    pub fn root_certificate(&self) -> Result<RootCertificate, CertError> {
        Ok(RootCertificate {
            certificate: self.cluster_ca()?.certificate,
        })
    }

    fn sealing_key(&self) -> Result<[u8; 32], CertError> {
        Ok(keys::load_or_create_key(&keys::key_path(
            self.store.data_dir(),
        ))?)
    }

    /// Stores (or replaces) the user certificate for a hostname, its key sealed. The name
    /// routes to the app only once proven (at once when DNS already proves it).
    pub async fn add(&self, req: &AddCertificateRequest) -> Result<CertificateInfo, CertError> {
        let hostname = normalize_hostname(&req.hostname)?;
        let (proof, _) = self.dns_proof(&hostname, &req.app).await;
        // Whose the name is comes first: another app's name is a 409 whatever the certificate.
        claim(
            self.store.lock().db(),
            &hostname,
            &req.app,
            &self.domain,
            &proof,
        )?;
        let fingerprint = pem::validate(&hostname, &req.certificate, &req.private_key)?;
        let key = self.sealing_key()?;
        let sealed_key = keys::seal(
            &key,
            user_key_aad(&hostname).as_bytes(),
            req.private_key.as_bytes(),
        );
        let created_at = now_rfc3339();
        let mut inner = self.store.lock();
        let Claim { verified } = claim(inner.db(), &hostname, &req.app, &self.domain, &proof)?;
        // A user certificate replaces an ACME one of the same name.
        let ((), revision) = inner.write(|db, _| {
            db.put_user_certificate(&NewUserCert {
                hostname: &hostname,
                certificate: &req.certificate,
                sealed_key,
                fingerprint: &fingerprint,
                created_at: &created_at,
                app: &req.app,
                verified,
            })
            .map_err(CertError::from)
        })?;
        drop(inner);
        self.store.notify(revision);
        tracing::info!(%hostname, app = %req.app, verified, "user certificate stored");
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
            verified,
        })
    }

    /// Looks up DNS again for a claimed, unproven hostname; once it proves control for the
    /// app holding the name, the name routes to it.
    pub async fn check(&self, hostname: &str) -> Result<CertificateInfo, CertError> {
        let info = self.get(hostname)?;
        let Some(app) = info.app.clone() else {
            return Ok(info);
        };
        if info.verified {
            return Ok(info);
        }
        let (proof, failure) = self.dns_proof(&info.hostname, &app).await;
        if !proof.for_app {
            let base = info.hostname.trim_start_matches("*.").to_owned();
            return Err(CertError::Unproven {
                host: info.hostname,
                base,
                app,
                domain: self.domain.clone(),
                detail: failure.map(|f| format!(" ({f})")).unwrap_or_default(),
            });
        }
        let mut inner = self.store.lock();
        let (_, revision) = inner.write(|db, _| {
            db.set_hostname_verified(&info.hostname, &app)
                .map_err(CertError::from)
        })?;
        drop(inner);
        self.store.notify(revision);
        tracing::info!(hostname = %info.hostname, %app, "hostname control proven by DNS");
        self.get(&info.hostname)
    }

    /// Seals the keys of user certificates an older version stored in the clear, and makes
    /// SQLite forget the clear bytes.
    pub fn seal_legacy_keys(&self) -> Result<usize, CertError> {
        let inner = self.store.lock();
        let rows: Vec<_> = inner
            .db()
            .user_certificates_with_keys(true)?
            .into_iter()
            .filter(|r| !r.legacy_key.is_empty())
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        let key = self.sealing_key()?;
        for row in &rows {
            let (nonce, sealed) = keys::seal(
                &key,
                user_key_aad(&row.hostname).as_bytes(),
                row.legacy_key.as_bytes(),
            );
            inner.db().seal_user_key(&row.hostname, &nonce, &sealed)?;
        }
        inner.db().forget_freed_pages()?;
        tracing::info!(
            count = rows.len(),
            "sealed user certificate keys stored in the clear"
        );
        Ok(rows.len())
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
        let key = self.sealing_key()?;
        for row in inner.db().user_certificates_with_keys(false)? {
            let private_key = match &row.sealed_key {
                Some((nonce, sealed)) => {
                    keys::open(&key, user_key_aad(&row.hostname).as_bytes(), nonce, sealed)
                        .and_then(|k| String::from_utf8(k).ok())
                        .ok_or_else(|| CertError::Sealed(row.hostname.clone()))?
                }
                None => row.legacy_key.clone(),
            };
            digest.update(row.hostname.as_bytes());
            digest.update(row.fingerprint.as_bytes());
            certificates.push(EdgeCertificate {
                hostname: row.hostname,
                certificate: row.certificate,
                private_key,
            });
        }
        let issued = inner.db().issued_acme_certificates()?;
        if !issued.is_empty() {
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
