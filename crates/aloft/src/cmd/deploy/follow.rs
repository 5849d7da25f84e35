//! Following a deploy that runs on the control plane: its events become the progress lines
//! a deploy always showed, and its end becomes the command's outcome. The stream is opened
//! again (from the last event seen) when the connection drops, e.g. while the control plane
//! restarts; Ctrl-C stops following and leaves the deploy running.

use std::time::{Duration, Instant};

use aloft_api::deploy::{DeployEvent, DeployInfo};
use aloft_api::Client;
use futures::StreamExt as _;

use super::progress::{Progress, Step};

/// How long the control plane may be unreachable before following gives up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Shows one event.
fn show(progress: &Progress, e: &DeployEvent) {
    let machine = |step: Step| {
        if let Some(id) = &e.machine {
            progress.machine(id, e.region.as_deref().unwrap_or_default(), step);
        }
    };
    match e.status.as_str() {
        "info" => progress.line(&format!("  {}", e.message)),
        "replacing" => machine(Step::Replacing),
        "starting" => machine(Step::Starting),
        "settling" => machine(Step::Settling),
        "healthy" => machine(Step::Healthy),
        "checks" => machine(checks(&e.message)),
        "failed" => machine(Step::Failed(
            e.message
                .strip_prefix("failed: ")
                .unwrap_or(&e.message)
                .to_owned(),
        )),
        _ => {}
    }
}

/// `waiting for checks (1/2 passing)` as a step.
fn checks(message: &str) -> Step {
    let counts = message
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.split_once('/'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let (passing, total) = counts.unwrap_or((0, 0));
    Step::Checks { passing, total }
}

/// Follows deploy `id` of `app` to its end and returns it as it ended.
pub async fn follow(api: &Client, app: &str, id: &str) -> anyhow::Result<DeployInfo> {
    let progress = Progress::new();
    let mut after = 0;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match api.deploy_events(app, id, after, true).await {
            Ok(stream) => {
                unreachable_since = None;
                let mut stream = Box::pin(stream);
                while let Some(Ok(e)) = stream.next().await {
                    after = e.seq;
                    show(&progress, &e);
                }
            }
            Err(e) if e.status().is_some() => return Err(e.into()),
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_DEADLINE {
                    return Err(anyhow::Error::new(e).context(format!(
                        "Lost the control plane while following deploy {id}; it may still be running (`aloft releases watch {id}`)"
                    )));
                }
            }
        }
        match api.get_deploy(app, id).await {
            Ok(info) if info.status.is_final() => return Ok(info),
            Ok(_) => {}
            Err(e) if e.status().is_some() => return Err(e.into()),
            Err(_) => {
                unreachable_since.get_or_insert_with(Instant::now);
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// [`follow`], stopped by Ctrl-C (which leaves the deploy running and says so); `Ok` only when
/// the deploy succeeded.
pub async fn follow_to_end(api: &Client, app: &str, info: &DeployInfo) -> anyhow::Result<()> {
    let v = info.version;
    let ended = tokio::select! {
        ended = follow(api, app, &info.id) => ended?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "Stopped following; deploy {} of release v{v} keeps running on the server. \
                 Follow it again with `aloft releases watch v{v}`, stop it with `aloft releases cancel v{v}`.",
                info.id
            );
            std::process::exit(130);
        }
    };
    match ended.error {
        None => {
            println!("Release v{v} succeeded");
            Ok(())
        }
        Some(e) => Err(anyhow::anyhow!(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_come_from_the_message() {
        assert_eq!(
            checks("waiting for checks (1/2 passing)"),
            Step::Checks {
                passing: 1,
                total: 2
            }
        );
        assert_eq!(
            checks("waiting"),
            Step::Checks {
                passing: 0,
                total: 0
            }
        );
    }
}
