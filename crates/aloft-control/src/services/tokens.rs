//! Tokens: generation, hashing (sha256, only the hash is stored), constant-time lookup of a
//! bearer's scope, expiry, revocation, and the admin token made on first start.
//!
//! Every token has an id (shown by `GET /v1/tokens`, used to revoke it), a scope and an
//! expiry. Revoking deletes the row and reloads the in-memory set under the store lock, so
//! the next request with that token fails; [`Tokens::ended`] lets long-lived streams end
//! when their token is revoked or expires.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aloft_api::{CreateTokenRequest, TokenInfo, TokenKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::core::store::{unix_now, TokenRow, DEFAULT_ORG};
use crate::core::{Db, Store, StoreError};

/// Tokens without `expires_in` live this long (as Fly's org tokens), deploy tokens excepted.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(20 * 31_557_600);
/// Deploy tokens (what CI holds) without `expires_in` live this long.
pub const DEFAULT_DEPLOY_EXPIRY: Duration = Duration::from_secs(31_557_600);
/// The longest expiry a token may be given.
pub const MAX_EXPIRY: Duration = Duration::from_secs(100 * 31_557_600);
/// `last_used_at` is recorded at most this often per token.
const LAST_USED_GRAIN: i64 = 60;

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    /// Everything.
    Admin,
    /// The apps of one organisation, and tokens for them.
    Org(String),
    /// Only the named app's `/v1/apps/{app}` endpoints.
    App(String),
    /// Deploying the named app: its machines, releases, secrets (write) and registry
    /// repositories; not exec, certificates, addresses or scaling policy.
    Deploy(String),
    /// Only the agent protocol (`/v1/hosts`).
    Join,
    /// One host's credential (issued at enrolment, held by the hosts service): that host's
    /// agent protocol and what its edge needs.
    Host(String),
}

impl TokenScope {
    /// The scope's kind.
    pub fn kind(&self) -> TokenKind {
        match self {
            TokenScope::Admin => TokenKind::Admin,
            TokenScope::Org(_) => TokenKind::Org,
            TokenScope::App(_) => TokenKind::App,
            TokenScope::Deploy(_) => TokenKind::Deploy,
            TokenScope::Join => TokenKind::Join,
            TokenScope::Host(_) => TokenKind::Host,
        }
    }

    /// A short description used as a lease owner.
    pub fn owner(&self) -> String {
        match self {
            TokenScope::Admin => "admin".to_owned(),
            TokenScope::Org(org) => format!("org:{org}"),
            TokenScope::App(app) => format!("app:{app}"),
            TokenScope::Deploy(app) => format!("deploy:{app}"),
            TokenScope::Join => "join".to_owned(),
            TokenScope::Host(host) => format!("host:{host}"),
        }
    }

    /// Rebuilds a scope from its stored parts.
    pub fn from_parts(kind: &str, app: Option<String>, org: Option<String>) -> Option<TokenScope> {
        match (kind, app, org) {
            ("admin", _, _) => Some(TokenScope::Admin),
            ("join", _, _) => Some(TokenScope::Join),
            ("org", _, Some(org)) => Some(TokenScope::Org(org)),
            ("app", Some(app), _) => Some(TokenScope::App(app)),
            ("deploy", Some(app), _) => Some(TokenScope::Deploy(app)),
            _ => None,
        }
    }

    fn app(&self) -> Option<&str> {
        match self {
            TokenScope::App(app) | TokenScope::Deploy(app) => Some(app),
            _ => None,
        }
    }

    fn org(&self) -> Option<&str> {
        match self {
            TokenScope::Org(org) => Some(org),
            _ => None,
        }
    }
}

/// Who presented a valid token: its id and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub scope: TokenScope,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Token is not valid (unknown or revoked)")]
    Unknown,
    #[error("Token {id} expired at {at}")]
    Expired { id: String, at: String },
}

