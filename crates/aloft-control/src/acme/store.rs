//! Where ACME state lives: issued certificates (keys sealed with ChaCha20-Poly1305 under the
//! data directory's `secrets.key`, bound to their hostname) and account credentials (sealed
//! the same way, bound to their directory URL), in the control plane's store.

use std::path::Path;

use aloft_api::certs::{CertificateInfo, CertificateSource, CertificateStatus, EdgeCertificate};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;
use rusqlite::Connection;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use super::AcmeError;
use crate::api::ApiError;

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS acme_certificates (
    hostname TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    challenge TEXT,
    error TEXT,
    certificate TEXT,
    key_nonce BLOB,
    key_sealed BLOB,
    fingerprint TEXT NOT NULL DEFAULT '',
    not_after INTEGER,
    created_at TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    app TEXT
);
CREATE TABLE IF NOT EXISTS acme_accounts (
    directory TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL
)";

pub(super) fn schema(conn: &Connection) -> Result<(), ApiError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn rfc3339(unix: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

pub(super) fn parse_status(s: &str) -> CertificateStatus {
    match s {
        "issued" => CertificateStatus::Issued,
        "failed" => CertificateStatus::Failed,
        _ => CertificateStatus::Pending,
    }
}

/// The data directory's key (the one app secrets use).
pub(super) fn data_key(conn: &Connection) -> Result<[u8; 32], ApiError> {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::Internal("The store has no data directory".to_owned()))?;
    let dir = Path::new(db)
        .parent()
        .ok_or_else(|| ApiError::Internal("The store has no data directory".to_owned()))?;
    Ok(crate::secrets::load_or_create_key(
        &dir.join("secrets.key"),
    )?)
}

pub(super) fn seal(key: &[u8; 32], aad: &str, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        // Encryption only fails for messages over 256 GiB.
        .unwrap_or_default();
    (nonce.to_vec(), sealed)
}

pub(super) fn open(
    key: &[u8; 32],
    aad: &str,
    nonce: &[u8],
    sealed: &[u8],
) -> Result<String, ApiError> {
    let fail = || ApiError::Internal(format!("{aad} does not decrypt with the current key"));
    if nonce.len() != 12 {
        return Err(fail());
    }
    let plain = ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| fail())?;
    String::from_utf8(plain).map_err(|_| fail())
}

pub(super) fn key_aad(host: &str) -> String {
    format!("ACME certificate key of {host}")
}

pub(super) fn account_aad(directory: &str) -> String {
    format!("ACME account for {directory}")
}

/// Every ACME certificate as listed.
pub(crate) fn list(conn: &Connection) -> Result<Vec<CertificateInfo>, ApiError> {
    schema(conn)?;
    let mut stmt = conn.prepare(
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

/// Issued ACME certificates with their keys, for edges; `(certificate, fingerprint)`.
pub(crate) fn edge_certificates(
    conn: &Connection,
) -> Result<Vec<(EdgeCertificate, String)>, ApiError> {
    schema(conn)?;
    // (hostname, chain, key nonce, sealed key, fingerprint)
    type Row = (String, String, Vec<u8>, Vec<u8>, String);
    let rows: Vec<Row> = {
        let mut stmt = conn.prepare(
            "SELECT hostname, certificate, key_nonce, key_sealed, fingerprint
             FROM acme_certificates WHERE certificate IS NOT NULL ORDER BY hostname",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let key = data_key(conn)?;
    let mut out = Vec::with_capacity(rows.len());
    for (hostname, certificate, nonce, sealed, fingerprint) in rows {
        let private_key = open(&key, &key_aad(&hostname), &nonce, &sealed)?;
        out.push((
            EdgeCertificate {
                hostname,
                certificate,
                private_key,
            },
            fingerprint,
        ));
    }
    Ok(out)
}

/// Forgets the ACME certificate of `host`; returns whether there was one.
pub(crate) fn remove(conn: &Connection, host: &str) -> Result<bool, ApiError> {
    schema(conn)?;
    Ok(conn.execute("DELETE FROM acme_certificates WHERE hostname = ?1", [host])? > 0)
}

/// A certificate the CA issued, ready to store.
pub(super) struct Issued {
    pub chain: String,
    pub key: String,
    pub fingerprint: String,
    pub not_after: i64,
}

pub(super) fn parse_issued(host: &str, chain: String, key: String) -> Result<Issued, AcmeError> {
    let bad = || AcmeError::Parse(host.to_owned());
    let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .ok_or_else(bad)?
        .map_err(|_| bad())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| bad())?;
    let not_after = parsed.validity().not_after.timestamp();
    Ok(Issued {
        fingerprint: hex::encode(Sha256::digest(leaf.as_ref())),
        chain,
        key,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sealed_to_their_hostname() {
        let key = [7u8; 32];
        let (nonce, sealed) = seal(&key, &key_aad("a.example"), b"secret key");
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(
            open(&key, &key_aad("a.example"), &nonce, &sealed).unwrap(),
            "secret key"
        );
        assert!(open(&key, &key_aad("b.example"), &nonce, &sealed).is_err());
    }
}
