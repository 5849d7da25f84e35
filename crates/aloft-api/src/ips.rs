//! Dedicated public addresses of an app (`/v1/apps/{app}/ips`), the equivalent of
//! `fly ips allocate-v4/allocate-v6/list/release`. The control plane hands them out from the
//! pools its operator configured (`aloft server --ip-pool CIDR`); the route table lists each
//! app's addresses, so an edge routes a connection to one of them to that app.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Client, ClientError};

/// The family of a dedicated address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IpKind {
    V4,
    V6,
}

impl std::fmt::Display for IpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpKind::V4 => "v4",
            IpKind::V6 => "v6",
        })
    }
}

/// `POST /v1/apps/{app}/ips`: which family to allocate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateIpRequest {
    #[serde(rename = "type")]
    pub kind: IpKind,
}

/// One dedicated address held by an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppIp {
    #[schema(value_type = String)]
    pub address: IpAddr,
    #[serde(rename = "type")]
    pub kind: IpKind,
    pub app: String,
    /// RFC 3339.
    pub created_at: String,
}

impl Client {
    /// `POST /v1/apps/{app}/ips`.
    pub async fn allocate_ip(&self, app: &str, kind: IpKind) -> Result<AppIp, ClientError> {
        self.post(
            self.url(&["v1", "apps", app, "ips"]),
            &AllocateIpRequest { kind },
        )
        .await
    }

    /// `GET /v1/apps/{app}/ips`, sorted by address.
    pub async fn list_ips(&self, app: &str) -> Result<Vec<AppIp>, ClientError> {
        self.get(self.url(&["v1", "apps", app, "ips"])).await
    }

    /// `DELETE /v1/apps/{app}/ips/{address}`.
    pub async fn release_ip(&self, app: &str, address: &str) -> Result<(), ClientError> {
        self.delete::<Option<serde_json::Value>>(self.url(&["v1", "apps", app, "ips", address]))
            .await
            .map(|_| ())
    }
}