/// The sha256 of a token; only this is stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
struct Entry {
    hash: [u8; 32],
    id: String,
    scope: TokenScope,
    expires_at: i64,
    last_used: AtomicI64,
}

/// The known token hashes, compared in constant time.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl TokenSet {
    fn insert(&mut self, row: &TokenRow, scope: TokenScope) {
        self.entries.push(Entry {
            hash: row.hash,
            id: row.id.clone(),
            scope,
            expires_at: row.expires_at,
            last_used: AtomicI64::new(row.last_used_at.unwrap_or(0)),
        });
    }

    /// The entry of a bearer token, comparing against every stored hash in constant time.
    fn lookup(&self, bearer: &str) -> Option<&Entry> {
        let hash = hash_token(bearer);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found
    }

    fn expiry_of(&self, id: &str) -> Option<i64> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.expires_at)
    }
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "Say what the token is for: \"app\" for an app token, \"scope\": \"deploy\" with \"app\", \
         \"scope\": \"org\" with \"org\", or \"scope\": \"join\" or \"admin\""
    )]
    NoScope,
    #[error("A {0} token needs \"app\"")]
    NeedsApp(&'static str),
    #[error("An org token needs \"org\"")]
    NeedsOrg,
    #[error("A {kind} token cannot also name {field:?}")]
    Extra {
        kind: &'static str,
        field: &'static str,
    },
    #[error("Expiry must be between 1 second and 100 years, not {0} seconds")]
    BadExpiry(u64),
    #[error("Token name must be at most 100 printable characters")]
    BadName,
    #[error("Host credentials are issued when a host enrols (aloft hosts join-token create), not through /v1/tokens")]
    HostKind,
    #[error("Organization {0:?} not found")]
    OrgNotFound(String),
    #[error("Token {0:?} is the last admin token; create another before revoking it")]
    LastAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new token: the secret (shown once) and its id and expiry.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub expires_at: i64,
}

/// The token service: the known tokens, mirrored in memory for constant-time lookups.
#[derive(Debug)]
pub struct Tokens {
    store: Arc<Store>,
    set: RwLock<TokenSet>,
    /// Bumped on every reload, so streams re-check their token.
    generation: watch::Sender<u64>,
}

impl Tokens {
    /// Creates the default org and an admin token if there is none (returned), and loads
    /// every token.
    pub fn open(store: Arc<Store>) -> Result<(Tokens, Option<String>), StoreError> {
        let admin = store.lock().transaction(|db| {
            db.ensure_org(DEFAULT_ORG)?;
            if db.count_tokens(TokenKind::Admin.as_str())? > 0 {
                return Ok::<_, StoreError>(None);
            }
            let token = crate::core::ids::token();
            db.insert_token(&new_row(
                &token,
                &TokenScope::Admin,
                DEFAULT_EXPIRY,
                "first admin",
            ))?;
            Ok(Some(token))
        })?;
        let tokens = Tokens {
            store,
            set: RwLock::new(TokenSet::default()),
            generation: watch::Sender::new(0),
        };
        tokens.reload()?;
        Ok((tokens, admin))
    }

    /// Reads every token again.
    pub fn reload(&self) -> Result<(), StoreError> {
        self.reload_with(self.store.lock().db())
    }

