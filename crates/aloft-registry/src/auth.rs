//! The Docker token flow on top of [`RegistryAuth`]: credentials from `Authorization`,
//! the `WWW-Authenticate` challenge, and `GET /v2/token`.

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::RegistryError;
use crate::{Access, Identity, RegistryAuth};

/// How long clients may cache a token handed out by `/v2/token`. The token is the Aloft
/// API token itself, so this only bounds how often clients come back.
const TOKEN_TTL_SECS: u64 = 3600;

/// The secret in an `Authorization: Bearer <token>` or `Basic <user:token>` header.
pub(crate) fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned()).filter(|s| !s.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned()).filter(|s| !s.is_empty());
    }
    None
}

/// The token endpoint URL as seen by the client.
fn realm(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}/v2/token")
}

/// Authenticates a request and checks that it may perform `access` on repository `name`
/// (`None` for `/v2/` itself, which only needs a valid identity).
pub(crate) fn authorize(
    auth: &dyn RegistryAuth,
    headers: &HeaderMap,
    name: Option<&str>,
    access: Access,
) -> Result<Identity, RegistryError> {
    let challenge = || RegistryError::Unauthorized {
        realm: realm(headers),
        scope: name.map(|n| format!("repository:{n}:pull,push")),
    };
    let identity = presented_secret(headers)
        .and_then(|secret| auth.authenticate(&secret))
        .ok_or_else(challenge)?;
    match name {
        Some(n) if !identity.allows(n, access) => Err(RegistryError::Denied(n.to_owned())),
        _ => Ok(identity),
    }
}

/// `GET /v2/token`: exchanges an Aloft API token (Basic password or Bearer) for a
/// registry token, which is the same token.
pub(crate) fn issue_token(
    auth: &dyn RegistryAuth,
    headers: &HeaderMap,
) -> Result<Value, RegistryError> {
    let secret = presented_secret(headers).ok_or_else(|| RegistryError::Unauthorized {
        realm: realm(headers),
        scope: None,
    })?;
    if auth.authenticate(&secret).is_none() {
        return Err(RegistryError::Unauthorized {
            realm: realm(headers),
            scope: None,
        });
    }
    Ok(json!({ "token": secret, "access_token": secret, "expires_in": TOKEN_TTL_SECS }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_bearer_and_basic_secrets() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_secret(&h).as_deref(), Some("abc"));
        let b = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret:x");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {b}")).unwrap(),
        );
        assert_eq!(presented_secret(&h).as_deref(), Some("s3cret:x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(presented_secret(&h), None);
    }

    #[test]
    fn app_identities_only_reach_their_own_repositories() {
        let app = Identity::App("web".into());
        assert!(app.allows("web", Access::Push));
        assert!(app.allows("web/api", Access::Pull));
        assert!(!app.allows("webby", Access::Pull));
        assert!(!app.allows("other/web", Access::Delete));
        assert!(Identity::Admin.allows("other/web", Access::Delete));
        let org = Identity::Apps(["web".to_owned(), "api".to_owned()].into());
        assert!(org.allows("api/x", Access::Push));
        assert!(!org.allows("other", Access::Pull));
    }

    #[test]
    fn pullers_only_pull_their_apps_repositories() {
        let host = Identity::Puller {
            apps: ["web".to_string()].into_iter().collect(),
        };
        assert!(host.allows("web", Access::Pull));
        assert!(host.allows("web/api", Access::Pull));
        assert!(!host.allows("web", Access::Push));
        assert!(!host.allows("web", Access::Delete));
        assert!(!host.allows("api", Access::Pull));
        assert!(!host.allows("webby", Access::Pull));
    }
}
