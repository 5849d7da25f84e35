//! TLS certificates for the edge: the cluster's root CA (`GET /v1/certs/root`), user
//! certificates by hostname (`/v1/certs`), and the bundle every edge fetches with a join token
//! (`GET /v1/edge/tls`): the CA key to issue app certificates from, and the user certificates;
//! ACME orders (`POST /v1/certs/acme`) and the challenges edges answer (`GET /v1/edge/acme`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Client, ClientError};

/// `GET /v1/certs/root`: the cluster's root certificate, which every edge's certificates chain to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RootCertificate {
    /// PEM.
    pub certificate: String,
}

/// `POST /v1/certs`: a user certificate (chain, leaf first) and its private key, both PEM, for
/// a hostname of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCertificateRequest {
    /// An exact name (`shop.example.com`) or a wildcard (`*.example.com`).
    pub hostname: String,
    /// The app the hostname belongs to: the edges route an exact name to it. A hostname
    /// belongs to one app at a time.
    pub app: String,
    pub certificate: String,
    pub private_key: String,
}

/// A stored certificate as listed (never its key): a user certificate, or one ordered from
/// the server's ACME CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateInfo {
    pub hostname: String,
    /// The app the hostname belongs to (`null` for a certificate stored before hostnames
    /// belonged to apps: served, but routed nowhere).
    #[serde(default)]
    pub app: Option<String>,
    /// Lowercase hex sha256 of the leaf certificate (DER); empty while none was issued.
    pub fingerprint: String,
    pub created_at: String,
    /// Where the certificate comes from.
    #[serde(default)]
    pub source: CertificateSource,
    /// ACME certificates: the state of the latest order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CertificateStatus>,
    /// ACME certificates: the challenge type the latest order used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<AcmeChallengeType>,
    /// ACME certificates: why the latest order failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the served certificate expires (RFC 3339), if one is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether control of the hostname is proven for its app (`<app>.<domain>` always is; a
    /// custom name by DNS or by an ACME validation). Only proven names route to their app.
    #[serde(default)]
    pub verified: bool,
}

/// Where a certificate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CertificateSource {
    /// Added with its key by a user (`aloft certs add HOST --cert --key`).
    #[default]
    User,
    /// Ordered from the server's ACME CA (`aloft certs add HOST`).
    Acme,
}

/// The state of an ACME certificate's latest order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    /// Ordered; the challenge is being solved.
    Pending,
    /// Issued and served by every edge.
    Issued,
    /// The order failed (see `error`); a certificate issued before keeps being served.
    Failed,
}

impl std::fmt::Display for CertificateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertificateStatus::Pending => "pending",
            CertificateStatus::Issued => "issued",
            CertificateStatus::Failed => "failed",
        })
    }
}

/// An ACME challenge type the edges can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AcmeChallengeType {
    /// `GET http://HOST/.well-known/acme-challenge/TOKEN` on the edges' HTTP port.
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on the edges' HTTPS port.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl AcmeChallengeType {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallengeType::Http01 => "http-01",
            AcmeChallengeType::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

impl std::fmt::Display for AcmeChallengeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AcmeChallengeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http-01" => Ok(AcmeChallengeType::Http01),
            "tls-alpn-01" => Ok(AcmeChallengeType::TlsAlpn01),
            other => Err(format!(
                "Unknown ACME challenge type {other:?} (use http-01 or tls-alpn-01)"
            )),
        }
    }
}

/// `POST /v1/certs/acme`: order a certificate for a hostname from the server's ACME CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCertificateRequest {
    /// An exact name (ACME validation over HTTP or TLS cannot prove a wildcard).
    pub hostname: String,
    /// The app the hostname belongs to (see `AddCertificateRequest::app`).
    pub app: String,
    /// The challenge to solve; by default the server's choice (`--acme-challenge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<AcmeChallengeType>,
}

