//! When a machine counts as healthy during a deploy, and waiting for one to be gone.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aloft_api::{Client, Machine, MachineConfig, MachineState};

/// How long a machine without checks must stay up, without exiting, to count as healthy.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
pub(super) const POLL: Duration = Duration::from_millis(200);

/// Waits until the machine runs `updated`'s instance and is healthy: its checks pass, or,
/// without checks, it stays up for [`DEFAULT_SETTLE`] without exiting.
pub(super) async fn wait_healthy(
    api: &Client,
    app: &str,
    updated: &Machine,
    timeout: Duration,
) -> anyhow::Result<()> {
    let id = &updated.id;
    let instance = &updated.instance_id;
    // Exit events the update's answer did not list belong to the new instance.
    let known: HashSet<&str> = updated.events.iter().map(|e| e.id.as_str()).collect();
    let since = updated
        .events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + timeout;
    let mut started_at: Option<Instant> = None;
    loop {
        let m = api.get_machine(app, id).await?;
        if &m.instance_id != instance {
            anyhow::bail!("machine {id} was changed by someone else during the deploy");
        }
        if let Some(exit) = m
            .events
            .iter()
            .find(|e| e.kind == "exit" && e.timestamp >= since && !known.contains(e.id.as_str()))
        {
            let why = exit
                .request
                .as_ref()
                .and_then(|r| r.get("message").and_then(|v| v.as_str()))
                .map(str::to_owned)
                .unwrap_or_else(|| exit.status.clone());
            anyhow::bail!("machine {id} exited after starting ({why})");
        }
        match m.state {
            MachineState::Started => {
                let since_start = *started_at.get_or_insert_with(Instant::now);
                let want = checks_in(&m.config);
                if want == 0 {
                    if since_start.elapsed() >= DEFAULT_SETTLE {
                        return Ok(());
                    }
                } else if m.checks.len() >= want && m.checks.iter().all(|c| c.status == "passing") {
                    return Ok(());
                }
            }
            MachineState::Failed | MachineState::Stopped | MachineState::Destroyed => {
                anyhow::bail!("machine {id} is {} instead of started", m.state);
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            if let Some(c) = m.checks.iter().find(|c| c.status != "passing") {
                anyhow::bail!(
                    "machine {id} check {} is {} after {}s: {}",
                    c.name,
                    c.status,
                    timeout.as_secs(),
                    c.output.trim()
                );
            }
            if m.state == MachineState::Started {
                eprintln!("warning: machine {id} reported no check results; counting it healthy");
                return Ok(());
            }
            anyhow::bail!(
                "machine {id} is {} after {}s, not started",
                m.state,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for every machine of `machines` to be healthy, all at once; the first failure wins.
pub(super) async fn wait_all_healthy(
    api: &Client,
    app: &str,
    machines: &[Machine],
    timeout: Duration,
) -> anyhow::Result<()> {
    let waits = machines.iter().map(|m| wait_healthy(api, app, m, timeout));
    futures::future::try_join_all(waits).await.map(drop)
}

/// Waits until the machine is destroyed (or gone from the API).
pub(super) async fn wait_destroyed(
    api: &Client,
    app: &str,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_machine(app, id).await {
            Ok(m) if m.state == MachineState::Destroyed => return Ok(()),
            Ok(m) if Instant::now() >= deadline => anyhow::bail!(
                "machine {id} is {} {}s after it was destroyed",
                m.state,
                timeout.as_secs()
            ),
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many checks a config asks the agent to run (top-level and service checks).
pub(super) fn checks_in(config: &MachineConfig) -> usize {
    let top = config.checks.as_ref().map_or(0, BTreeMap::len);
    let services: usize = config
        .services
        .iter()
        .flatten()
        .map(|s| s.checks.as_ref().map_or(0, Vec::len))
        .sum();
    top + services
}
