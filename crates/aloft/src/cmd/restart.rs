//! `aloft apps restart`: a rolling restart. Each started machine is restarted in turn and,
//! unless told not to, must be healthy again (as a deploy judges it) before the next one goes,
//! so the app keeps serving throughout.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aloft_api::{Client, Machine, MachineState};

use super::deploy::{self, Progress, Step};

/// How often a restarting machine is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Restarts the app's started machines one by one; `health` waits for each to be healthy.
pub async fn rolling(
    api: &Client,
    app: &str,
    health: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut machines = deploy::live_machines(api, app).await?;
    machines.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
    let progress = Progress::new();
    let mut restarted = 0;
    for m in &machines {
        if m.state != MachineState::Started {
            progress.line(&format!("  machine {} is {}: left as it is", m.id, m.state));
            continue;
        }
        progress.machine(&m.id, &m.region, Step::Restarting);
        let fresh = restart_one(api, app, m, timeout).await?;
        if health {
            deploy::wait_healthy(api, app, &fresh, timeout, &progress)
                .await
                .map_err(|e| with_details(e, restarted))?;
        } else {
            progress.machine(&m.id, &m.region, Step::Healthy);
        }
        restarted += 1;
    }
    println!("Restarted {restarted} machine(s) of {app}");
    Ok(())
}

/// Restarts `m` and returns it once its new start is recorded, as the baseline that
/// [`deploy::wait_healthy`] judges later events against.
async fn restart_one(
    api: &Client,
    app: &str,
    m: &Machine,
    timeout: Duration,
) -> anyhow::Result<Machine> {
    let before: HashSet<String> = api
        .get_machine(app, &m.id)
        .await?
        .events
        .into_iter()
        .map(|e| e.id)
        .collect();
    api.restart_machine(app, &m.id).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let now = api.get_machine(app, &m.id).await?;
        let started_again = now
            .events
            .iter()
            .any(|e| e.kind == "start" && !before.contains(&e.id));
        if started_again && now.state == MachineState::Started {
            return Ok(now);
        }
        if matches!(now.state, MachineState::Failed | MachineState::Destroyed) {
            let why = deploy::event_reason(&now).unwrap_or_else(|| "no reason given".into());
            anyhow::bail!("Machine {} is {} after its restart: {why}", m.id, now.state);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "Machine {} did not start again within {}s of its restart (it is {})",
                m.id,
                timeout.as_secs(),
                now.state
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A machine failure with its log lines, and how far the restart got.
fn with_details(e: anyhow::Error, restarted: usize) -> anyhow::Error {
    let details = e
        .chain()
        .find_map(|c| c.downcast_ref::<deploy::MachineFailure>())
        .map(deploy::MachineFailure::details)
        .unwrap_or_default();
    anyhow::anyhow!(
        "Restart stopped after {restarted} machine(s): {e:#}{details}\n  the machines after it were not restarted"
    )
}
