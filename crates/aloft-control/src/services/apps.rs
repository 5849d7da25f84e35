//! Apps and organisations: creating, reading, listing and deleting them. Deleting an app
//! revokes its app and deploy tokens at once, deleting an org its org tokens. An org is a
//! tenant: its apps share one private network, and org tokens reach only its apps.

use std::sync::Arc;

use aloft_api::{App, AppSummary, OrgInfo};

use super::tokens::Tokens;
use crate::core::store::DEFAULT_ORG;
use crate::core::{Store, StoreError};

/// Why an app operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("App name {0:?} must be 1-63 lowercase letters, digits and inner dashes")]
    InvalidName(String),
    #[error("Organization {0:?} not found")]
    OrgNotFound(String),
    #[error("Organization slug {0:?} must be 1-63 lowercase letters, digits and inner dashes")]
    InvalidOrg(String),
    #[error("Organization name must be 1-100 printable characters")]
    InvalidOrgName,
    #[error("Organization {0:?} is the default for new apps and cannot be deleted")]
    DefaultOrg(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The app service.
#[derive(Debug)]
pub struct Apps {
    store: Arc<Store>,
    tokens: Arc<Tokens>,
}

impl Apps {
    pub fn new(store: Arc<Store>, tokens: Arc<Tokens>) -> Apps {
        Apps { store, tokens }
    }

    pub fn create(
        &self,
        name: &str,
        org: Option<&str>,
        network: Option<&str>,
    ) -> Result<App, AppError> {
        validate_app_name(name)?;
        let org = org.filter(|o| !o.is_empty()).unwrap_or(DEFAULT_ORG);
        let mut inner = self.store.lock();
        if !inner.db().org_exists(org)? {
            return Err(AppError::OrgNotFound(org.to_owned()));
        }
        let ((), revision) = inner.write(|db, _| {
            db.insert_app(name, org, network.unwrap_or("default"))
                .map_err(AppError::from)
        })?;
        let app = inner.db().app(name)?;
        drop(inner);
        self.store.notify(revision);
        Ok(app)
    }

    pub fn get(&self, name: &str) -> Result<App, AppError> {
        Ok(self.store.lock().db().app(name)?)
    }

    /// Whether an app of this name exists (a store failure counts as no).
    pub fn exists(&self, name: &str) -> bool {
        self.store.lock().db().app_exists(name).unwrap_or(false)
    }

    /// Apps, optionally of one org, or only the app `only`.
    pub fn list(&self, org: Option<&str>, only: Option<&str>) -> Result<Vec<AppSummary>, AppError> {
        Ok(self.store.lock().db().list_apps(org, only)?)
    }

    /// Deletes an app without machines, and revokes its app tokens at once.
    pub fn delete(&self, name: &str) -> Result<(), AppError> {
        let mut inner = self.store.lock();
        let ((), revision) = inner.write(|db, _| db.delete_app(name).map_err(AppError::from))?;
        // Reloaded under the store lock, so no token of the app outlives this call.
        self.tokens.reload_with(inner.db())?;
        drop(inner);
        self.store.notify(revision);
        Ok(())
    }
}

impl Apps {
    /// Creates an organisation (its slug must be free).
    pub fn create_org(&self, slug: &str, name: Option<&str>) -> Result<OrgInfo, AppError> {
        if !valid_slug(slug) {
            return Err(AppError::InvalidOrg(slug.to_owned()));
        }
        let name = name.filter(|n| !n.is_empty()).unwrap_or(slug);
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(AppError::InvalidOrgName);
        }
        let mut inner = self.store.lock();
        inner.transaction(|db| db.insert_org(slug, name).map_err(AppError::from))?;
        Ok(OrgInfo {
            slug: slug.to_owned(),
            name: name.to_owned(),
            app_count: 0,
        })
    }

    /// Organisations (only `only` when given).
    pub fn list_orgs(&self, only: Option<&str>) -> Result<Vec<OrgInfo>, AppError> {
        Ok(self.store.lock().db().list_orgs(only)?)
    }

    /// Deletes an organisation that has no apps, and revokes its org tokens at once.
    pub fn delete_org(&self, slug: &str) -> Result<(), AppError> {
        if slug == DEFAULT_ORG {
            return Err(AppError::DefaultOrg(slug.to_owned()));
        }
        let mut inner = self.store.lock();
        inner.transaction(|db| db.delete_org(slug).map_err(AppError::from))?;
        self.tokens.reload_with(inner.db())?;
        Ok(())
    }

    /// The names of an organisation's apps.
    pub fn org_app_names(&self, org: &str) -> Result<Vec<String>, AppError> {
        Ok(self
            .store
            .lock()
            .db()
            .list_apps(Some(org), None)?
            .into_iter()
            .map(|a| a.name)
            .collect())
    }
}

fn validate_app_name(name: &str) -> Result<(), AppError> {
    if valid_slug(name) {
        Ok(())
    } else {
        Err(AppError::InvalidName(name.to_owned()))
    }
}

/// 1-63 lowercase letters, digits and inner dashes (app names and org slugs).
fn valid_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
