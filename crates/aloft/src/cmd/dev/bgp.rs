//! `aloft dev --bgp`: the cities reach the anycast address by BGP instead of static routes.
//!
//! Each city's namespace runs a bird2 "ISP router" (ASN 65200 + the city's index) that peers
//! with every region's agent (ASN 65100, which announces the anycast prefixes through its own
//! bird while its edge is healthy): with its own region's host over the access link, with the
//! others over the backbone. The router ranks what it learns by distance: local preference
//! `1000 - RTT` from the latency table, so its own city's edge wins and the others follow by
//! round trip. It installs the best route into the city's kernel table. When an edge dies,
//! drains or fails its self-check, its announcement goes (withdrawn, or the session's 3 s hold
//! timer expires) and the routers move their cities to the next nearest edge themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::latency;
use super::topology::{self, Topology, ANYCAST_V4, ANYCAST_V6};

/// The ASN every region's edge announces from.
pub const EDGE_ASN: u32 = 65100;
/// The hold time of every session (keepalives every second).
pub const HOLD_TIME: u16 = 3;

fn city_asn(topo: &Topology, city: &str) -> u32 {
    65200 + topo.index(city) as u32
}

/// Local preference of the routes a city learns from `region`'s edge: nearest highest.
fn local_pref(city: &str, region: &str) -> u32 {
    1000u32.saturating_sub(latency::rtt_ms(city, region))
}

fn city_dir(data_dir: &Path, city: &str) -> PathBuf {
    data_dir.join("bgp").join(city)
}

/// The BGP flags of `region`'s agent: it peers with every city's router and announces the
/// anycast addresses.
pub fn agent_args(topo: &Topology, region: &str) -> Vec<String> {
    let mut args = vec![
        "--bgp-asn".to_string(),
        EDGE_ASN.to_string(),
        "--bgp-router-id".into(),
        topo.host_ip(region).to_string(),
        "--bgp-hold-time".into(),
        HOLD_TIME.to_string(),
        "--anycast".into(),
        format!("{ANYCAST_V4}/32"),
        "--anycast".into(),
        format!("{ANYCAST_V6}/128"),
    ];
    for city in &topo.regions {
        let asn = city_asn(topo, city);
        let (v4, v6) = if city == region {
            (topo.access_ips(city).1, topo.access_ips6(city).1)
        } else {
            (topo.client_bb_ip(city), topo.client_bb_ip6(city))
        };
        args.push("--bgp-neighbor".into());
        args.push(format!("{v4}:{asn}"));
        args.push("--bgp-neighbor".into());
        args.push(format!("[{v6}]:{asn}"));
    }
    args
}

/// The configuration of `city`'s router.
pub fn router_config(topo: &Topology, city: &str, dir: &Path) -> String {
    let mut c = String::new();
    c.push_str(&format!(
        "# The router of the city of {city}, written by aloft dev.\n"
    ));
    c.push_str(&format!("router id {};\n", topo.client_bb_ip(city)));
    c.push_str(&format!(
        "log \"{}\" {{ info, remote, warning, error, auth, fatal, bug }};\n\n",
        dir.join("bird.log").display()
    ));
    c.push_str("protocol device {\n  scan time 10;\n}\n\n");
    c.push_str("protocol kernel kernel4 {\n  ipv4 { import none; export all; };\n}\n\n");
    c.push_str("protocol kernel kernel6 {\n  ipv6 { import none; export all; };\n}\n\n");
    let asn = city_asn(topo, city);
    for region in &topo.regions {
        let pref = local_pref(city, region);
        let (local4, peer4, local6, peer6) = if region == city {
            let (h4, c4) = topo.access_ips(city);
            let (h6, c6) = topo.access_ips6(city);
            (
                c4.to_string(),
                h4.to_string(),
                c6.to_string(),
                h6.to_string(),
            )
        } else {
            (
                topo.client_bb_ip(city).to_string(),
                topo.host_ip(region).to_string(),
                topo.client_bb_ip6(city).to_string(),
                topo.host_ip6(region).to_string(),
            )
        };
        for (family, local, peer, prefix) in [
            ("ipv4", local4, peer4, format!("{ANYCAST_V4}/32")),
            ("ipv6", local6, peer6, format!("{ANYCAST_V6}/128")),
        ] {
            let suffix = if family == "ipv4" { "4" } else { "6" };
            c.push_str(&format!("protocol bgp edge_{region}{suffix} {{\n"));
            c.push_str(&format!("  local {local} as {asn};\n"));
            c.push_str(&format!("  neighbor {peer} as {EDGE_ASN};\n"));
            c.push_str(&format!(
                "  hold time {HOLD_TIME};\n  keepalive time 1;\n  connect retry time 2;\n  error wait time 1, 10;\n"
            ));
            c.push_str(&format!(
                "  {family} {{\n    import filter {{\n      if net = {prefix} then {{ bgp_local_pref = {pref}; accept; }}\n      reject;\n    }};\n    export none;\n  }};\n"
            ));
            c.push_str("}\n\n");
        }
    }
    c
}

