//! End-to-end: `aloft dev --bgp` routes each city to the anycast address by BGP. Every
//! region's agent announces it through its own bird while its edge is healthy; each city's
//! router prefers its own region's edge, then the nearest. Draining, stopping or killing a
//! region moves its city to the next nearest region by BGP alone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aloft_testkit::dev::{dev_prefix, Dev};
use aloft_testkit::wait_for;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// The kernel route of `city` to the anycast address (`ip route get`), if any.
fn route(dev: &Dev, city: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &format!("{}-c-{city}", dev.prefix)])
        .args(["route", "get", "10.250.0.1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Who installed `city`'s anycast route (`ip route show`).
fn route_protocol(dev: &Dev, city: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &format!("{}-c-{city}", dev.prefix)])
        .args(["route", "show", "10.250.0.1/32"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `city`'s anycast route goes via `via`.
fn wait_route(dev: &Dev, city: &str, via: &str, why: &str) {
    let found = wait_for(why, Duration::from_secs(60), || {
        route(dev, city)
            .contains(&format!("via {via} "))
            .then_some(())
    });
    if let Err(e) = found {
        panic!(
            "{e}: route from {city} is {:?}\n{}",
            route(dev, city),
            dev.logs()
        );
    }
}

#[test]
fn cities_follow_bgp_to_the_nearest_healthy_edge() {
    let dev = Dev::start(bin(), &dev_prefix("bgp"), "ams,iad,syd", &["--bgp"])
        .unwrap_or_else(|e| panic!("{e}"));
    // Each city's router installed a BGP route to its own region's host (its access link).
    for (i, city) in ["ams", "iad", "syd"].iter().enumerate() {
        wait_route(&dev, city, &format!("10.201.{i}.1"), "the city's own edge");
        assert!(
            route_protocol(&dev, city).contains("proto bird"),
            "{}",
            route_protocol(&dev, city)
        );
        dev.wait_answered_by(city, city, Duration::from_secs(60));
    }

    // syd drains: its agent withdraws the prefix, syd goes to iad (nearer than ams); and back.
    let drain = dev.data_dir.join("hosts/syd/bgp/drain");
    std::fs::write(&drain, b"").unwrap();
    wait_route(
        &dev,
        "syd",
        "10.200.0.11",
        "syd to move to iad while draining",
    );
    dev.wait_answered_by("syd", "iad", Duration::from_secs(60));
    std::fs::remove_file(&drain).unwrap();
    wait_route(
        &dev,
        "syd",
        "10.201.2.1",
        "syd to come back once its edge announces again",
    );
    dev.wait_answered_by("syd", "syd", Duration::from_secs(60));

    // syd's host dies: its sessions go and syd is routed to iad by BGP.
    let out = dev.dev_cmd(&["kill", "syd"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("clients in syd now reach iad"),
        "{printed}"
    );
    wait_route(
        &dev,
        "syd",
        "10.200.0.11",
        "syd to move to iad once its host died",
    );
    dev.wait_answered_by("syd", "iad", Duration::from_secs(60));

    // iad's agent stops: it withdraws first, so iad and syd both move to ams.
    let pids = dev.agent_pids("iad");
    assert!(!pids.is_empty(), "no agent runs in iad");
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    wait_route(
        &dev,
        "iad",
        "10.200.0.10",
        "iad to move to ams when its agent stops",
    );
    wait_route(
        &dev,
        "syd",
        "10.200.0.10",
        "syd to move to ams when iad's agent stops",
    );
    dev.wait_answered_by("iad", "ams", Duration::from_secs(60));
    let log = std::fs::read_to_string(dev.data_dir.join("logs/agent-iad.log")).unwrap();
    assert!(
        log.contains("anycast prefixes withdrawn: the agent is stopping"),
        "{log}"
    );
}
