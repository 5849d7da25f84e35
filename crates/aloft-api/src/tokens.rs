//! Tokens and organisations: what a bearer may do, for how long, and the orgs apps live in.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Everything.
    Admin,
    /// One organisation's apps, machines, secrets, certificates and tokens.
    Org,
    /// One app's apps and machines endpoints.
    App,
    /// Deploying one app: its images, machines, releases and secrets (write), nothing else.
    Deploy,
    /// Registering hosts and the agent protocol.
    Join,
    /// One host's credential, issued at enrolment (never created through `/v1/tokens`).
    Host,
}

impl TokenKind {
    /// The kind's name on the wire (`admin`, `org`, `app`, `deploy`, `join`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Org => "org",
            TokenKind::App => "app",
            TokenKind::Deploy => "deploy",
            TokenKind::Join => "join",
            TokenKind::Host => "host",
        }
    }
}

/// Body of `POST /v1/tokens`: `{"app": "name"}` for an app token, `{"scope": "deploy", "app":
/// "name"}` for a deploy token, `{"scope": "org", "org": "slug"}` for an org token,
/// `{"scope": "join"}` for a join token, `{"scope": "admin"}` for another admin token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenKind>,
    /// The organisation of an org token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Seconds until the token expires (default: 20 years, 1 year for deploy tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// A note shown by `GET /v1/tokens` (e.g. where the token is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Answer of `POST /v1/tokens`; the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    pub token: String,
    /// The token's id (for `GET /v1/tokens` and `DELETE /v1/tokens/{id}`).
    #[serde(default)]
    pub id: String,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: String,
}

/// One entry of `GET /v1/tokens`: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub kind: TokenKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default)]
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, to the minute; absent when never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// Body of `POST /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateOrgRequest {
    pub slug: String,
    /// Defaults to the slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One entry of `GET /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgInfo {
    pub slug: String,
    pub name: String,
    pub app_count: u64,
}
