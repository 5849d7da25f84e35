//! One request's decisions, written once for both HTTP engines (the relay in `h1` and hyper in
//! `hyper_engine`), in the order of Pingora's phases:
//!
//! 1. **route**: the app for the request's host (or the address the client connected to) and
//!    its service on the public port ([`app_for`], [`service_for`], [`must_redirect`]);
//! 2. **pick and acquire**: the best machine with capacity (health, soft and hard limits,
//!    nearness, steering), waking a stopped one when none is under its soft limit, and waiting
//!    for a slot while every machine is at its hard limit ([`acquire`]);
//! 3. **forward**: the engine sends the request and reads the answer's head, which it keeps
//!    ([`Engine::send`]);
//! 4. **retry or replay**: a failure that left the request unacted on goes to another machine,
//!    an answer asking for a replay sends the request where it says ([`Flow::forward`]);
//! 5. **account**: the request in the metrics, under the app and machine that answered
//!    ([`Flow::account`]).
//!
//! Engines only move bytes: each implements [`Engine`] and turns a [`Refused`] into its own
//! error answer.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::StatusCode;

use crate::balance::{self, Locality, SlotGuard, Steering};
use crate::headers::ConnInfo;
use crate::load::EntryGuard;
use crate::replay::Replay;
use crate::routes::{self, AppRoutes, MachineRoute, Routing, ServiceRoutes};
use crate::shared::Shared;
use crate::wake;

/// Replays followed for one request at most.
pub(crate) const MAX_REPLAYS: usize = 3;

/// Answers up to this size (by `content-length`) to idempotent, buffered requests are read whole
/// before they are passed on, so a machine failing mid-answer can be retried.
pub(crate) const MAX_BUFFERED_RESPONSE: u64 = 64 * 1024;

/// Why a request has nowhere to go.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("the request has no Host header")]
    NoHost,
    #[error("no app is configured for host {0}")]
    UnknownHost(String),
    #[error("app {app} has no service on port {port}")]
    NoService { app: String, port: u16 },
}

impl RouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::NoHost => StatusCode::BAD_REQUEST,
            RouteError::UnknownHost(_) | RouteError::NoService { .. } => StatusCode::NOT_FOUND,
        }
    }
}

/// The app a request is for: by its host, else by the address the client connected to (an
/// app's dedicated address); without a host, only by that address.
#[inline]
pub(crate) fn app_for<'r>(
    routing: &'r Routing,
    host: Option<&str>,
    local: IpAddr,
) -> Result<&'r AppRoutes, RouteError> {
    match host {
        Some(host) => routing
            .app_for_host(host)
            .or_else(|| routing.app_for_address(local))
            .ok_or_else(|| RouteError::UnknownHost(host.to_string())),
        None => routing.app_for_address(local).ok_or(RouteError::NoHost),
    }
}

/// The service of `app` that answers on public port `port`.
#[inline]
pub(crate) fn service_for(app: &AppRoutes, port: u16) -> Result<&ServiceRoutes, RouteError> {
    routes::service_for_port(app, port).ok_or_else(|| RouteError::NoService {
        app: app.app.clone(),
        port,
    })
}

/// Whether a plain HTTP request on this connection is answered with a redirect to HTTPS.
#[inline]
pub(crate) fn must_redirect(svc: &ServiceRoutes, conn: &ConnInfo) -> bool {
    !conn.tls && svc.port(conn.port).is_some_and(|p| p.force_https)
}

/// Why no machine could take a request or connection.
#[derive(Debug)]
pub(crate) struct Unavailable {
    pub status: StatusCode,
    pub message: String,
}

