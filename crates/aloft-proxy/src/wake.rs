//! Waking stopped machines on demand and stopping idle ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::routes::{AppRoutes, Autostop, MachineRoute, MachineState, ServiceRoutes};
use crate::shared::Shared;

/// Errors waking a machine.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WakeError {
    #[error("No waker is configured to start machine {machine}")]
    NoWaker { machine: String },
    #[error("Starting machine {machine} failed: {message}")]
    Start { machine: String, message: String },
    #[error("Machine {machine} did not accept connections on {addr} in time")]
    NotListening { machine: String, addr: SocketAddr },
}

/// Wakes `m` and waits until it accepts connections on the service port. Concurrent requests
/// for the same machine share one start.
pub(crate) async fn wake(
    shared: &Shared,
    app: &str,
    svc: &ServiceRoutes,
    m: &MachineRoute,
) -> Result<(), WakeError> {
    let waker = shared.waker().cloned().ok_or_else(|| WakeError::NoWaker {
        machine: m.id.clone(),
    })?;
    let lock = shared.wake_lock(&m.id);
    let _held = lock.lock().await;
    if shared.state_of(m) == MachineState::Started {
        return Ok(());
    }
    tracing::info!(app, machine = %m.id, region = %m.region, "waking a machine for a request");
    shared.metrics().autostart(app);
    let start_timeout = shared.opts().start_timeout;
    let deadline = Instant::now() + start_timeout;
    match tokio::time::timeout(start_timeout, waker.start(app, &m.id)).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(WakeError::Start {
                machine: m.id.clone(),
                message,
            })
        }
        Err(_) => {
            return Err(WakeError::Start {
                machine: m.id.clone(),
                message: "timed out".into(),
            })
        }
    }
    let addr = SocketAddr::new(m.address, svc.internal_port);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        if let Ok(Ok(_)) = attempt.await {
            break;
        }
        if Instant::now() >= deadline {
            return Err(WakeError::NotListening {
                machine: m.id.clone(),
                addr,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.set_state(&m.id, MachineState::Started);
    shared.loads().touch(&m.id);
    Ok(())
}

/// One autostop pass: per app and region, stops at most one machine idle for longer than the
/// idle period, never going below the service's `min_machines_running` for the app.
pub(crate) async fn autostop_pass(shared: &Shared) {
    shared.metrics().autostop_cycle();
    let Some(waker) = shared.waker().cloned() else {
        return;
    };
    let routing = shared.routing();
    for app in &routing.table.apps {
        let Some(svc) = app.services.iter().find(|s| s.autostop != Autostop::Off) else {
            continue;
        };
        for m in idle_victims(shared, app, svc) {
            match waker.stop(&app.app, &m.id, svc.autostop).await {
                Ok(()) => {
                    tracing::info!(app = %app.app, machine = %m.id, region = %m.region, "stopped an idle machine");
                    let state = match svc.autostop {
                        Autostop::Suspend => MachineState::Suspended,
                        _ => MachineState::Stopped,
                    };
                    shared.set_state(&m.id, state);
                    shared.metrics().autostop(&app.app);
                }
                Err(e) => {
                    tracing::warn!(app = %app.app, machine = %m.id, error = %e, "cannot stop an idle machine")
                }
            }
        }
    }
}

fn idle_victims<'a>(
    shared: &Shared,
    app: &'a AppRoutes,
    svc: &ServiceRoutes,
) -> Vec<&'a MachineRoute> {
    let started: Vec<&MachineRoute> = app
        .machines
        .iter()
        .filter(|m| shared.state_of(m) == MachineState::Started)
        .collect();
    let mut running = started.len();
    let mut by_region: HashMap<&str, Vec<(&MachineRoute, Duration)>> = HashMap::new();
    for m in started {
        let idle = shared.loads().idle_for(&m.id);
        if idle >= shared.opts().idle_period {
            by_region
                .entry(m.region.as_str())
                .or_default()
                .push((m, idle));
        }
    }
    let mut regions: Vec<_> = by_region.into_iter().collect();
    regions.sort_by(|a, b| a.0.cmp(b.0));
    let mut victims = Vec::new();
    for (_, mut idle) in regions {
        if running <= svc.min_machines_running as usize {
            break;
        }
        idle.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
        victims.push(idle[0].0);
        running -= 1;
    }
    victims
}

/// Runs [`autostop_pass`] every autostop interval until shutdown.
pub(crate) fn spawn_autostop(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let every = shared.opts().autostop_interval;
    let cancel = shared.shutdown_signal().clone();
    shared.tracker().spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            autostop_pass(&shared).await;
        }
    });
}