/// One pending ACME challenge every edge answers until it is validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AcmeChallenge {
    #[serde(rename = "type")]
    pub kind: AcmeChallengeType,
    pub hostname: String,
    pub token: String,
    /// `token.thumbprint`: the HTTP-01 answer, and (its sha256) the TLS-ALPN-01 certificate's
    /// acmeIdentifier.
    pub key_authorization: String,
}

/// `GET /v1/edge/acme` (join or admin token): the challenges edges answer now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgeAcme {
    /// Changes whenever the set does; pass it back as `seen` to wait for the next change.
    pub version: u64,
    #[serde(default)]
    pub challenges: Vec<AcmeChallenge>,
}

/// One user certificate with its key, for edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EdgeCertificate {
    pub hostname: String,
    pub certificate: String,
    pub private_key: String,
}

/// `GET /v1/edge/tls` (join or admin token): what an edge needs to terminate TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EdgeTls {
    /// Changes whenever anything below does, so an edge can skip an unchanged bundle.
    pub version: String,
    pub ca_certificate: String,
    pub ca_private_key: String,
    #[serde(default)]
    pub certificates: Vec<EdgeCertificate>,
}

impl Client {
    /// `GET /v1/certs/root`.
    pub async fn root_certificate(&self) -> Result<RootCertificate, ClientError> {
        self.get(self.url(&["v1", "certs", "root"])).await
    }

    /// `GET /v1/certs`, optionally `?app=APP` (an app token sees its own app's only).
    pub async fn list_certificates(
        &self,
        app: Option<&str>,
    ) -> Result<Vec<CertificateInfo>, ClientError> {
        let mut url = self.url(&["v1", "certs"]);
        if let Some(app) = app {
            url.query_pairs_mut().append_pair("app", app);
        }
        self.get(url).await
    }

    /// `POST /v1/certs`.
    pub async fn add_certificate(
        &self,
        req: &AddCertificateRequest,
    ) -> Result<CertificateInfo, ClientError> {
        self.post(self.url(&["v1", "certs"]), req).await
    }

    /// `DELETE /v1/certs/{hostname}`.
    pub async fn remove_certificate(&self, hostname: &str) -> Result<(), ClientError> {
        self.delete::<Option<serde_json::Value>>(self.url(&["v1", "certs", hostname]))
            .await
            .map(|_| ())
    }

    /// `POST /v1/certs/{hostname}/check`: look up DNS again for an unproven hostname.
    pub async fn check_certificate(&self, hostname: &str) -> Result<CertificateInfo, ClientError> {
        self.post(
            self.url(&["v1", "certs", hostname, "check"]),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /v1/certs/acme`.
    pub async fn order_certificate(
        &self,
        req: &OrderCertificateRequest,
    ) -> Result<CertificateInfo, ClientError> {
        self.post(self.url(&["v1", "certs", "acme"]), req).await
    }

    /// `GET /v1/certs/{hostname}`.
    pub async fn get_certificate(&self, hostname: &str) -> Result<CertificateInfo, ClientError> {
        self.get(self.url(&["v1", "certs", hostname])).await
    }

    /// `GET /v1/edge/acme?edge=ID&https=B&seen=V`: the pending challenges, once they differ
    /// from version `seen` (or after the server's wait, about 25 s). `edge` names the caller
    /// (its host id), so the server knows which edges have installed which version.
    pub async fn edge_acme(
        &self,
        edge: &str,
        https: bool,
        seen: Option<u64>,
    ) -> Result<EdgeAcme, ClientError> {
        let mut url = self.url(&["v1", "edge", "acme"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("edge", edge);
            q.append_pair("https", if https { "true" } else { "false" });
            if let Some(v) = seen {
                q.append_pair("seen", &v.to_string());
            }
        }
        self.get(url).await
    }

    /// `GET /v1/edge/tls`.
    pub async fn edge_tls(&self) -> Result<EdgeTls, ClientError> {
        self.get(self.url(&["v1", "edge", "tls"])).await
    }
}