    /// Reads every token again through a store the caller has locked (after tokens were
    /// removed with their app or org).
    pub fn reload_with(&self, db: Db<'_>) -> Result<(), StoreError> {
        let rows = db.tokens()?;
        let mut set = TokenSet::default();
        for row in &rows {
            if let Some(scope) = TokenScope::from_parts(&row.kind, row.app.clone(), row.org.clone())
            {
                set.insert(row, scope);
            }
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The principal of a bearer token: refused when unknown, revoked or expired.
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        let now = unix_now();
        let (principal, touched) = {
            let set = self.set.read().unwrap_or_else(|poison| poison.into_inner());
            let entry = set.lookup(bearer).ok_or(AuthError::Unknown)?;
            if entry.expires_at <= now {
                return Err(AuthError::Expired {
                    id: entry.id.clone(),
                    at: rfc3339(entry.expires_at),
                });
            }
            let last = entry.last_used.load(Ordering::Relaxed);
            let touched = now - last >= LAST_USED_GRAIN
                && entry
                    .last_used
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            let principal = Principal {
                id: entry.id.clone(),
                scope: entry.scope.clone(),
            };
            (principal, touched)
        };
        if touched {
            let used = [(principal.id.clone(), now)];
            if let Err(e) = self.store.lock().db().touch_tokens(&used) {
                tracing::warn!(error = %e, "cannot record when a token was used");
            }
        }
        Ok(principal)
    }

    /// Creates a token. The caller has checked that the creator may mint this scope.
    pub fn create(&self, req: &CreateTokenRequest) -> Result<NewToken, TokenError> {
        let scope = scope_of(req)?;
        let expiry = match req.expires_in {
            None if scope.kind() == TokenKind::Deploy => DEFAULT_DEPLOY_EXPIRY,
            None => DEFAULT_EXPIRY,
            Some(secs) if secs == 0 || secs > MAX_EXPIRY.as_secs() => {
                return Err(TokenError::BadExpiry(secs))
            }
            Some(secs) => Duration::from_secs(secs),
        };
        let name = req.name.as_deref().unwrap_or("");
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(TokenError::BadName);
        }
        let token = crate::core::ids::token();
        let row = new_row(&token, &scope, expiry, name);
        let inner = self.store.lock();
        let db = inner.db();
        if let Some(app) = scope.app() {
            db.require_app(app)?;
        }
        if let Some(org) = scope.org() {
            if !db.org_exists(org)? {
                return Err(TokenError::OrgNotFound(org.to_owned()));
            }
        }
        db.insert_token(&row)?;
        self.set
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(&row, scope);
        drop(inner);
        Ok(NewToken {
            token,
            id: row.id,
            expires_at: row.expires_at,
        })
    }