/// Replaces the cities' static anycast routes by a router each. Call after the topology is
/// built.
pub fn start_routers(topo: &Topology, data_dir: &Path) -> anyhow::Result<()> {
    for city in &topo.regions {
        let ns = topo.client_ns(city);
        topology::ip(&["-n", &ns, "route", "del", &format!("{ANYCAST_V4}/32")])?;
        topology::ip(&[
            "-n",
            &ns,
            "-6",
            "route",
            "del",
            &format!("{ANYCAST_V6}/128"),
        ])?;
        let dir = city_dir(data_dir, city);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Cannot create {}", dir.display()))?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, router_config(topo, city, &dir))
            .with_context(|| format!("Cannot write {}", conf.display()))?;
        // bird forks into the background once its configuration is read; it lives in the
        // city's namespace, so taking the topology down ends it.
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg("bird")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .output()
            .context("Cannot run bird (install bird2: scripts/setup.sh)")?;
        if !out.status.success() {
            anyhow::bail!(
                "The router of {city} did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Whether this topology's cities are routed by BGP (a router runs in a city's namespace).
pub fn active(topo: &Topology) -> bool {
    let cities: Vec<String> = topo
        .regions
        .iter()
        .map(|c| topo.client_ns(c))
        .filter(|ns| topology::netns_exists(ns))
        .collect();
    topology::processes_in(&cities).iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bird")
    })
}

/// The region whose host `city`'s anycast route leads to now (`None`: no route).
pub fn route_of(topo: &Topology, city: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", &topo.client_ns(city), "route", "get"])
        .arg(ANYCAST_V4.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let via = text
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)?
        .to_string();
    topo.regions
        .iter()
        .find(|r| {
            topo.host_ip(r).to_string() == via
                || (*r == city && topo.access_ips(r).0.to_string() == via)
        })
        .cloned()
}

/// Waits until the cities that were routed to `dead` are routed elsewhere; returns
/// `(city, region it now reaches)` for each.
pub fn wait_moved(topo: &Topology, cities: &[String], dead: &str) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5 * HOLD_TIME as u64);
    let mut moved = Vec::new();
    let mut left: Vec<String> = cities.to_vec();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        left.retain(|city| match route_of(topo, city) {
            Some(to) if to != dead => {
                moved.push((city.clone(), to));
                false
            }
            _ => true,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology {
            prefix: "aloft".into(),
            regions: vec!["ams".into(), "iad".into(), "syd".into()],
        }
    }

    #[test]
    fn routers_prefer_their_own_edge_then_the_nearest() {
        let c = router_config(&topo(), "syd", Path::new("/d"));
        assert!(c.contains("protocol bgp edge_syd4 {\n  local 10.201.2.2 as 65202;\n  neighbor 10.201.2.1 as 65100;"));
        assert!(c.contains("protocol bgp edge_iad4 {\n  local 10.200.0.102 as 65202;\n  neighbor 10.200.0.11 as 65100;"));
        assert!(c.contains("protocol bgp edge_ams6 {\n  local fd00:200::2:2 as 65202;\n  neighbor fd00:200::1:0 as 65100;"));
        let pref = |region: &str| {
            let block = c.split(&format!("edge_{region}4 {{")).nth(1).unwrap();
            let at = block.find("bgp_local_pref = ").unwrap() + "bgp_local_pref = ".len();
            block[at..]
                .split(';')
                .next()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        };
        assert_eq!(pref("syd"), 1000);
        assert!(
            pref("iad") > pref("ams"),
            "iad (200 ms) is nearer syd than ams (280 ms)"
        );
        assert_eq!(c.matches("export none;").count(), 6);
        assert_eq!(c.matches("protocol kernel").count(), 2);
    }

    #[test]
    fn agents_peer_with_every_city() {
        let a = agent_args(&topo(), "iad").join(" ");
        assert!(a.contains("--bgp-asn 65100 --bgp-router-id 10.200.0.11"));
        assert!(a.contains("--anycast 10.250.0.1/32 --anycast fd00:250::1/128"));
        // Its own city over the access link, the others over the backbone.
        assert!(a.contains("--bgp-neighbor 10.201.1.2:65201"));
        assert!(a.contains("--bgp-neighbor [fd00:201:1::2]:65201"));
        assert!(a.contains("--bgp-neighbor 10.200.0.100:65200"));
        assert!(a.contains("--bgp-neighbor [fd00:200::2:2]:65202"));
        assert_eq!(a.matches("--bgp-neighbor").count(), 6);
    }
}
