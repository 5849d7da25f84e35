//! Apps and organisations: creating, reading, listing and deleting apps. Deleting an app
//! revokes its app tokens at once.
//!
//! Organisations are one default org today (`personal`); real orgs with members are meant to
//! grow here.

use std::sync::Arc;

use aloft_api::{App, AppSummary};

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

fn validate_app_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AppError::InvalidName(name.to_owned()))
    }
}
