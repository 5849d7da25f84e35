//! `aloft dev` with regions: the control plane and one agent per region as child processes,
//! each in its own namespace of the topology; the demo app with a machine per region; TCP
//! forwarders so this machine's loopback and each city's `localhost` reach the platform.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aloft_api::{Client, Machine, StopRequest, WaitQuery};
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::netns::{self, Dialer, Report, Served};
use super::topology::{self, DevState, Topology, ANYCAST_V4, CONTROL_PORT, MESH_PORT};
use super::{demo, latency, traffic, DevArgs, DEMO_APP};
use crate::context::UsageError;

/// User-id ranges (of 65536 ids) set apart for each simulated host's machines.
const DEV_RANGES_PER_HOST: u32 = 256;

/// A child process of `aloft dev` (the control plane or an agent) in one namespace.
struct Child {
    name: String,
    child: tokio::process::Child,
}

/// Everything `aloft dev` started, so it can be taken down whatever happened.
struct Running {
    topo: Topology,
    data_dir: PathBuf,
    children: Vec<Child>,
    api: Option<Client>,
    machines: Vec<Machine>,
    stop: CancellationToken,
    served: Served,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    topology::check_prefix(&args.at.prefix)?;
    let regions = topology::parse_regions(&args.regions)?;
    let from = args.from.clone().unwrap_or_else(|| regions[0].clone());
    if !regions.contains(&from) {
        return Err(UsageError(format!(
            "--from {from} is not one of the regions ({})",
            regions.join(", ")
        ))
        .into());
    }
    // Ctrl-C is caught from here on, so one that comes early still stops everything cleanly.
    let interrupted = crate::cmd::server::shutdown_signal();
    let data_dir = args.at.data_dir.clone();
    if let Some(state) = topology::read_state(&data_dir) {
        if topology::dev_alive(state.pid) {
            return Err(UsageError(format!(
                "Another aloft dev (pid {}) uses {}: stop it, or run `aloft dev down`",
                state.pid,
                data_dir.display()
            ))
            .into());
        }
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("Cannot create {}", data_dir.display()))?;
    let removed = topology::clean(&args.at.prefix, &data_dir);
    if !removed.is_empty() {
        println!("removed what an earlier run left: {}", removed.join(", "));
    }
    let unknown: Vec<&str> = regions
        .iter()
        .map(String::as_str)
        .filter(|r| !latency::KNOWN.contains(r))
        .collect();
    if !unknown.is_empty() {
        println!(
            "no latency figures for {}: {} ms round trips are assumed to and from them",
            unknown.join(", "),
            latency::UNKNOWN_RTT_MS
        );
    }
    let topo = Topology {
        prefix: args.at.prefix.clone(),
        regions,
    };
    let state = DevState {
        pid: std::process::id(),
        topology: topo.clone(),
        partitions: Vec::new(),
    };
    std::fs::write(topology::state_path(&data_dir), serde_json::to_vec(&state)?)?;

    let mut running = Running {
        topo,
        data_dir,
        children: Vec::new(),
        api: None,
        machines: Vec::new(),
        stop: CancellationToken::new(),
        served: Served::default(),
    };
    let result = serve(&args, &from, &mut running, interrupted).await;
    println!("stopping…");
    teardown(&mut running).await;
    for line in running.served.summary() {
        println!("served {line}");
    }
    result?;
    println!("stopped");
    Ok(())
}

async fn serve(
    args: &DevArgs,
    from: &str,
    run: &mut Running,
    interrupted: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(interrupted);
    tokio::select! {
        r = bring_up(args, from, run) => r?,
        _ = &mut interrupted => return Ok(()),
    }
    if args.exit_when_ready {
        return Ok(());
    }
    if let (Some(api), every @ 1..) = (&run.api, args.traffic.summary_every) {
        traffic::spawn_summary(
            api.clone(),
            run.served.clone(),
            Duration::from_secs(every),
            run.stop.clone(),
        );
    }
    // Until Ctrl-C; the control plane must stay up. An agent that dies (`aloft dev kill`, a
    // crash, a kill -9) takes its host down: the cities it served go to the nearest live region.
    let mut hosts = super::watch::HostWatch::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tick.tick() => {}
        }
        for c in run.children.iter_mut() {
            let Some(status) = c.child.try_wait()? else {
                continue;
            };
            if c.name == "server" {
                anyhow::bail!(
                    "The control plane stopped ({status}); see {}",
                    log_path(&run.data_dir, "server").display()
                )
            }
            if let Some(region) = c.name.strip_prefix("agent-") {
                for line in hosts.host_died(&run.topo, region)? {
                    println!("{line}");
                }
            }
        }
    }
}

