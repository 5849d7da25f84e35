//! TLS certificates for the edge: the cluster's root CA (`GET /v1/certs/root`), user
//! certificates by hostname (`/v1/certs`), and the bundle every edge fetches with a join token
//! (`GET /v1/edge/tls`): the CA key to issue app certificates from, and the user certificates.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Client, ClientError};

/// `GET /v1/certs/root`: the cluster's root certificate, which every edge's certificates chain to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RootCertificate {
    /// PEM.
    pub certificate: String,
}

/// `POST /v1/certs`: a user certificate (chain, leaf first) and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCertificateRequest {
    /// An exact name (`shop.example.com`) or a wildcard (`*.example.com`).
    pub hostname: String,
    pub certificate: String,
    pub private_key: String,
}

/// A stored user certificate as listed (never its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateInfo {
    pub hostname: String,
    /// Lowercase hex sha256 of the leaf certificate (DER).
    pub fingerprint: String,
    pub created_at: String,
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

    /// `GET /v1/certs`.
    pub async fn list_certificates(&self) -> Result<Vec<CertificateInfo>, ClientError> {
        self.get(self.url(&["v1", "certs"])).await
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

    /// `GET /v1/edge/tls`.
    pub async fn edge_tls(&self) -> Result<EdgeTls, ClientError> {
        self.get(self.url(&["v1", "edge", "tls"])).await
    }
}
