//! ACME certificates for custom hostnames (`aloft certs add HOST` on a server started with
//! `--acme-directory`). The control plane is the one ACME client of the cluster: one account
//! per directory, one order per hostname. It publishes each pending challenge to every edge
//! (`GET /v1/edge/acme`, a long poll on which each edge also acknowledges what it installed),
//! tells the CA the challenge is ready once the live edges answer it, and stores the issued
//! certificate with its key encrypted at rest (ChaCha20-Poly1305 under the data directory's
//! `secrets.key`). Edges get issued certificates in their TLS bundle (`GET /v1/edge/tls`).
//!
//! Challenges: HTTP-01 (edges answer `/.well-known/acme-challenge/TOKEN` on their HTTP port)
//! and TLS-ALPN-01 (edges answer ALPN `acme-tls/1` handshakes on their HTTPS port). By default
//! TLS-ALPN-01 is used when every live edge serves HTTPS, HTTP-01 otherwise. A periodic task
//! renews certificates with fewer than 30 days left.

mod edges;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::certs::{
    AcmeChallenge, AcmeChallengeType, CertificateInfo, CertificateStatus, EdgeAcme,
    OrderCertificateRequest,
};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rusqlite::{params, OptionalExtension as _};

use edges::locked;
pub(crate) use edges::AcmeState;
use store::{
    account_aad, data_key, key_aad, open, parse_issued, parse_status, schema, seal, unix_now,
    Issued,
};
pub(crate) use store::{edge_certificates, list, remove};

use crate::api::ApiError;
use crate::control::{shutting_down, Control};
use crate::store::now_rfc3339;

/// Renew when fewer than this many days of validity remain.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// How often the renewal task looks for certificates to renew.
const RENEW_EVERY: Duration = Duration::from_secs(3600);
/// A failed renewal is tried again after this long.
const RETRY_FAILED_AFTER_SECS: i64 = 3600;
/// How long an order waits for the live edges to install its challenge.
const EDGE_WAIT: Duration = Duration::from_secs(20);
/// How long an edge's `GET /v1/edge/acme` waits for a change.
const EDGE_POLL: Duration = Duration::from_secs(25);
/// How long the CA has to validate a challenge and to issue.
const CA_WAIT: Duration = Duration::from_secs(90);

/// How the server talks to its ACME CA (`aloft server --acme-directory …`).
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address for the account.
    pub email: Option<String>,
    /// An extra root (PEM file) the directory's HTTPS certificate is checked against, instead
    /// of the system's roots.
    pub ca_root: Option<PathBuf>,
    /// The challenge to solve; `None` picks TLS-ALPN-01 when every live edge serves HTTPS.
    pub challenge: Option<AcmeChallengeType>,
}

