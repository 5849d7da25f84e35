//! Answers for ACME challenges the host's control plane is solving: HTTP-01
//! (`GET /.well-known/acme-challenge/TOKEN` for the challenge's hostname, before app routing)
//! and TLS-ALPN-01 (a handshake offering ALPN `acme-tls/1` for the hostname gets a self-signed
//! certificate carrying the key authorization's digest in its acmeIdentifier extension,
//! RFC 8737). The edge only answers; it never talks to the CA.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aloft_api::certs::{AcmeChallenge, AcmeChallengeType};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

use crate::body::{full, ProxyBody};

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub(crate) const ALPN: &[u8] = b"acme-tls/1";

pub(crate) const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// The challenges the edge answers now.
#[derive(Default)]
pub(crate) struct Challenges {
    /// (hostname, token) → key authorization.
    http: RwLock<HashMap<(String, String), String>>,
    /// hostname → challenge certificate.
    tls: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

/// Why a challenge's answer cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("Cannot make the TLS-ALPN-01 certificate for {host}")]
    Cert { host: String, source: rcgen::Error },
    #[error("The TLS-ALPN-01 key for {host} is not a supported key type")]
    Key { host: String },
}

/// The TLS-ALPN-01 certificate for `host`: self-signed, the hostname as its only name, and the
/// sha256 of the key authorization in a critical acmeIdentifier extension.
fn challenge_cert(host: &str, key_authorization: &str) -> Result<CertifiedKey, AcmeError> {
    let err = |source| AcmeError::Cert {
        host: host.to_string(),
        source,
    };
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec![host.to_string()]).map_err(err)?;
    let digest = Sha256::digest(key_authorization.as_bytes());
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(&digest));
    let cert = params.self_signed(&key).map_err(err)?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| AcmeError::Key {
            host: host.to_string(),
        })?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Challenges {
    /// Replaces the set of challenges. A TLS-ALPN-01 certificate already built for the same
    /// key authorization is kept. Entries that cannot be built are returned as errors.
    pub fn set(&self, challenges: &[AcmeChallenge]) -> Vec<AcmeError> {
        let mut http = HashMap::new();
        let mut tls = HashMap::new();
        let mut errors = Vec::new();
        let old = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        for c in challenges {
            let host = normal(&c.hostname);
            match c.kind {
                AcmeChallengeType::Http01 => {
                    http.insert((host, c.token.clone()), c.key_authorization.clone());
                }
                AcmeChallengeType::TlsAlpn01 => {
                    let digest = Sha256::digest(c.key_authorization.as_bytes());
                    let reuse = old.get(&host).filter(|k| {
                        k.end_entity_cert()
                            .is_ok_and(|der| der.windows(32).any(|w| w == digest.as_slice()))
                    });
                    match reuse {
                        Some(k) => {
                            tls.insert(host, k.clone());
                        }
                        None => match challenge_cert(&host, &c.key_authorization) {
                            Ok(k) => {
                                tls.insert(host, Arc::new(k));
                            }
                            Err(e) => errors.push(e),
                        },
                    }
                }
            }
        }
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        errors
    }

    /// The challenge certificate for an `acme-tls/1` handshake to `host`.
    pub fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.tls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    /// The answer to an HTTP-01 validation request, or `None` when `req` is not one for a
    /// challenge this edge holds (it is then routed to the app as usual).
    pub fn http01<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let token = req.uri().path().strip_prefix(HTTP_PREFIX)?;
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())?;
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let answer = self
            .http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(normal(host), token.to_string()))
            .cloned()?;
        tracing::info!(%host, "answered an ACME HTTP-01 validation");
        let mut resp = full(StatusCode::OK, Bytes::from(answer));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(kind: AcmeChallengeType, host: &str) -> AcmeChallenge {
        AcmeChallenge {
            kind,
            hostname: host.to_string(),
            token: "tok".to_string(),
            key_authorization: "tok.thumb".to_string(),
        }
    }

    fn get(host: &str, path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap()
    }

    #[test]
    fn http01_answers_only_its_host_and_token() {
        let c = Challenges::default();
        assert!(c
            .set(&[challenge(AcmeChallengeType::Http01, "Shop.Example")])
            .is_empty());
        let resp = c
            .http01(&get("shop.example:5002", "/.well-known/acme-challenge/tok"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(c
            .http01(&get("other.example", "/.well-known/acme-challenge/tok"))
            .is_none());
        assert!(c
            .http01(&get("shop.example", "/.well-known/acme-challenge/nope"))
            .is_none());
        assert!(c.http01(&get("shop.example", "/")).is_none());
        c.set(&[]);
        assert!(c
            .http01(&get("shop.example", "/.well-known/acme-challenge/tok"))
            .is_none());
    }

    #[test]
    fn tls_alpn01_certificates_carry_the_digest_and_are_reused() {
        let c = Challenges::default();
        let set = [challenge(AcmeChallengeType::TlsAlpn01, "shop.example")];
        assert!(c.set(&set).is_empty());
        let first = c.tls_alpn01("shop.example").unwrap();
        let digest = Sha256::digest(b"tok.thumb");
        let der = first.end_entity_cert().unwrap();
        assert!(der.windows(32).any(|w| w == digest.as_slice()));
        c.set(&set);
        assert!(Arc::ptr_eq(&first, &c.tls_alpn01("shop.example").unwrap()));
        assert!(c.tls_alpn01("other.example").is_none());
    }
}