/// Picks a machine and takes a slot on it: wakes one when none is under its soft limit, and
/// queues (up to the queue timeout) when all are at their hard limit.
pub(crate) async fn acquire<'a>(
    shared: &Shared,
    app: &'a AppRoutes,
    svc: &ServiceRoutes,
    steer: &Steering,
) -> Result<(&'a MachineRoute, SlotGuard), Unavailable> {
    let opts = shared.opts();
    let loads = shared.loads();
    let limits = &svc.concurrency;
    let deadline = tokio::time::Instant::now() + opts.queue_timeout;
    let mut wake_failed: HashSet<String> = HashSet::new();
    loop {
        let rtts = shared.rtts();
        let unreachable = shared.unreachable_hosts();
        let here = Locality {
            region: &opts.region,
            host_id: &opts.host_id,
            rtts: &rtts,
            unreachable: &unreachable,
        };
        let state = |m: &MachineRoute| shared.state_of(m);
        let serving = |m: &MachineRoute| shared.serving(m);
        let ranked = balance::rank(&app.machines, &serving, loads, limits, &here, steer);
        if svc.autostart && shared.waker().is_some() {
            let mut wake_steer = steer.clone();
            wake_steer.exclude.extend(wake_failed.iter().cloned());
            let wake = balance::needs_wake(&ranked, loads, limits)
                || balance::wake_here_first(&ranked, &app.machines, &state, &here, &wake_steer);
            if let Some(m) = wake
                .then(|| balance::wake_candidate(&app.machines, &state, &here, &wake_steer))
                .flatten()
            {
                let m = m.clone();
                if let Err(e) = wake::wake(shared, &app.app, svc, &m).await {
                    tracing::warn!(app = %app.app, error = %e, "cannot wake a machine");
                    wake_failed.insert(m.id.clone());
                }
                continue;
            }
        }
        for m in &ranked {
            if let Some(g) = loads.try_acquire(&m.id, limits.hard_limit) {
                return Ok((*m, g));
            }
        }
        let any_at_hard = app.machines.iter().any(|m| {
            shared.serving(m)
                && !m.cordoned
                && steer.admits(m)
                && limits.hard_limit.is_some_and(|h| loads.load(&m.id) >= h)
        });
        if !any_at_hard {
            return Err(Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "no machine of app {} is available to take the request",
                    app.app
                ),
            });
        }
        // Arm the wait, then look once more so a slot freed in between is not missed.
        let released = loads.released();
        tokio::pin!(released);
        released.as_mut().enable();
        for m in &ranked {
            if let Some(g) = loads.try_acquire(&m.id, limits.hard_limit) {
                return Ok((*m, g));
            }
        }
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            return Err(Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("every machine of app {} is at its hard limit", app.app),
            });
        }
    }
}

/// Where one attempt goes.
pub(crate) struct Dest<'r> {
    pub addr: SocketAddr,
    pub machine: &'r MachineRoute,
    pub svc: &'r ServiceRoutes,
}

/// Why one attempt at a machine failed (what the machine did, as in "machine m1 of app a
/// ..."), and whether another may follow.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing the machine may have acted on: another machine may take the request.
    Retry(String),
    /// The request may have been acted on: it is answered `502` with this.
    Fail(String),
    /// The request cannot be sent at all: answered with this status and text.
    Answer(StatusCode, String),
}

/// How an engine moves one request's bytes. The engine keeps the machine's answer itself (it
/// is large and stays where it was read), and passes it on once the flow is done.
pub(crate) trait Engine {
    /// Sends the request to `to` and reads the answer's head, kept until the next send.
    fn send(&mut self, to: &Dest<'_>) -> impl Future<Output = Result<(), Failure>>;

    /// The replay the kept answer asks for, if it asks for one.
    fn replay(&mut self) -> Option<Replay>;

    /// The kept answer (from `to`) asked for a replay: it is not passed on, and the request
    /// goes again carrying `src` as its replay source.
    fn replaying(&mut self, to: &Dest<'_>, src: &str);
}

/// The edge's own answer instead of a machine's: status, text, and the machine it is counted
/// against (empty when none).
#[derive(Debug)]
pub(crate) struct Refused<'r> {
    pub status: StatusCode,
    pub message: String,
    pub machine: &'r str,
}

/// The machine whose answer the engine keeps, with the slot the answer holds on it until it
/// is passed on.
pub(crate) struct Forwarded<'r> {
    pub machine: &'r MachineRoute,
    pub addr: SocketAddr,
    pub slot: SlotGuard,
}

/// How a request may be sent.
pub(crate) struct Sending {
    pub steer: Steering,
    pub idempotent: bool,
    /// Whether the request can be sent again (its body is whole in memory).
    pub resendable: bool,
}

/// One routed request, from the choice of a machine to its accounting.
pub(crate) struct Flow<'r> {
    shared: &'r Shared,
    routing: &'r Routing,
    app: &'r AppRoutes,
    svc: &'r ServiceRoutes,
    /// The public port the request came in on.
    port: u16,
    started: Instant,
    _entered: EntryGuard,
}

