//! Waking stopped machines on demand and stopping idle ones.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::edge::Inner;
use crate::routes::{AppRoutes, Autostop, MachineRoute, MachineState, ServiceRoutes};

/// The future a [`Waker`] returns; the error is a message for the logs.
pub type WakeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Starts and stops machines for the edge. The agent implements it by asking its runtime (or the
/// control plane); the edge only decides when.
pub trait Waker: Send + Sync {
    /// Starts (or resumes) `machine_id` of `app`. The edge then waits until the machine accepts
    /// connections on its service port.
    fn start<'a>(&'a self, app: &'a str, machine_id: &'a str) -> WakeFuture<'a>;
    /// Stops or suspends (per `mode`) an idle machine.
    fn stop<'a>(&'a self, app: &'a str, machine_id: &'a str, mode: Autostop) -> WakeFuture<'a>;
}

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

impl Inner {
    /// Wakes `m` and waits until it accepts connections on the service port. Concurrent requests
    /// for the same machine share one start.
    pub(crate) async fn wake(
        &self,
        app: &str,
        svc: &ServiceRoutes,
        m: &MachineRoute,
    ) -> Result<(), WakeError> {
        let waker = self.waker.clone().ok_or_else(|| WakeError::NoWaker {
            machine: m.id.clone(),
        })?;
        let lock = {
            let mut locks = self.wake_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(m.id.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        if self.state_of(m) == MachineState::Started {
            return Ok(());
        }
        tracing::info!(app, machine = %m.id, region = %m.region, "waking a machine for a request");
        self.metrics.autostart(app);
        let deadline = Instant::now() + self.opts.start_timeout;
        match tokio::time::timeout(self.opts.start_timeout, waker.start(app, &m.id)).await {
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
        self.set_state(&m.id, MachineState::Started);
        self.loads.touch(&m.id);
        Ok(())
    }

    /// One autostop pass: per app and region, stops at most one machine idle for longer than
    /// the idle period, never going below the service's `min_machines_running` for the app.
    pub(crate) async fn autostop_pass(&self) {
        self.metrics.autostop_cycles.fetch_add(1, Ordering::Relaxed);
        let Some(waker) = self.waker.clone() else {
            return;
        };
        let routing = self.routes.load_full();
        for app in &routing.table.apps {
            let Some(svc) = app.services.iter().find(|s| s.autostop != Autostop::Off) else {
                continue;
            };
            for m in self.idle_victims(app, svc) {
                match waker.stop(&app.app, &m.id, svc.autostop).await {
                    Ok(()) => {
                        tracing::info!(app = %app.app, machine = %m.id, region = %m.region, "stopped an idle machine");
                        let state = match svc.autostop {
                            Autostop::Suspend => MachineState::Suspended,
                            _ => MachineState::Stopped,
                        };
                        self.set_state(&m.id, state);
                        self.metrics.autostop(&app.app);
                    }
                    Err(e) => {
                        tracing::warn!(app = %app.app, machine = %m.id, error = %e, "cannot stop an idle machine")
                    }
                }
            }
        }
    }

    fn idle_victims<'a>(&self, app: &'a AppRoutes, svc: &ServiceRoutes) -> Vec<&'a MachineRoute> {
        let started: Vec<&MachineRoute> = app
            .machines
            .iter()
            .filter(|m| self.state_of(m) == MachineState::Started)
            .collect();
        let mut running = started.len();
        let mut by_region: HashMap<&str, Vec<(&MachineRoute, Duration)>> = HashMap::new();
        for m in started {
            let idle = self.loads.idle_for(&m.id);
            if idle >= self.opts.idle_period {
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
}

pub(crate) fn spawn_autostop(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let every = inner.opts.autostop_interval;
    let cancel = inner.shutdown.clone();
    inner.tracker.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            inner.autostop_pass().await;
        }
    });
}