async fn bring_up(args: &DevArgs, from: &str, run: &mut Running) -> anyhow::Result<()> {
    let topo = run.topo.clone();
    let data_dir = run.data_dir.clone();
    topo.build().context("Cannot build the simulated network")?;
    if args.bgp {
        super::bgp::start_routers(&topo, &data_dir).context("Cannot start the cities' routers")?;
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().map(PathBuf::from).unwrap_or_default();

    // The control plane, in its namespace, reached from here through a forwarder.
    let server_dir = data_dir.join("server");
    let control = SocketAddr::new(topo.control_ip(), CONTROL_PORT);
    let mut server_args: Vec<String> = vec![
        "server".into(),
        "--listen".into(),
        control.to_string(),
        "--data-dir".into(),
        server_dir.display().to_string(),
        "--domain".into(),
        args.domain.clone(),
    ];
    server_args.extend(args.traffic.server_args());
    spawn_in(run, "server", &topo.control_ns(), &exe, &server_args)?;
    let listener = netns::listen(None, args.listen).await.with_context(|| {
        format!(
            "Cannot listen on {} (is another aloft running?)",
            args.listen
        )
    })?;
    let local_api = listener.local_addr()?;
    netns::spawn_forwarder(
        listener,
        Dialer {
            netns: Some(topo.control_ns()),
            target: control,
        },
        None,
        run.stop.clone(),
    );
    let url = format!("http://{local_api}");
    let token = wait_for_admin_token(run, &server_dir).await?;
    let api = Client::new(&url, token.clone())?;
    wait_for(
        Duration::from_secs(30),
        "the control plane to answer",
        || async { api.platform_regions().await.is_ok() },
    )
    .await?;
    run.api = Some(api.clone());
    println!(
        "control plane  {url}  (token in {})",
        server_dir.join("admin-token").display()
    );

    // One host per region, joining with a join token as real servers do.
    let join = join_token(&api, &data_dir).await?;
    for (i, region) in topo.regions.iter().enumerate() {
        let agent_dir = data_dir.join("hosts").join(region);
        // The hosts share this box's user ids: each gets ranges of its own for its machines.
        let userns_base = aloft_agent::runtime::userns::DEFAULT_BASE
            + i as u32 * DEV_RANGES_PER_HOST * aloft_agent::runtime::userns::RANGE_SIZE;
        let mut agent_args: Vec<String> = [
            "agent",
            "--control",
            &topo.control_url(),
            "--token-file",
            &join.display().to_string(),
            "--region",
            region,
            "--data-dir",
            &agent_dir.display().to_string(),
            "--address",
            &topo.host_ip(region).to_string(),
            "--http",
            "[::]:80",
            "--https",
            "[::]:443",
            "--domain",
            &args.domain,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        agent_args.extend(["--userns-base".to_string(), userns_base.to_string()]);
        agent_args.extend(mesh_args(&topo, region));
        agent_args.extend(traffic::agent_args());
        if args.bgp {
            agent_args.extend(super::bgp::agent_args(&topo, region));
        }
        spawn_in(
            run,
            &format!("agent-{region}"),
            &topo.host_ns(region),
            &exe,
            &agent_args,
        )?;
    }
    let want = topo.regions.clone();
    wait_for(
        Duration::from_secs(60),
        "every region's host to join",
        || async {
            api.platform_regions().await.is_ok_and(|r| {
                want.iter()
                    .all(|w| r.regions.iter().any(|have| &have.code == w))
            })
        },
    )
    .await?;
    for region in &topo.regions {
        println!(
            "region {region:<7} host {}  edge http://{ANYCAST_V4}  (clients: aloft dev exec --from {region})",
            topo.host_ip(region)
        );
    }

    // The demo app: one machine per region.
    let image = demo::push_image(&api, &data_dir, &bin_dir).await?;
    let placed = futures::future::join_all(
        topo.regions
            .iter()
            .map(|r| demo::ensure_machine(&api, r, &image)),
    )
    .await;
    for m in placed {
        let m = m?;
        println!(
            "machine        {} in {} at {}",
            m.id, m.region, m.private_ip
        );
        run.machines.push(m);
    }
    if args.autoscale {
        traffic::autoscale_demo(&api, &topo.regions).await?;
    }

    // Each city's localhost reaches its nearest edge; this machine's --http and --https go
    // through --from's.
    for city in &topo.regions {
        let ns = topo.client_ns(city);
        for (local, port) in [
            ("127.0.0.1", 80),
            ("::1", 80),
            ("127.0.0.1", 443),
            ("::1", 443),
        ] {
            let local = SocketAddr::new(local.parse()?, port);
            let listener = netns::listen(Some(&ns), local)
                .await
                .with_context(|| format!("Cannot listen on {local} in {ns}"))?;
            // Plain HTTP answers name the region that served them; TLS is relayed as is.
            let report = (port == 80).then(|| Report {
                city: city.clone(),
                served: run.served.clone(),
                verbose: args.verbose,
            });
            netns::spawn_forwarder(
                listener,
                Dialer {
                    netns: Some(ns.clone()),
                    target: SocketAddr::new(IpAddr::V4(ANYCAST_V4), port),
                },
                report,
                run.stop.clone(),
            );
        }
    }
    let http = forward_local(run, &topo, from, args.http, 80, args.verbose).await?;
    let https = forward_local(run, &topo, from, args.https, 443, args.verbose).await?;

    // Wait until every city is answered, and say by which region.
    let host = format!("{DEMO_APP}.{}", args.domain);
    println!();
    for city in &topo.regions {
        let region = answer_from(&topo, city, &host).await?;
        println!("  from {city:<5} answered by {region}");
    }
    let app_url = format!("http://{host}:{}", http.port());
    let secure_url = format!("https://{host}:{}", https.port());
    let far = topo.regions.last().map_or("ams", String::as_str);
    println!();
    println!("  {app_url}");
    println!("  {secure_url}");
    println!();
    println!(
        "HTTPS is signed by the cluster's CA: aloft certs root > ca.pem, then curl --cacert ca.pem {secure_url}"
    );
    println!(
        "Try: curl {app_url}    or    aloft dev exec --from {far} -- curl -s http://{host}/    \
         (https://{host}/ with --cacert from any city too)"
    );
    println!(
        "(Ctrl-C stops everything; {} is kept; logs in {})",
        data_dir.display(),
        data_dir.join("logs").display()
    );
    Ok(())
}

/// Listens on `local` on this machine and forwards to `port` of the anycast address as seen
/// from `city`; returns the bound address.
async fn forward_local(
    run: &Running,
    topo: &Topology,
    city: &str,
    local: SocketAddr,
    port: u16,
    verbose: bool,
) -> anyhow::Result<SocketAddr> {
    let listener = netns::listen(None, local)
        .await
        .with_context(|| format!("Cannot listen on {local} (is another aloft running?)"))?;
    let bound = listener.local_addr()?;
    let report = (port == 80).then(|| Report {
        city: city.to_string(),
        served: run.served.clone(),
        verbose,
    });
    netns::spawn_forwarder(
        listener,
        Dialer {
            netns: Some(topo.client_ns(city)),
            target: SocketAddr::new(IpAddr::V4(ANYCAST_V4), port),
        },
        report,
        run.stop.clone(),
    );
    Ok(bound)
}

/// Asks the demo app from `city`'s client namespace through the anycast address until it
/// answers; returns the region its answer names. Until the city's own region answers (its
/// edge may not know yet that its machine started) it keeps asking for a while.
async fn answer_from(topo: &Topology, city: &str, host: &str) -> anyhow::Result<String> {
    let dialer = Dialer {
        netns: Some(topo.client_ns(city)),
        target: SocketAddr::new(IpAddr::V4(ANYCAST_V4), 80),
    };
    let start = tokio::time::Instant::now();
    let mut last = String::from("no answer");
    let mut other = None;
    while start.elapsed() < Duration::from_secs(60) {
        match dialer.connect().await {
            Ok(s) => match super::http_get(s, host, "/json").await {
                Ok((status, body)) if status.starts_with("HTTP/1.1 200") => {
                    let region = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["region"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "an unknown region".into());
                    if region == city {
                        return Ok(region);
                    }
                    other = Some(region);
                }
                Ok((status, body)) => last = format!("{status}: {}", body.trim()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if let Some(region) = &other {
            if start.elapsed() > Duration::from_secs(15) {
                return Ok(region.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("The demo app did not answer clients in {city} within 60 s ({last})")
}

/// The mesh flags for `region`'s agent: its UDP port and the one-way delay to every other
/// region, half the round trips of the latency table.
fn mesh_args(topo: &Topology, region: &str) -> Vec<String> {
    let mut args = vec!["--mesh-port".to_string(), MESH_PORT.to_string()];
    for other in topo.regions.iter().filter(|r| *r != region) {
        args.push("--link".into());
        args.push(format!("{other}={}", latency::one_way_ms(region, other)));
    }
    args
}

fn log_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{name}.log"))
}

/// Starts `exe args` inside namespace `ns` (nsenter joins only the network namespace, so the
/// child shares this mount namespace and its mounts are everyone's), logging to a file.
fn spawn_in(
    run: &mut Running,
    name: &str,
    ns: &str,
    exe: &Path,
    args: &[String],
) -> anyhow::Result<()> {
    let log = log_path(&run.data_dir, name);
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("Cannot open {}", log.display()))?;
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a Ctrl-C in the terminal reaches only `aloft dev`, which
        // stops everything in order.
        .process_group(0)
        .env("NO_COLOR", "1")
        .spawn()
        .with_context(|| format!("Cannot start {name} (is nsenter from util-linux installed?)"))?;
    run.children.push(Child {
        name: name.to_string(),
        child,
    });
    Ok(())
}

async fn wait_for_admin_token(run: &mut Running, server_dir: &Path) -> anyhow::Result<String> {
    let path = server_dir.join("admin-token");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(t) = std::fs::read_to_string(&path) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        if let Some(c) = run.children.iter_mut().find(|c| c.name == "server") {
            if let Some(status) = c.child.try_wait()? {
                anyhow::bail!(
                    "The control plane stopped ({status}); see {}",
                    log_path(&run.data_dir, "server").display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "The control plane did not write {} within 30 s",
        path.display()
    )
}

/// The file holding the join token hosts use, created once in the data dir (mode 0600).
async fn join_token(api: &Client, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("join-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(path);
        }
    }
    let created = api
        .create_token(&aloft_api::CreateTokenRequest {
            scope: Some(aloft_api::TokenKind::Join),
            name: Some("aloft dev hosts".to_owned()),
            ..aloft_api::CreateTokenRequest::default()
        })
        .await
        .context("Cannot create a join token")?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(created.token.as_bytes())?;
    }
    Ok(path)
}

async fn wait_for<F, Fut>(limit: Duration, what: &str, mut ok: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if ok().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("Timed out after {} s waiting for {what}", limit.as_secs())
}

/// Stops the demo machines, the agents and the control plane, then removes the topology and
/// whatever its processes left.
async fn teardown(run: &mut Running) {
    let mut live = run.topo.live_regions();
    // A host whose agent died is down: nothing on it can be stopped through the API.
    for c in run.children.iter_mut() {
        if let (Some(region), Ok(Some(_))) = (c.name.strip_prefix("agent-"), c.child.try_wait()) {
            live.retain(|r| r != region);
        }
    }
    if let Some(api) = &run.api {
        // Every started demo machine, but in regions the autoscaler owns (it would replace
        // them): those go down with their hosts and start again on the next run.
        let scaled = traffic::autoscaled_regions(api).await;
        let machines = match api
            .list_machines(DEMO_APP, &aloft_api::ListMachinesQuery::default())
            .await
        {
            Ok(all) => all
                .into_iter()
                .filter(|m| m.state == aloft_api::MachineState::Started)
                .filter(|m| !scaled.contains(&m.region))
                .collect(),
            Err(_) => run.machines.clone(),
        };
        let stops = machines
            .iter()
            .filter(|m| live.contains(&m.region))
            .map(|m| async move {
                if api
                    .stop_machine(DEMO_APP, &m.id, &StopRequest::default())
                    .await
                    .is_ok()
                {
                    let _ = api
                        .wait_machine(
                            DEMO_APP,
                            &m.id,
                            &WaitQuery {
                                state: Some("stopped".into()),
                                timeout: Some(15),
                                instance_id: None,
                            },
                        )
                        .await;
                }
            });
        futures::future::join_all(stops).await;
    }
    // Agents first (they report to the control plane as they go), then the control plane.
    let (servers, agents): (Vec<_>, Vec<_>) =
        run.children.drain(..).partition(|c| c.name == "server");
    terminate(agents).await;
    terminate(servers).await;
    run.stop.cancel();
    topology::clean(&run.topo.prefix, &run.data_dir);
    let _ = std::fs::remove_file(topology::state_path(&run.data_dir));
}

/// SIGTERM, then SIGKILL for whoever is still there after 10 s.
async fn terminate(children: Vec<Child>) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let waits = children.into_iter().map(|mut c| async move {
        if let Some(pid) = c.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), c.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(name = %c.name, "did not stop within 10 s; killing it");
            let _ = c.child.kill().await;
        }
    });
    futures::future::join_all(waits).await;
}
