//! One ACME order, from the account to the issued certificate.

use std::time::Duration;

use aloft_api::certs::{AcmeChallenge, AcmeChallengeType};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::issued::{account_aad, parse_issued, Issued};
use super::{to_acme, Acme, AcmeError, Unpublish, CA_WAIT, EDGE_WAIT};
use crate::core::{keys, StoreError};

impl Acme {
    /// The account for the configured directory: restored from the store, or created there
    /// and stored (encrypted).
    async fn acme_account(&self) -> Result<Account, AcmeError> {
        let Some(opts) = self.state.options.get() else {
            return Err(AcmeError::NotConfigured);
        };
        let mut slot = self.state.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let builder = || match &opts.ca_root {
            Some(path) => {
                Account::builder_with_root(path).map_err(|e| AcmeError::CaRoot(path.clone(), e))
            }
            None => Account::builder().map_err(AcmeError::Client),
        };
        let key_path = keys::key_path(self.store.data_dir());
        let row = self.store.lock().db().acme_account(&opts.directory)?;
        let stored = match row {
            Some((nonce, sealed)) => {
                let key = keys::load_or_create_key(&key_path)?;
                let aad = account_aad(&opts.directory);
                let plain = keys::open(&key, aad.as_bytes(), &nonce, &sealed)
                    .and_then(|p| String::from_utf8(p).ok())
                    .ok_or_else(|| AcmeError::Sealed(opts.directory.clone()))?;
                Some(plain)
            }
            None => None,
        };
        let credentials = stored.and_then(|json| serde_json::from_str(&json).ok());
        let account = match credentials {
            Some(credentials) => builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::Account(opts.directory.clone(), e))?,
            None => {
                let contact: Vec<String> =
                    opts.email.iter().map(|e| format!("mailto:{e}")).collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder()?
                    .create(&new, opts.directory.clone(), None)
                    .await
                    .map_err(|e| AcmeError::Account(opts.directory.clone(), e))?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| StoreError::encoding("ACME account", e))?;
                let key = keys::load_or_create_key(&key_path)?;
                let aad = account_aad(&opts.directory);
                let (nonce, sealed) = keys::seal(&key, aad.as_bytes(), json.as_bytes());
                self.store
                    .lock()
                    .db()
                    .put_acme_account(&opts.directory, &nonce, &sealed)?;
                tracing::info!(directory = %opts.directory, "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The challenge to solve among those the CA offers.
    fn pick_challenge(
        &self,
        asked: Option<AcmeChallengeType>,
        offered: &[ChallengeType],
    ) -> Option<AcmeChallengeType> {
        let fixed = asked.or_else(|| self.state.options.get().and_then(|o| o.challenge));
        let preferred = fixed.unwrap_or_else(|| {
            let (live, all_https, _) = self.state.edges_state(0);
            if live > 0 && all_https {
                AcmeChallengeType::TlsAlpn01
            } else {
                AcmeChallengeType::Http01
            }
        });
        let other = match preferred {
            AcmeChallengeType::Http01 => AcmeChallengeType::TlsAlpn01,
            AcmeChallengeType::TlsAlpn01 => AcmeChallengeType::Http01,
        };
        let offers = |k: AcmeChallengeType| offered.contains(&to_acme(k));
        if offers(preferred) {
            Some(preferred)
        } else if fixed.is_none() && offers(other) {
            Some(other)
        } else {
            None
        }
    }

    /// One order for `host`, from new order to issued certificate.
    pub(super) async fn run_order(
        &self,
        host: &str,
        asked: Option<AcmeChallengeType>,
    ) -> Result<Issued, AcmeError> {
        let order_err = |source| AcmeError::Order {
            host: host.to_owned(),
            source,
        };
        let account = self.acme_account().await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(order_err)?;
        let _unpublish = Unpublish {
            state: &self.state,
            host: host.to_owned(),
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(order_err)?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Invalid {
                            host: host.to_owned(),
                            detail: format!("its authorization is {other:?}"),
                        })
                    }
                }
                let offered: Vec<ChallengeType> =
                    authz.challenges.iter().map(|c| c.r#type.clone()).collect();
                let kind = self
                    .pick_challenge(asked, &offered)
                    .ok_or_else(|| AcmeError::NoChallenge(host.to_owned()))?;
                self.store
                    .lock()
                    .db()
                    .set_acme_challenge(host, kind.as_str())?;
                let mut challenge = authz
                    .challenge(to_acme(kind))
                    .ok_or_else(|| AcmeError::NoChallenge(host.to_owned()))?;
                let version = self.state.publish(AcmeChallenge {
                    kind,
                    hostname: host.to_owned(),
                    token: challenge.token.clone(),
                    key_authorization: challenge.key_authorization().as_str().to_owned(),
                });
                if !self.state.wait_for_edges(version, EDGE_WAIT).await {
                    tracing::warn!(%host, "not every edge confirmed the ACME challenge in time");
                }
                challenge.set_ready().await.map_err(order_err)?;
            }
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(CA_WAIT);
        let ready = order.poll_ready(&retries).await;
        match ready {
            Ok(OrderStatus::Ready) => {}
            other => {
                let detail = match challenge_error(&mut order).await {
                    Some(detail) => detail,
                    None => match other {
                        Ok(status) => format!("the order is {status:?}"),
                        Err(e) => e.to_string(),
                    },
                };
                return Err(AcmeError::Invalid {
                    host: host.to_owned(),
                    detail,
                });
            }
        }
        let csr_err = |source| AcmeError::Csr {
            host: host.to_owned(),
            source,
        };
        let key = rcgen::KeyPair::generate().map_err(csr_err)?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(csr_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(csr_err)?;
        order.finalize_csr(csr.der()).await.map_err(order_err)?;
        let chain = order.poll_certificate(&retries).await.map_err(order_err)?;
        parse_issued(host, chain, key.serialize_pem())
    }
}

/// The CA's reason a challenge failed, if it gave one.
async fn challenge_error(order: &mut instant_acme::Order) -> Option<String> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(problem) = &c.error {
                return Some(match &problem.detail {
                    Some(d) => d.clone(),
                    None => problem.to_string(),
                });
            }
        }
    }
    None
}