    /// Every token (never the secret), with the scope each grants, by creation.
    pub fn list(&self) -> Result<Vec<(TokenInfo, TokenScope)>, StoreError> {
        let rows = self.store.lock().db().tokens()?;
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let scope = TokenScope::from_parts(&row.kind, row.app.clone(), row.org.clone())?;
                // The in-memory time is newer than the stored one by up to a minute.
                let used = set
                    .entries
                    .iter()
                    .find(|e| e.id == row.id)
                    .map(|e| e.last_used.load(Ordering::Relaxed))
                    .filter(|t| *t > 0)
                    .or(row.last_used_at);
                let info = TokenInfo {
                    id: row.id,
                    kind: scope.kind(),
                    app: row.app,
                    org: row.org,
                    name: row.name,
                    created_at: row.created_at,
                    expires_at: rfc3339(row.expires_at),
                    last_used_at: used.map(rfc3339),
                };
                Some((info, scope))
            })
            .collect())
    }

    /// Revokes a token: from the next request on, it is refused everywhere, and streams
    /// opened with it end. The last admin token cannot be revoked.
    pub fn revoke(&self, id: &str) -> Result<(), TokenError> {
        let inner = self.store.lock();
        let db = inner.db();
        let row = db
            .tokens()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))?;
        if row.kind == TokenKind::Admin.as_str() && db.count_tokens(TokenKind::Admin.as_str())? <= 1
        {
            return Err(TokenError::LastAdmin(id.to_owned()));
        }
        db.delete_token(id)?;
        self.reload_with(db)?;
        Ok(())
    }

    /// Resolves when the token `id` is revoked or expires (for streams opened with it).
    pub fn ended(self: &Arc<Self>, id: String) -> impl Future<Output = ()> + Send + 'static {
        let tokens = self.clone();
        let mut changes = self.generation.subscribe();
        async move {
            loop {
                let expires = tokens
                    .set
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .expiry_of(&id);
                let Some(expires) = expires else { return };
                let left = expires - unix_now();
                if left <= 0 {
                    return;
                }
                let wait = Duration::from_secs(left.min(86_400) as u64);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The scope a request asks for.
fn scope_of(req: &CreateTokenRequest) -> Result<TokenScope, TokenError> {
    let kind = match (req.scope, &req.app) {
        (Some(kind), _) => kind,
        (None, Some(_)) => TokenKind::App,
        (None, None) => return Err(TokenError::NoScope),
    };
    let extra = |field| TokenError::Extra {
        kind: kind.as_str(),
        field,
    };
    match kind {
        TokenKind::App | TokenKind::Deploy => {
            if req.org.is_some() {
                return Err(extra("org"));
            }
            let app = req.app.clone().ok_or(TokenError::NeedsApp(kind.as_str()))?;
            Ok(if kind == TokenKind::App {
                TokenScope::App(app)
            } else {
                TokenScope::Deploy(app)
            })
        }
        TokenKind::Org => {
            if req.app.is_some() {
                return Err(extra("app"));
            }
            Ok(TokenScope::Org(
                req.org.clone().ok_or(TokenError::NeedsOrg)?,
            ))
        }
        TokenKind::Host => Err(TokenError::HostKind),
        TokenKind::Admin | TokenKind::Join => {
            if req.app.is_some() {
                return Err(extra("app"));
            }
            if req.org.is_some() {
                return Err(extra("org"));
            }
            Ok(if kind == TokenKind::Admin {
                TokenScope::Admin
            } else {
                TokenScope::Join
            })
        }
    }
}

fn new_row(token: &str, scope: &TokenScope, expiry: Duration, name: &str) -> TokenRow {
    TokenRow {
        hash: hash_token(token),
        id: format!("tok_{}", crate::core::ids::short_id()),
        kind: scope.kind().as_str().to_owned(),
        app: scope.app().map(str::to_owned),
        org: scope.org().map(str::to_owned),
        name: name.to_owned(),
        created_at: String::new(),
        expires_at: unix_now().saturating_add(expiry.as_secs() as i64),
        last_used_at: None,
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(token: &str, id: &str, expires_at: i64) -> TokenRow {
        TokenRow {
            hash: hash_token(token),
            id: id.to_owned(),
            kind: "app".into(),
            app: Some("web".into()),
            org: None,
            name: String::new(),
            created_at: String::new(),
            expires_at,
            last_used_at: None,
        }
    }

    #[test]
    fn lookup_finds_only_the_exact_token() {
        let mut set = TokenSet::default();
        set.insert(
            &row("aloft_abc", "t1", i64::MAX),
            TokenScope::App("web".into()),
        );
        assert_eq!(set.lookup("aloft_abc").map(|e| e.id.as_str()), Some("t1"));
        assert!(set.lookup("aloft_abd").is_none());
        assert!(set.lookup("").is_none());
    }

    #[test]
    fn requests_name_exactly_one_scope() {
        let req = |scope, app: Option<&str>, org: Option<&str>| CreateTokenRequest {
            scope,
            app: app.map(str::to_owned),
            org: org.map(str::to_owned),
            ..CreateTokenRequest::default()
        };
        assert_eq!(
            scope_of(&req(None, Some("a"), None)).unwrap(),
            TokenScope::App("a".into())
        );
        assert_eq!(
            scope_of(&req(Some(TokenKind::Deploy), Some("a"), None)).unwrap(),
            TokenScope::Deploy("a".into())
        );
        assert_eq!(
            scope_of(&req(Some(TokenKind::Org), None, Some("x"))).unwrap(),
            TokenScope::Org("x".into())
        );
        assert!(scope_of(&req(None, None, None)).is_err());
        assert!(scope_of(&req(Some(TokenKind::Deploy), None, None)).is_err());
        assert!(scope_of(&req(Some(TokenKind::Org), Some("a"), Some("x"))).is_err());
        assert!(scope_of(&req(Some(TokenKind::Admin), None, Some("x"))).is_err());
    }
}
