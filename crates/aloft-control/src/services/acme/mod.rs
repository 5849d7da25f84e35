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
mod issued;
mod order;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::certs::{
    AcmeChallengeType, CertificateInfo, CertificateStatus, EdgeAcme, OrderCertificateRequest,
};
use edges::{locked, AcmeState};
use instant_acme::ChallengeType;
use issued::Issued;

use super::certs::{claim, key_aad, normalize_hostname, CertError, Certs};
use crate::core::keys::{self, KeyError};
use crate::core::store::IssuedRow;
use crate::core::{shutting_down, Store, StoreError};

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
    #[error("This server has no ACME directory (start it with --acme-directory URL); give --cert and --key to add your own certificate")]
    NotConfigured,
    #[error("{0} is a wildcard: ACME needs a DNS-01 challenge for it, which Aloft does not solve; add the certificate with --cert and --key")]
    Wildcard(String),
    #[error("The stored ACME account for {0} does not decrypt with the current key")]
    Sealed(String),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("Cannot store the ACME account or certificate")]
    Store(#[from] StoreError),
}

impl AcmeError {
    /// The message with its sources, as stored with a failed order.
    fn chain(&self) -> String {
        aloft_api::error::error_chain(self)
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
    acme: Arc<Acme>,
    host: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        locked(&self.acme.state.inflight).remove(&self.host);
    }
}

/// The ACME service: the one ACME client of the cluster, and what it publishes to edges.
pub struct Acme {
    store: Arc<Store>,
    state: AcmeState,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").finish_non_exhaustive()
    }
}

impl Acme {
    pub fn new(store: Arc<Store>) -> Acme {
        Acme {
            store,
            state: AcmeState::default(),
        }
    }

    /// Turns ACME on (once, before serving).
    pub fn configure(&self, options: AcmeOptions) {
        // Either provider may be compiled in; the ACME client uses the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = self.state.options.set(options);
    }

    /// Whether the server has an ACME directory.
    pub fn enabled(&self) -> bool {
        self.state.options.get().is_some()
    }

    /// Records a pending certificate for the hostname of an app and starts its order (unless
    /// one is running), replacing a user certificate of the same name. A custom name routes to
    /// the app once DNS proves its control or the CA validated it for the app (issued).
    pub async fn order(
        self: &Arc<Self>,
        certs: &Certs,
        req: &OrderCertificateRequest,
    ) -> Result<CertificateInfo, AcmeError> {
        if !self.enabled() {
            return Err(AcmeError::NotConfigured);
        }
        let host = normalize_hostname(&req.hostname)?;
        if host.starts_with("*.") {
            return Err(AcmeError::Wildcard(host));
        }
        let (proof, _) = certs.dns_proof(&host, &req.app).await;
        let (info, revision) = {
            let mut inner = self.store.lock();
            let verified = claim(inner.db(), &host, &req.app, certs.domain(), &proof)?.verified;
            let challenge = req.challenge.map(AcmeChallengeType::as_str);
            let ((), revision) = inner.write(|db, _| {
                db.put_acme_order(&host, challenge, &req.app, verified)
                    .map_err(AcmeError::from)
            })?;
            let info = inner
                .db()
                .acme_certificates()?
                .into_iter()
                .find(|c| c.hostname == host);
            (info, revision)
        };
        // A proven hostname routes to its app from now on (edges learn it with the route table).
        self.store.notify(revision);
        self.start_order(&host, req.challenge);
        info.ok_or_else(|| {
            StoreError::encoding(
                "ACME order",
                format!("the order for {host} was not recorded"),
            )
            .into()
        })
    }

    /// Starts an order for `host` in the background unless one is running.
    fn start_order(self: &Arc<Self>, host: &str, challenge: Option<AcmeChallengeType>) {
        if !locked(&self.state.inflight).insert(host.to_owned()) {
            return;
        }
        let running = Running {
            acme: self.clone(),
            host: host.to_owned(),
        };
        tokio::spawn(async move {
            let acme = running.acme.clone();
            let host = running.host.clone();
            let result = acme.run_order(&host, challenge).await;
            let stored = match result {
                Ok(issued) => {
                    tracing::info!(%host, "ACME certificate issued");
                    acme.store_issued(&host, &issued)
                }
                Err(e) => {
                    let message = e.chain();
                    tracing::error!(%host, error = %message, "ACME order failed");
                    acme.store_failed(&host, &message)
                }
            };
            if let Err(e) = stored {
                tracing::error!(%host, error = %e, "cannot record the ACME order's result");
            }
            drop(running);
        });
    }

    fn store_issued(&self, host: &str, issued: &Issued) -> Result<(), AcmeError> {
        let key = keys::load_or_create_key(&keys::key_path(self.store.data_dir()))?;
        let (key_nonce, key_sealed) =
            keys::seal(&key, key_aad(host).as_bytes(), issued.key.as_bytes());
        let row = IssuedRow {
            hostname: host.to_owned(),
            chain: issued.chain.clone(),
            key_nonce,
            key_sealed,
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
        };
        // The validation proved the name for its app: it routes there from this revision on.
        let ((), revision) = self
            .store
            .lock()
            .write(|db, _| db.set_acme_issued(&row).map_err(AcmeError::from))?;
        self.store.notify(revision);
        Ok(())
    }

    fn store_failed(&self, host: &str, message: &str) -> Result<(), AcmeError> {
        self.store.lock().db().set_acme_failed(host, message)?;
        Ok(())
    }

    /// An edge's long poll: records what the edge has installed, then answers with the
    /// challenges once they differ from `seen` (or after the poll wait).
    pub async fn edge_acme(&self, edge: &str, https: bool, seen: Option<u64>) -> EdgeAcme {
        self.state.record(edge, https, seen);
        let mut changed = self.state.version.subscribe();
        if seen == Some(*changed.borrow_and_update()) {
            let mut shutdown = self.store.revisions().shutdown_signal();
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(EDGE_POLL) => {}
                _ = shutting_down(&mut shutdown) => {}
            }
        }
        self.state.snapshot()
    }

    /// Starts an order for every certificate [`renewal_due`] says is due.
    pub fn renew_due(self: &Arc<Self>) -> Result<usize, AcmeError> {
        let rows = self.store.lock().db().acme_renewals()?;
        let now = crate::core::store::unix_now();
        let mut started = 0;
        for row in rows {
            let host = row.hostname;
            let running = locked(&self.state.inflight).contains(&host);
            if renewal_due(row.status, row.not_after, row.updated_at, now, running) {
                tracing::info!(%host, "renewing the ACME certificate");
                // The server's choice: the edges may have changed since the last order.
                self.start_order(&host, None);
                started += 1;
            }
        }
        Ok(started)
    }
}

/// Renews due certificates now and then every hour, until the server stops.
pub async fn renew_loop(acme: Arc<Acme>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = acme.renew_due() {
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
