//! Tokens: generation, hashing (sha256, only the hash is stored), constant-time lookup of a
//! bearer's scope, and the admin token made on first start.
//!
//! Scopes are coarse today (admin, one app, join); organisations, expiry, revocation and
//! per-host credentials are meant to grow here, behind [`Tokens::authenticate`].

use std::sync::{Arc, RwLock};

use aloft_api::{CreateTokenRequest, TokenKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::core::store::DEFAULT_ORG;
use crate::core::{Db, Store, StoreError};

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    /// Everything.
    Admin,
    /// Only the named app's `/v1/apps/{app}` endpoints.
    App(String),
    /// Only enrolling a host (`POST /v1/hosts`).
    Join,
    /// One host's credential (issued at enrolment, held by the hosts service): that host's
    /// agent protocol and what its edge needs.
    Host(String),
}

impl TokenScope {
    /// The scope's name as stored (`admin`, `app`, `join`).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenScope::Admin => "admin",
            TokenScope::App(_) => "app",
            TokenScope::Join => "join",
            TokenScope::Host(_) => "host",
        }
    }

    /// A short description used as a lease owner.
    pub fn owner(&self) -> String {
        match self {
            TokenScope::Admin => "admin".to_owned(),
            TokenScope::App(app) => format!("app:{app}"),
            TokenScope::Join => "join".to_owned(),
            TokenScope::Host(host) => format!("host:{host}"),
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

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Give \"app\" for an app token, or \"scope\": \"join\" or \"admin\"")]
    NoScope,
    #[error("An app token cannot also have scope {0:?}")]
    AppWithScope(TokenKind),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The token service: the known tokens, mirrored in memory for constant-time lookups.
#[derive(Debug)]
pub struct Tokens {
    store: Arc<Store>,
    set: RwLock<TokenSet>,
}

impl Tokens {
    /// Creates the default org and an admin token if there is none (returned), and loads
    /// every token.
    pub fn open(store: Arc<Store>) -> Result<(Tokens, Option<String>), StoreError> {
        let admin = store.lock().transaction(|db| {
            db.ensure_org(DEFAULT_ORG)?;
            if db.count_tokens(TokenScope::Admin.kind())? > 0 {
                return Ok::<_, StoreError>(None);
            }
            let token = crate::core::ids::token();
            db.insert_token(hash_token(&token), TokenScope::Admin.kind(), None)?;
            Ok(Some(token))
        })?;
        let tokens = Tokens {
            store,
            set: RwLock::new(TokenSet::default()),
        };
        tokens.reload()?;
        Ok((tokens, admin))
    }

    /// Reads every token again.
    pub fn reload(&self) -> Result<(), StoreError> {
        self.reload_with(self.store.lock().db())
    }

    /// Reads every token again through a store the caller has locked (after tokens were
    /// removed with their app).
    pub fn reload_with(&self, db: Db<'_>) -> Result<(), StoreError> {
        let rows = db.tokens()?;
        let mut set = TokenSet::default();
        for (hash, kind, app) in rows {
            if let Some(scope) = TokenScope::from_parts(&kind, app) {
                set.insert(hash, scope);
            }
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// The scope of a bearer token, or `None`.
    pub fn authenticate(&self, bearer: &str) -> Option<TokenScope> {
        self.set
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .lookup(bearer)
    }

    /// Creates a token for an app, for joining hosts, or another admin token.
    pub fn create(&self, req: &CreateTokenRequest) -> Result<String, TokenError> {
        let scope = match (&req.app, req.scope) {
            (Some(app), None | Some(TokenKind::App)) => TokenScope::App(app.clone()),
            (None, Some(TokenKind::Join)) => TokenScope::Join,
            (None, Some(TokenKind::Admin)) => TokenScope::Admin,
            (None, Some(TokenKind::App)) | (None, None) => return Err(TokenError::NoScope),
            (Some(_), Some(kind)) => return Err(TokenError::AppWithScope(kind)),
        };
        let token = crate::core::ids::token();
        let hash = hash_token(&token);
        {
            let inner = self.store.lock();
            let db = inner.db();
            let app = match &scope {
                TokenScope::App(app) => {
                    db.require_app(app)?;
                    Some(app.as_str())
                }
                _ => None,
            };
            db.insert_token(hash, scope.kind(), app)?;
        }
        self.set
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(hash, scope);
        Ok(token)
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