/// Why an ACME order failed (the message is what `aloft certs show` prints).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("Cannot use the ACME CA root {0}")]
    CaRoot(PathBuf, #[source] instant_acme::Error),
    #[error("Cannot set up an HTTP client for the ACME CA")]
    Client(#[source] instant_acme::Error),
    #[error("The ACME CA at {0} refused or could not be reached for the account")]
    Account(String, #[source] instant_acme::Error),
    #[error("The ACME order for {host} failed")]
    Order {
        host: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("The ACME CA did not validate {host}: {detail}")]
    Invalid { host: String, detail: String },
    #[error("The ACME CA offers no HTTP-01 or TLS-ALPN-01 challenge for {0}")]
    NoChallenge(String),
    #[error("Cannot make a key and CSR for {host}")]
    Csr {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("The certificate the ACME CA issued for {0} cannot be parsed")]
    Parse(String),
    #[error("Cannot store the ACME account or certificate: {0}")]
    Store(String),
}

impl AcmeError {
    /// The message with its sources, as stored with a failed order.
    fn chain(&self) -> String {
        aloft_api::error::error_chain(self)
    }
}

impl From<ApiError> for AcmeError {
    fn from(e: ApiError) -> Self {
        AcmeError::Store(e.to_string())
    }
}

/// Whether a certificate should be ordered again now: a pending order nobody runs (the server
/// restarted mid-order), an issued certificate with less than 30 days left, or a failed renewal
/// of a certificate still served, an hour after it failed.
pub fn renewal_due(
    status: CertificateStatus,
    not_after: Option<i64>,
    updated_at: i64,
    now: i64,
    running: bool,
) -> bool {
    if running {
        return false;
    }
    let expiring = not_after.is_some_and(|t| t - now < RENEW_BEFORE_DAYS * 86_400);
    match status {
        CertificateStatus::Pending => true,
        CertificateStatus::Issued => expiring,
        CertificateStatus::Failed => expiring && now - updated_at >= RETRY_FAILED_AFTER_SECS,
    }
}

fn to_acme(kind: AcmeChallengeType) -> ChallengeType {
    match kind {
        AcmeChallengeType::Http01 => ChallengeType::Http01,
        AcmeChallengeType::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Removes a published challenge when an order ends, however it ends.
struct Unpublish<'a> {
    state: &'a AcmeState,
    host: String,
}

impl Drop for Unpublish<'_> {
    fn drop(&mut self) {
        self.state.unpublish(&self.host);
    }
}

/// Ends the in-flight mark of a hostname.
struct Running {
    control: Arc<Control>,
    host: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        locked(&self.control.acme.inflight).remove(&self.host);
    }
}

impl Control {
    /// Turns ACME on (once, before serving).
    pub fn configure_acme(&self, options: AcmeOptions) {
        // Either provider may be compiled in; the ACME client uses the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = self.acme.options.set(options);
    }

    /// Whether the server has an ACME directory.
    pub fn acme_enabled(&self) -> bool {
        self.acme.options.get().is_some()
    }

    /// `POST /v1/certs/acme`: records a pending certificate for the hostname and starts its
    /// order (unless one is running), replacing a user certificate of the same name.
    pub fn order_certificate(
        self: &Arc<Self>,
        req: &OrderCertificateRequest,
    ) -> Result<CertificateInfo, ApiError> {
        if !self.acme_enabled() {
            return Err(ApiError::BadRequest(
                "This server has no ACME directory (start it with --acme-directory URL); \
                 give --cert and --key to add your own certificate"
                    .to_owned(),
            ));
        }
        let host = crate::certs::normalize_hostname(&req.hostname)?;
        if host.starts_with("*.") {
            return Err(ApiError::BadRequest(format!(
                "{host} is a wildcard: ACME needs a DNS-01 challenge for it, which Aloft does \
                 not solve; add the certificate with --cert and --key"
            )));
        }
        let revision = {
            let mut inner = self.lock();
            schema(&inner.conn)?;
            inner.conn.execute(crate::certs::SCHEMA, [])?;
            crate::certs::claim(&inner, &host, &req.app)?;
            let tx = inner.conn.transaction()?;
            tx.execute("DELETE FROM edge_certificates WHERE hostname = ?1", [&host])?;
            tx.execute(
                "INSERT INTO acme_certificates (hostname, status, challenge, created_at, updated_at, app)
                 VALUES (?1, 'pending', ?2, ?3, ?4, ?5)
                 ON CONFLICT(hostname) DO UPDATE SET status = 'pending', challenge = ?2,
                   error = NULL, updated_at = ?4, app = ?5",
                params![
                    host,
                    req.challenge.map(AcmeChallengeType::as_str),
                    now_rfc3339(),
                    unix_now(),
                    req.app
                ],
            )?;
            let revision = crate::store::bump_revision(&tx)?;
            tx.commit()?;
            inner.revision = revision;
            revision
        };
        // The hostname routes to its app from now on (edges learn it with the route table).
        self.notify(revision);
        self.start_order(&host, req.challenge);
        self.acme_certificate(&host)?
            .ok_or_else(|| ApiError::Internal(format!("The order for {host} was not recorded")))
    }

    /// The ACME certificate of `host`, if there is one.
    pub fn acme_certificate(&self, host: &str) -> Result<Option<CertificateInfo>, ApiError> {
        let inner = self.lock();
        Ok(list(&inner.conn)?.into_iter().find(|c| c.hostname == host))
    }

    /// Starts an order for `host` in the background unless one is running.
    fn start_order(self: &Arc<Self>, host: &str, challenge: Option<AcmeChallengeType>) {
        if !locked(&self.acme.inflight).insert(host.to_owned()) {
            return;
        }
        let running = Running {
            control: self.clone(),
            host: host.to_owned(),
        };
        tokio::spawn(async move {
            let control = running.control.clone();
            let host = running.host.clone();
            let result = control.run_order(&host, challenge).await;
            let stored = match result {
                Ok(issued) => {
                    tracing::info!(%host, "ACME certificate issued");
                    control.store_issued(&host, &issued)
                }
                Err(e) => {
                    let message = e.chain();
                    tracing::error!(%host, error = %message, "ACME order failed");
                    control.store_failed(&host, &message)
                }
            };
            if let Err(e) = stored {
                tracing::error!(%host, error = %e, "cannot record the ACME order's result");
            }
            drop(running);
        });
    }

    fn store_issued(&self, host: &str, issued: &Issued) -> Result<(), ApiError> {
        let inner = self.lock();
        let key = data_key(&inner.conn)?;
        let (nonce, sealed) = seal(&key, &key_aad(host), issued.key.as_bytes());
        // A certificate removed while its order ran stays removed.
        inner.conn.execute(
            "UPDATE acme_certificates SET status = 'issued', error = NULL, certificate = ?2,
               key_nonce = ?3, key_sealed = ?4, fingerprint = ?5, not_after = ?6, updated_at = ?7
             WHERE hostname = ?1",
            params![
                host,
                issued.chain,
                nonce,
                sealed,
                issued.fingerprint,
                issued.not_after,
                unix_now()
            ],
        )?;
        Ok(())
    }

    fn store_failed(&self, host: &str, message: &str) -> Result<(), ApiError> {
        let inner = self.lock();
        inner.conn.execute(
            "UPDATE acme_certificates SET status = 'failed', error = ?2, updated_at = ?3
             WHERE hostname = ?1",
            params![host, message, unix_now()],
        )?;
        Ok(())
    }

    fn record_challenge(&self, host: &str, kind: AcmeChallengeType) -> Result<(), ApiError> {
        let inner = self.lock();
        inner.conn.execute(
            "UPDATE acme_certificates SET challenge = ?2 WHERE hostname = ?1",
            params![host, kind.as_str()],
        )?;
        Ok(())
    }

    /// The account for the configured directory: restored from the store, or created there
    /// and stored (encrypted).
    async fn acme_account(&self) -> Result<Account, AcmeError> {
        let Some(opts) = self.acme.options.get() else {
            return Err(AcmeError::Store("ACME is not configured".to_owned()));
        };
        let mut slot = self.acme.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let builder = || match &opts.ca_root {
            Some(path) => {
                Account::builder_with_root(path).map_err(|e| AcmeError::CaRoot(path.clone(), e))
            }
            None => Account::builder().map_err(AcmeError::Client),
        };
        let stored = {
            let inner = self.lock();
            schema(&inner.conn)?;
            let row: Option<(Vec<u8>, Vec<u8>)> = inner
                .conn
                .query_row(
                    "SELECT nonce, sealed FROM acme_accounts WHERE directory = ?1",
                    [&opts.directory],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(ApiError::from)?;
            match row {
                Some((nonce, sealed)) => {
                    let key = data_key(&inner.conn)?;
                    Some(open(&key, &account_aad(&opts.directory), &nonce, &sealed)?)
                }
                None => None,
            }
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
                    .map_err(|e| AcmeError::Store(e.to_string()))?;
                let inner = self.lock();
                let key = data_key(&inner.conn)?;
                let (nonce, sealed) = seal(&key, &account_aad(&opts.directory), json.as_bytes());
                inner
                    .conn
                    .execute(
                        "INSERT OR REPLACE INTO acme_accounts (directory, nonce, sealed)
                         VALUES (?1, ?2, ?3)",
                        params![opts.directory, nonce, sealed],
                    )
                    .map_err(ApiError::from)?;
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
        let fixed = asked.or_else(|| self.acme.options.get().and_then(|o| o.challenge));
        let preferred = fixed.unwrap_or_else(|| {
            let (live, all_https, _) = self.acme.edges_state(0);
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
    async fn run_order(
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
            state: &self.acme,
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
                self.record_challenge(host, kind)?;
                let mut challenge = authz
                    .challenge(to_acme(kind))
                    .ok_or_else(|| AcmeError::NoChallenge(host.to_owned()))?;
                let version = self.acme.publish(AcmeChallenge {
                    kind,
                    hostname: host.to_owned(),
                    token: challenge.token.clone(),
                    key_authorization: challenge.key_authorization().as_str().to_owned(),
                });
                if !self.acme.wait_for_edges(version, EDGE_WAIT).await {
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

    /// `GET /v1/edge/acme`: records what the edge has installed, then answers with the
    /// challenges once they differ from `seen` (or after the poll wait).
    pub async fn edge_acme(&self, edge: &str, https: bool, seen: Option<u64>) -> EdgeAcme {
        self.acme.record(edge, https, seen);
        let mut changed = self.acme.version.subscribe();
        if seen == Some(*changed.borrow_and_update()) {
            let mut shutdown = self.shutdown_signal();
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(EDGE_POLL) => {}
                _ = shutting_down(&mut shutdown) => {}
            }
        }
        self.acme.snapshot()
    }

    /// Starts an order for every certificate [`renewal_due`] says is due.
    pub fn renew_due(self: &Arc<Self>) -> Result<usize, ApiError> {
        let rows: Vec<(String, String, Option<i64>, i64)> = {
            let inner = self.lock();
            schema(&inner.conn)?;
            let mut stmt = inner
                .conn
                .prepare("SELECT hostname, status, not_after, updated_at FROM acme_certificates")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let now = unix_now();
        let mut started = 0;
        for (host, status, not_after, updated_at) in rows {
            let running = locked(&self.acme.inflight).contains(&host);
            if renewal_due(parse_status(&status), not_after, updated_at, now, running) {
                tracing::info!(%host, "renewing the ACME certificate");
                // The server's choice: the edges may have changed since the last order.
                self.start_order(&host, None);
                started += 1;
            }
        }
        Ok(started)
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

/// Renews due certificates now and then every hour, until the server stops.
pub async fn renew_loop(control: Arc<Control>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = control.renew_due() {
            tracing::warn!(error = %e, "cannot look for ACME certificates to renew");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn certificates_renew_inside_the_last_thirty_days() {
        let now = 1_800_000_000;
        let issued = CertificateStatus::Issued;
        assert!(!renewal_due(
            issued,
            Some(now + 60 * DAY),
            now - DAY,
            now,
            false
        ));
        assert!(!renewal_due(
            issued,
            Some(now + 31 * DAY),
            now - DAY,
            now,
            false
        ));
        assert!(renewal_due(
            issued,
            Some(now + 29 * DAY),
            now - DAY,
            now,
            false
        ));
        assert!(renewal_due(issued, Some(now - DAY), now - DAY, now, false));
        // Never twice at once.
        assert!(!renewal_due(issued, Some(now + DAY), now - DAY, now, true));
    }

    #[test]
    fn failed_renewals_wait_an_hour_and_new_failures_are_left_alone() {
        let now = 1_800_000_000;
        let failed = CertificateStatus::Failed;
        assert!(!renewal_due(failed, Some(now + DAY), now - 60, now, false));
        assert!(renewal_due(failed, Some(now + DAY), now - 3600, now, false));
        // A first order that failed has no certificate to keep alive: the user retries it.
        assert!(!renewal_due(failed, None, now - 10 * DAY, now, false));
        assert!(!renewal_due(
            failed,
            Some(now + 60 * DAY),
            now - 10 * DAY,
            now,
            false
        ));
    }

    #[test]
    fn orphaned_pending_orders_are_restarted() {
        let now = 1_800_000_000;
        assert!(renewal_due(
            CertificateStatus::Pending,
            None,
            now,
            now,
            false
        ));
        assert!(!renewal_due(
            CertificateStatus::Pending,
            None,
            now,
            now,
            true
        ));
    }
}
