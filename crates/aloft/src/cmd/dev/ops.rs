//! `aloft dev exec`, `aloft dev kill` and `aloft dev down`: acting on a running topology
//! from another shell.

use std::time::Duration;

use anyhow::Context as _;

use super::topology::{self, Topology};
use super::Where;
use crate::context::UsageError;

/// `aloft dev exec --from CITY -- CMD…`
pub fn exec(at: &Where, city: &str, command: &[String]) -> anyhow::Result<()> {
    topology::check_prefix(&at.prefix)?;
    let topo = Topology {
        prefix: at.prefix.clone(),
        regions: vec![city.to_string()],
    };
    let ns = topo.client_ns(city);
    if !topology::netns_exists(&ns) {
        let cities: Vec<String> = topology::leftover_namespaces(&at.prefix)
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix(&format!("{}-c-", at.prefix))
                    .map(str::to_string)
            })
            .collect();
        return Err(UsageError(if cities.is_empty() {
            format!(
                "No city {city}: no aloft dev with prefix {} is running",
                at.prefix
            )
        } else {
            format!("No city {city}: the cities are {}", cities.join(", "))
        })
        .into());
    }
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(command)
        .status()
        .with_context(|| format!("Cannot run {:?} in {ns}", command[0]))?;
    if status.success() {
        return Ok(());
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// `aloft dev kill R`: the host dies with its machines and links; its city is
/// routed to the nearest live region (the anycast route to the dead host is withdrawn).
pub fn kill(at: &Where, region: &str) -> anyhow::Result<()> {
    let topo = running(at)?.topology;
    check_region(&topo, region)?;
    let ns = topo.host_ns(region);
    if !topology::netns_exists(&ns) {
        return Err(UsageError(format!("The host of {region} is already dead")).into());
    }
    let by_bgp = super::bgp::active(&topo);
    let served: Vec<String> = topo
        .regions
        .iter()
        .filter(|c| by_bgp && super::bgp::route_of(&topo, c).as_deref() == Some(region))
        .cloned()
        .collect();
    for pid in topology::processes_in(std::slice::from_ref(&ns)) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    topology::ip(&["netns", "del", &ns])?;
    // The anycast route to the dead host is withdrawn at once; its machines' remains are
    // removed after.
    let rerouted = topo.reroute()?;
    topology::remove_machines(&at.data_dir.join("hosts").join(region));
    println!("killed the host of {region}");
    let rerouted = if by_bgp {
        // The cities' routers notice when the host's BGP sessions time out.
        super::bgp::wait_moved(&topo, &served, region)
    } else {
        rerouted
    };
    for (city, to) in rerouted {
        println!("clients in {city} now reach {to}");
    }
    Ok(())
}

/// `aloft dev down`: stops a running `aloft dev` and removes everything it left.
pub async fn down(at: &Where, purge: bool) -> anyhow::Result<()> {
    topology::check_prefix(&at.prefix)?;
    if let Some(state) = topology::read_state(&at.data_dir) {
        if state.topology.prefix == at.prefix && topology::dev_alive(state.pid) {
            let pid = nix::unistd::Pid::from_raw(state.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while topology::dev_alive(state.pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("stopped aloft dev (pid {})", state.pid);
        }
    }
    let removed = topology::clean(&at.prefix, &at.data_dir);
    for r in &removed {
        println!("removed {r}");
    }
    let _ = std::fs::remove_file(topology::state_path(&at.data_dir));
    if purge && at.data_dir.exists() {
        topology::unmount_under(&at.data_dir);
        std::fs::remove_dir_all(&at.data_dir)
            .with_context(|| format!("Cannot remove {}", at.data_dir.display()))?;
        println!("removed {}", at.data_dir.display());
    }
    if removed.is_empty() && !purge {
        println!("nothing to remove");
    }
    Ok(())
}

/// The state of the `aloft dev` that runs from `at`, or an error saying none does.
pub(super) fn running(at: &Where) -> Result<topology::DevState, UsageError> {
    topology::check_prefix(&at.prefix)?;
    topology::read_state(&at.data_dir)
        .filter(|s| s.topology.prefix == at.prefix && topology::dev_alive(s.pid))
        .ok_or_else(|| {
            UsageError(format!(
                "No aloft dev with prefix {} runs from {}",
                at.prefix,
                at.data_dir.display()
            ))
        })
}

/// Refuses a region the topology does not have, naming the ones it has.
pub(super) fn check_region(topo: &Topology, region: &str) -> Result<(), UsageError> {
    if topo.regions.iter().any(|r| r == region) {
        return Ok(());
    }
    Err(UsageError(format!(
        "No region {region}: the regions are {}",
        topo.regions.join(", ")
    )))
}
