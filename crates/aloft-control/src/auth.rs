//! Tokens: generation, hashing (sha256) and constant-time lookup of a bearer's scope.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    /// Everything.
    Admin,
    /// Only the named app's `/v1/apps/{app}` endpoints.
    App(String),
    /// Only the agent protocol (`/v1/hosts`).
    Join,
}

impl TokenScope {
    /// The scope's name as stored (`admin`, `app`, `join`).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenScope::Admin => "admin",
            TokenScope::App(_) => "app",
            TokenScope::Join => "join",
        }
    }

    /// A short description used as a lease owner.
    pub fn owner(&self) -> String {
        match self {
            TokenScope::Admin => "admin".to_owned(),
            TokenScope::App(app) => format!("app:{app}"),
            TokenScope::Join => "join".to_owned(),
        }
    }

    /// Rebuilds a scope from its stored parts.
    pub fn from_parts(kind: &str, app: Option<String>) -> Option<TokenScope> {
        match (kind, app) {
            ("admin", _) => Some(TokenScope::Admin),
            ("join", _) => Some(TokenScope::Join),
            ("app", Some(app)) => Some(TokenScope::App(app)),
            _ => None,
        }
    }
}

/// The sha256 of a token; only this is stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The known token hashes, compared in constant time.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: Vec<([u8; 32], TokenScope)>,
}

impl TokenSet {
    pub fn insert(&mut self, hash: [u8; 32], scope: TokenScope) {
        self.entries.push((hash, scope));
    }

    /// The scope of a bearer token, comparing against every stored hash in constant time.
    pub fn lookup(&self, bearer: &str) -> Option<TokenScope> {
        let hash = hash_token(bearer);
        let mut found = None;
        for (stored, scope) in &self.entries {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(scope.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_only_the_exact_token() {
        let mut set = TokenSet::default();
        set.insert(hash_token("aloft_abc"), TokenScope::App("web".into()));
        assert_eq!(set.lookup("aloft_abc"), Some(TokenScope::App("web".into())));
        assert_eq!(set.lookup("aloft_abd"), None);
        assert_eq!(set.lookup(""), None);
    }
}
