//! Certificates by hostname: user certificates (`edge_certificates`), ACME certificates and
//! orders (`acme_certificates`, keys sealed by the caller) and ACME accounts.

use std::collections::HashMap;

use aloft_api::certs::{CertificateInfo, CertificateSource, CertificateStatus, EdgeCertificate};
use rusqlite::{params, OptionalExtension as _};

use super::{now_rfc3339, unix_now, Db};
use crate::core::error::StoreError;

fn rfc3339(unix: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn parse_status(s: &str) -> CertificateStatus {
    match s {
        "issued" => CertificateStatus::Issued,
        "failed" => CertificateStatus::Failed,
        _ => CertificateStatus::Pending,
    }
}

fn user_info() -> CertificateInfo {
    CertificateInfo {
        hostname: String::new(),
        app: None,
        fingerprint: String::new(),
        created_at: String::new(),
        source: CertificateSource::User,
        status: None,
        challenge: None,
        error: None,
        expires_at: None,
    }
}

/// A sealed value: (nonce, ciphertext).
pub type SealedBlob = (Vec<u8>, Vec<u8>);

/// An issued ACME certificate with its sealed key.
#[derive(Debug, Clone)]
pub struct IssuedRow {
    pub hostname: String,
    pub chain: String,
    pub key_nonce: Vec<u8>,
    pub key_sealed: Vec<u8>,
    pub fingerprint: String,
    pub not_after: i64,
}

/// What renewal looks at in an ACME certificate.
#[derive(Debug, Clone)]
pub struct AcmeRow {
    pub hostname: String,
    pub status: CertificateStatus,
    pub not_after: Option<i64>,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Db<'_> {
    /// The app a stored certificate's hostname belongs to: `None` when no certificate (user or
    /// ACME) is stored for it, `Some(None)` for one stored before hostnames belonged to apps.
    pub fn hostname_owner(&self, host: &str) -> Result<Option<Option<String>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT app FROM edge_certificates WHERE hostname = ?1
                 UNION ALL SELECT app FROM acme_certificates WHERE hostname = ?1",
                [host],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?)
    }

    /// Every app's hostnames (wildcards included), sorted.
    pub fn app_hostnames(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT app, hostname FROM edge_certificates WHERE app IS NOT NULL
             UNION SELECT app, hostname FROM acme_certificates WHERE app IS NOT NULL
             ORDER BY 1, 2",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            let (app, host) = row?;
            out.entry(app).or_default().push(host);
        }
        Ok(out)
    }

    /// Stores (or replaces) a user certificate, and forgets an ACME one of the same name.
    pub fn put_user_certificate(
        &self,
        cert: &EdgeCertificate,
        fingerprint: &str,
        created_at: &str,
        app: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO edge_certificates (hostname, certificate, private_key, fingerprint, created_at, app)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(hostname) DO UPDATE SET certificate = ?2, private_key = ?3,
               fingerprint = ?4, created_at = ?5, app = ?6",
            params![cert.hostname, cert.certificate, cert.private_key, fingerprint, created_at, app],
        )?;
        self.delete_acme_certificate(&cert.hostname)?;
        Ok(())
    }

    /// User certificates as listed (no keys), by hostname.
    pub fn user_certificates(&self) -> Result<Vec<CertificateInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// User certificates with their keys and fingerprints, by hostname.
    pub fn user_certificates_with_keys(
        &self,
    ) -> Result<Vec<(EdgeCertificate, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hostname, certificate, private_key, fingerprint FROM edge_certificates ORDER BY hostname",
        )?;
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets the user certificate of `host`; returns whether there was one.
    pub fn delete_user_certificate(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM edge_certificates WHERE hostname = ?1", [host])?
            > 0)
    }

    /// ACME certificates as listed, by hostname.
    pub fn acme_certificates(&self) -> Result<Vec<CertificateInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hostname, status, challenge, error, fingerprint, not_after, created_at, app
             FROM acme_certificates ORDER BY hostname",
        )?;
        let rows = stmt.query_map([], |r| {
            let challenge: Option<String> = r.get(2)?;
            Ok(CertificateInfo {
                hostname: r.get(0)?,
                status: Some(parse_status(&r.get::<_, String>(1)?)),
                challenge: challenge.and_then(|c| c.parse().ok()),
                error: r.get(3)?,
                fingerprint: r.get(4)?,
                expires_at: r.get::<_, Option<i64>>(5)?.and_then(rfc3339),
                created_at: r.get(6)?,
                app: r.get(7)?,
                source: CertificateSource::Acme,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What renewal needs of every ACME certificate.
    pub fn acme_renewals(&self) -> Result<Vec<AcmeRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT hostname, status, not_after, updated_at FROM acme_certificates")?;
        let rows = stmt.query_map([], |r| {
            Ok(AcmeRow {
                hostname: r.get(0)?,
                status: parse_status(&r.get::<_, String>(1)?),
                not_after: r.get(2)?,
                updated_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Issued ACME certificates with their sealed keys, by hostname.
    pub fn issued_acme_certificates(&self) -> Result<Vec<IssuedRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hostname, certificate, key_nonce, key_sealed, fingerprint, coalesce(not_after, 0)
             FROM acme_certificates WHERE certificate IS NOT NULL ORDER BY hostname",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(IssuedRow {
                hostname: r.get(0)?,
                chain: r.get(1)?,
                key_nonce: r.get(2)?,
                key_sealed: r.get(3)?,
                fingerprint: r.get(4)?,
                not_after: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a pending ACME order for `host` of `app` (replacing a user certificate).
    pub fn put_acme_order(
        &self,
        host: &str,
        challenge: Option<&str>,
        app: &str,
    ) -> Result<(), StoreError> {
        self.delete_user_certificate(host)?;
        self.conn.execute(
            "INSERT INTO acme_certificates (hostname, status, challenge, created_at, updated_at, app)
             VALUES (?1, 'pending', ?2, ?3, ?4, ?5)
             ON CONFLICT(hostname) DO UPDATE SET status = 'pending', challenge = ?2,
               error = NULL, updated_at = ?4, app = ?5",
            params![host, challenge, now_rfc3339(), unix_now(), app],
        )?;
        Ok(())
    }

    /// Records the challenge an order solves.
    pub fn set_acme_challenge(&self, host: &str, challenge: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE acme_certificates SET challenge = ?2 WHERE hostname = ?1",
            params![host, challenge],
        )?;
        Ok(())
    }

    /// Records an issued certificate (a certificate removed while its order ran stays
    /// removed).
    pub fn set_acme_issued(&self, issued: &IssuedRow) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE acme_certificates SET status = 'issued', error = NULL, certificate = ?2,
               key_nonce = ?3, key_sealed = ?4, fingerprint = ?5, not_after = ?6, updated_at = ?7
             WHERE hostname = ?1",
            params![
                issued.hostname,
                issued.chain,
                issued.key_nonce,
                issued.key_sealed,
                issued.fingerprint,
                issued.not_after,
                unix_now()
            ],
        )?;
        Ok(())
    }

    /// Records a failed order.
    pub fn set_acme_failed(&self, host: &str, message: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE acme_certificates SET status = 'failed', error = ?2, updated_at = ?3
             WHERE hostname = ?1",
            params![host, message, unix_now()],
        )?;
        Ok(())
    }

    /// Forgets the ACME certificate of `host`; returns whether there was one.
    pub fn delete_acme_certificate(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM acme_certificates WHERE hostname = ?1", [host])?
            > 0)
    }

    /// The sealed account credentials for an ACME directory.
    pub fn acme_account(&self, directory: &str) -> Result<Option<SealedBlob>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT nonce, sealed FROM acme_accounts WHERE directory = ?1",
                [directory],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn put_acme_account(
        &self,
        directory: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO acme_accounts (directory, nonce, sealed) VALUES (?1, ?2, ?3)",
            params![directory, nonce, sealed],
        )?;
        Ok(())
    }
}
