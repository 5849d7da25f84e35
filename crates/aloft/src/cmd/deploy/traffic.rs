//! Moving traffic during a deploy: a machine is cordoned before it is stopped or replaced, and
//! uncordoned once its new instance is healthy.
//!
//! Edges route only to machines that are `started`, healthy and not cordoned, by the newest
//! route table the control plane pushed them (tables are revision-numbered and an edge never
//! goes back). So after a cordon the deployer reads the route table until it shows the cordon
//! (the revision moved past it), then gives the requests already sent to the machine the drain
//! time to finish before the machine is stopped. A machine started by the deploy is cordoned
//! before it starts, so no edge sends it a request before it is healthy.

use std::time::{Duration, Instant};

use aloft_api::routes::RoutesClient;
use aloft_api::Client;
use anyhow::Context as _;

use super::health::POLL;
use super::Plan;
use crate::context;

/// How long a cordoned machine keeps its in-flight requests before it is stopped.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(1);
/// How long the route table may take to show a cordon.
const TABLE_DEADLINE: Duration = Duration::from_secs(30);

/// Cordons and uncordons the machines of one app and confirms them in the route table.
pub(super) struct Traffic {
    app: String,
    drain: Duration,
    /// `None` when the token may not read the route table (an app token).
    routes: Option<RoutesClient>,
}

impl Traffic {
    /// Checks that the route table can be read with this CLI's token.
    pub async fn connect(plan: &Plan) -> anyhow::Result<Traffic> {
        let (url, token) = context::api_url_and_token()?;
        let client = RoutesClient::new(&url, token)?;
        let routes = match client.routes().await {
            Ok(_) => Some(client),
            Err(e) if e.status() == Some(403) => {
                eprintln!(
                    "warning: this token cannot read the route table; each cordon is followed by \
                     the drain time ({}s) without being confirmed in the table",
                    plan.drain.as_secs_f64()
                );
                None
            }
            Err(e) => return Err(e).context("Cannot read the route table"),
        };
        Ok(Traffic {
            app: plan.app.clone(),
            drain: plan.drain,
            routes,
        })
    }

    /// Cordons a machine that does not serve yet (created, not started): no wait.
    pub async fn hold(&self, api: &Client, id: &str) -> anyhow::Result<()> {
        api.cordon_machine(&self.app, id)
            .await
            .with_context(|| format!("Cannot cordon machine {id}"))?;
        Ok(())
    }

    /// Takes traffic away from serving machines: cordons them, waits until the route table
    /// shows it, then waits the drain time for requests in flight.
    pub async fn divert(&self, api: &Client, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            self.hold(api, id).await?;
        }
        self.wait_table(ids, true).await?;
        tokio::time::sleep(self.drain).await;
        Ok(())
    }

    /// Gives traffic to healthy machines: uncordons them and waits until the route table
    /// shows them routable.
    pub async fn admit(&self, api: &Client, ids: &[String]) -> anyhow::Result<()> {
        for id in ids {
            api.uncordon_machine(&self.app, id)
                .await
                .with_context(|| format!("Cannot uncordon machine {id}"))?;
        }
        self.wait_table(ids, false).await
    }

    /// Waits until every machine of `ids` has `cordoned` as given in the route table (a
    /// machine missing from the table gets no traffic, which is what a cordon wants).
    async fn wait_table(&self, ids: &[String], cordoned: bool) -> anyhow::Result<()> {
        let Some(client) = &self.routes else {
            return Ok(());
        };
        let deadline = Instant::now() + TABLE_DEADLINE;
        loop {
            let table = client
                .routes()
                .await
                .context("Cannot read the route table")?;
            let app = table.apps.iter().find(|a| a.app == self.app);
            let pending = ids.iter().find(|id| {
                match app.and_then(|a| a.machines.iter().find(|m| &&m.id == id)) {
                    Some(m) => m.cordoned != cordoned,
                    None => !cordoned,
                }
            });
            let Some(id) = pending else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let want = if cordoned { "cordoned" } else { "routable" };
                anyhow::bail!(
                    "the route table (revision {}) does not show machine {id} {want} after {}s",
                    table.revision,
                    TABLE_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
