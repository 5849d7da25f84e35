//! What the CA issued, parsed for storage, and what an ACME account's credentials are
//! sealed to.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use super::AcmeError;

pub(super) fn account_aad(directory: &str) -> String {
    format!("ACME account for {directory}")
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
    use super::super::key_aad;
    use crate::core::keys::{open, seal};

    #[test]
    fn keys_are_sealed_to_their_hostname() {
        let key = [7u8; 32];
        let (nonce, sealed) = seal(&key, key_aad("a.example").as_bytes(), b"secret key");
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(
            open(&key, key_aad("a.example").as_bytes(), &nonce, &sealed).as_deref(),
            Some(&b"secret key"[..])
        );
        assert!(open(&key, key_aad("b.example").as_bytes(), &nonce, &sealed).is_none());
    }
}