impl<'r> Flow<'r> {
    /// The flow of a request for `svc` of `app`, counted as entering at this edge from now on
    /// (until the flow is dropped); `started` is when the request arrived.
    #[inline]
    pub fn new(
        shared: &'r Shared,
        routing: &'r Routing,
        (app, svc): (&'r AppRoutes, &'r ServiceRoutes),
        port: u16,
        started: Instant,
    ) -> Flow<'r> {
        Flow {
            _entered: shared.enter(&app.app),
            shared,
            routing,
            app,
            svc,
            port,
            started,
        }
    }

    /// The app the request is for now (a replay may have moved it).
    #[inline]
    pub fn app(&self) -> &'r AppRoutes {
        self.app
    }

    /// Chooses a machine and has `engine` send the request to it, retrying and following
    /// replays, until a machine's answer is to be passed on or the edge answers itself.
    pub async fn forward<E: Engine>(
        &mut self,
        engine: &mut E,
        sending: Sending,
    ) -> Result<Forwarded<'r>, Refused<'r>> {
        let Sending {
            mut steer,
            idempotent,
            resendable,
        } = sending;
        let max_attempts = self.shared.opts().max_attempts;
        let (mut attempts, mut replays) = (0usize, 0usize);
        loop {
            let app = self.app;
            let (m, slot) = match acquire(self.shared, app, self.svc, &steer).await {
                Ok(x) => x,
                Err(_) if attempts > 0 => {
                    let message = format!("no machine of app {} accepted a connection\n", app.app);
                    return Err(refused(StatusCode::BAD_GATEWAY, message, ""));
                }
                Err(e) => return Err(refused(e.status, format!("{}\n", e.message), "")),
            };
            let to = Dest {
                addr: SocketAddr::new(m.address, self.svc.internal_port),
                machine: m,
                svc: self.svc,
            };
            // A request waiting on a host that turns unreachable over the mesh (a partition, a
            // dead host) would wait for ever: it is given up, and retried elsewhere if it can be.
            let sent = match self
                .shared
                .until_unreachable(&m.host_id, engine.send(&to))
                .await
            {
                Some(sent) => sent,
                None if idempotent => Err(Failure::Retry("became unreachable".into())),
                None => Err(Failure::Fail("became unreachable".into())),
            };
            match sent {
                Ok(()) => {}
                Err(Failure::Retry(why)) if resendable && attempts + 1 < max_attempts => {
                    tracing::warn!(app = %app.app, machine = %m.id, reason = %why, "trying another machine");
                    attempts += 1;
                    steer.exclude.insert(m.id.clone());
                    continue;
                }
                Err(Failure::Retry(why) | Failure::Fail(why)) => {
                    tracing::warn!(app = %app.app, machine = %m.id, reason = %why, "forwarding failed");
                    let message = format!("machine {} of app {} {why}\n", m.id, app.app);
                    return Err(refused(StatusCode::BAD_GATEWAY, message, &m.id));
                }
                Err(Failure::Answer(status, message)) => {
                    return Err(refused(status, message, &m.id))
                }
            }
            let Some(replay) = engine.replay().filter(|_| resendable) else {
                return Ok(Forwarded {
                    machine: m,
                    addr: to.addr,
                    slot,
                });
            };
            replays += 1;
            if replays > MAX_REPLAYS {
                let message = format!("too many replays for app {}\n", app.app);
                return Err(refused(StatusCode::BAD_GATEWAY, message, &m.id));
            }
            self.shared.metrics().replay(&app.app);
            tracing::debug!(app = %app.app, machine = %m.id, ?replay, "replaying");
            match replay_target(self.routing, &replay, (app, self.svc), self.port) {
                Ok((a, s)) => (self.app, self.svc) = (a, s),
                Err(e) => return Err(refused(StatusCode::BAD_GATEWAY, e, &m.id)),
            }
            engine.replaying(&to, &replay.source(&m.id, &m.region));
            steer = replay_steering(&replay, m);
            drop(slot);
        }
    }

    /// Counts the request in the metrics: answered `status` by `machine` (empty for the edge).
    #[inline]
    pub fn account(&self, machine: &str, status: u16) {
        self.shared
            .metrics()
            .request(&self.app.app, machine, status, self.started.elapsed());
    }
}

#[inline]
fn refused(status: StatusCode, message: String, machine: &str) -> Refused<'_> {
    Refused {
        status,
        message,
        machine,
    }
}

/// The app and service a replay's `app=` field sends the request to: an app of the same
/// organization, by its service on the request's port; the current ones without the field.
fn replay_target<'r>(
    routing: &'r Routing,
    replay: &Replay,
    (app, svc): (&'r AppRoutes, &'r ServiceRoutes),
    port: u16,
) -> Result<(&'r AppRoutes, &'r ServiceRoutes), String> {
    let Some(name) = &replay.app else {
        return Ok((app, svc));
    };
    let target = routing
        .app_named(name)
        .filter(|a| a.org == app.org)
        .ok_or_else(|| {
            format!(
                "app {} asked for a replay to app {name}, which is not an app of its organization\n",
                app.app
            )
        })?;
    let svc = routes::service_for_port(target, port)
        .ok_or_else(|| format!("app {name} has no service on port {port}\n"))?;
    Ok((target, svc))
}

/// Where a replay asked by machine `m` goes next.
fn replay_steering(replay: &Replay, m: &MachineRoute) -> Steering {
    let mut steer = Steering {
        force_instance: replay.instance.clone(),
        prefer_instance: replay.prefer_instance.clone(),
        prefer_regions: replay.regions.clone(),
        force_regions: Vec::new(),
        exclude: HashSet::new(),
    };
    if replay.elsewhere || (!replay.regions.is_empty() && !replay.regions.contains(&m.region)) {
        steer.exclude.insert(m.id.clone());
    }
    steer
}
