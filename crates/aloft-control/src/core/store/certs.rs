//! Certificates by hostname: user certificates (`edge_certificates`), ACME certificates and
//! orders (`acme_certificates`, keys sealed by the caller) and ACME accounts.

use std::collections::HashMap;

use aloft_api::certs::{CertificateInfo, CertificateSource, CertificateStatus};
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
        verified: false,
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

/// Who holds a hostname, and whether its control was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameClaim {
    /// `None` for a certificate stored before hostnames belonged to apps.
    pub app: Option<String>,
    pub verified: bool,
}

/// A user certificate as edges need it: its chain and its key, sealed (or, stored by an older
/// version and not yet sealed, in the clear).
#[derive(Debug, Clone)]
pub struct UserCertRow {
    pub hostname: String,
    pub certificate: String,
    pub fingerprint: String,
    /// (nonce, sealed) of the key.
    pub sealed_key: Option<SealedBlob>,
    /// The key in the clear, only in rows not yet sealed.
    pub legacy_key: String,
}

/// A user certificate to store, its key already sealed.
#[derive(Debug, Clone)]
pub struct NewUserCert<'a> {
    pub hostname: &'a str,
    pub certificate: &'a str,
    pub sealed_key: SealedBlob,
    pub fingerprint: &'a str,
    pub created_at: &'a str,
    pub app: &'a str,
    pub verified: bool,
}

impl Db<'_> {
    /// Who holds `host` (by a user certificate or an ACME one), if anyone.
    pub fn hostname_claim(&self, host: &str) -> Result<Option<HostnameClaim>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT app, verified FROM edge_certificates WHERE hostname = ?1
                 UNION ALL SELECT app, verified FROM acme_certificates WHERE hostname = ?1",
                [host],
                |r| {
                    Ok(HostnameClaim {
                        app: r.get(0)?,
                        verified: r.get::<_, i64>(1)? != 0,
                    })
                },
            )
            .optional()?)
    }

    /// Every app's proven hostnames (wildcards included), sorted.
    pub fn app_hostnames(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT app, hostname FROM edge_certificates WHERE app IS NOT NULL AND verified = 1
             UNION SELECT app, hostname FROM acme_certificates WHERE app IS NOT NULL AND verified = 1
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

    /// Marks `host` proven for `app` (both kinds of certificate); returns whether a claim of
    /// that app's was there.
    pub fn set_hostname_verified(&self, host: &str, app: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE edge_certificates SET verified = 1 WHERE hostname = ?1 AND app = ?2",
            params![host, app],
        )? + self.conn.execute(
            "UPDATE acme_certificates SET verified = 1 WHERE hostname = ?1 AND app = ?2",
            params![host, app],
        )?;
        Ok(n > 0)
    }

    /// Stores (or replaces) a user certificate, and forgets an ACME one of the same name.
    pub fn put_user_certificate(&self, cert: &NewUserCert<'_>) -> Result<(), StoreError> {
        let (nonce, sealed) = &cert.sealed_key;
        self.conn.execute(
            "INSERT INTO edge_certificates (hostname, certificate, private_key, fingerprint, created_at,
               app, verified, key_nonce, key_sealed)
             VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(hostname) DO UPDATE SET certificate = ?2, private_key = '',
               fingerprint = ?3, created_at = ?4, app = ?5, verified = ?6, key_nonce = ?7,
               key_sealed = ?8",
            params![
                cert.hostname,
                cert.certificate,
                cert.fingerprint,
                cert.created_at,
                cert.app,
                cert.verified,
                nonce,
                sealed
            ],
        )?;
        self.delete_acme_certificate(cert.hostname)?;
        Ok(())
    }

    /// User certificates as listed (no keys), by hostname.
    pub fn user_certificates(&self) -> Result<Vec<CertificateInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hostname, fingerprint, created_at, app, verified FROM edge_certificates
             ORDER BY hostname",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CertificateInfo {
                hostname: r.get(0)?,
                fingerprint: r.get(1)?,
                created_at: r.get(2)?,
                app: r.get(3)?,
                verified: r.get::<_, i64>(4)? != 0,
                ..user_info()
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// User certificates with their keys, by hostname: only proven ones unless `all`.
    pub fn user_certificates_with_keys(&self, all: bool) -> Result<Vec<UserCertRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hostname, certificate, private_key, fingerprint, key_nonce, key_sealed
             FROM edge_certificates WHERE verified = 1 OR ?1 ORDER BY hostname",
        )?;
        let rows = stmt.query_map([all], |r| {
            let nonce: Option<Vec<u8>> = r.get(4)?;
            let sealed: Option<Vec<u8>> = r.get(5)?;
            Ok(UserCertRow {
                hostname: r.get(0)?,
                certificate: r.get(1)?,
                legacy_key: r.get(2)?,
                fingerprint: r.get(3)?,
                sealed_key: nonce.zip(sealed),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces the clear key of a user certificate with its sealed form.
    pub fn seal_user_key(&self, host: &str, nonce: &[u8], sealed: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE edge_certificates SET private_key = '', key_nonce = ?2, key_sealed = ?3
             WHERE hostname = ?1",
            params![host, nonce, sealed],
        )?;
        Ok(())
    }

    /// Makes SQLite forget the bytes of deleted or replaced rows: rewrites the database and
    /// empties its write-ahead log (with `secure_delete` on, freed cells are zeroed too).
    pub fn forget_freed_pages(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("VACUUM")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
            "SELECT hostname, status, challenge, error, fingerprint, not_after, created_at, app,
               verified
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
                verified: r.get::<_, i64>(8)? != 0,
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
        verified: bool,
    ) -> Result<(), StoreError> {
        self.delete_user_certificate(host)?;
        self.conn.execute(
            "INSERT INTO acme_certificates (hostname, status, challenge, created_at, updated_at, app,
               verified)
             VALUES (?1, 'pending', ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(hostname) DO UPDATE SET status = 'pending', challenge = ?2,
               error = NULL, updated_at = ?4, app = ?5, verified = ?6",
            params![host, challenge, now_rfc3339(), unix_now(), app, verified],
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
            "UPDATE acme_certificates SET status = 'issued', verified = 1, error = NULL, certificate = ?2,
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
