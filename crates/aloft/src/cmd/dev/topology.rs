//! The simulated network of `aloft dev`: namespaces, links, addresses and routes, and the
//! removal of all of it (also after a crash).
//!
//! ```text
//!   <prefix>-bb   the backbone: bridge bb0, one port per host, client and the control plane
//!   <prefix>-cp   the control plane          bb0 10.200.0.2
//!   <prefix>-h-R  the host of region R        bb0 10.200.0.(10+i), anycast on lo, c0 to its city
//!   <prefix>-c-R  the clients in R's city     up0 to its host (anycast route), bb0 on the backbone
//! ```
//!
//! Every link lives inside these namespaces (none in the host's own), so deleting them
//! removes every link, and several topologies with different prefixes do not collide.
//! Links and addresses are made with iproute2 (`ip -n`), the standard tool for namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::latency;
use crate::context::UsageError;

/// The address every region's edge answers at.
pub const ANYCAST_V4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const ANYCAST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
/// The control plane's port on the backbone.
pub const CONTROL_PORT: u16 = 4280;
/// The mesh's UDP port on each host's backbone address.
pub const MESH_PORT: u16 = 51820;
/// Most regions one topology holds (addresses are numbered per region).
const MAX_REGIONS: usize = 80;

/// The names and addresses of one topology.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Topology {
    pub prefix: String,
    pub regions: Vec<String>,
}

/// Checks a `--prefix`: short (namespace and link names derive from it), lowercase.
pub fn check_prefix(prefix: &str) -> Result<(), UsageError> {
    let ok = (1..=10).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "Prefix {prefix:?} is not valid: use 1 to 10 lowercase letters and digits, starting with a letter"
        )))
    }
}

/// Parses `--regions ams,iad,syd`.
pub fn parse_regions(list: &str) -> Result<Vec<String>, UsageError> {
    let mut regions: Vec<String> = Vec::new();
    for r in list.split(',').map(str::trim) {
        let ok = (2..=10).contains(&r.len())
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(UsageError(format!(
                "Region {r:?} in --regions is not valid: use codes of 2 to 10 lowercase letters or digits, e.g. ams,iad,syd"
            )));
        }
        if regions.iter().any(|x| x == r) {
            return Err(UsageError(format!(
                "Region {r} is listed twice in --regions"
            )));
        }
        regions.push(r.to_string());
    }
    if regions.len() > MAX_REGIONS {
        return Err(UsageError(format!(
            "--regions lists {} regions; at most {MAX_REGIONS} fit on one box",
            regions.len()
        )));
    }
    Ok(regions)
}

impl Topology {
    pub fn backbone_ns(&self) -> String {
        format!("{}-bb", self.prefix)
    }
    pub fn control_ns(&self) -> String {
        format!("{}-cp", self.prefix)
    }
    pub fn host_ns(&self, region: &str) -> String {
        format!("{}-h-{region}", self.prefix)
    }
    pub fn client_ns(&self, region: &str) -> String {
        format!("{}-c-{region}", self.prefix)
    }

    pub(super) fn index(&self, region: &str) -> usize {
        self.regions.iter().position(|r| r == region).unwrap_or(0)
    }

    pub fn control_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2))
    }
    pub fn host_ip(&self, region: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, 10 + self.index(region) as u8)
    }
    pub(super) fn host_ip6(&self, region: &str) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 1, self.index(region) as u16)
    }
    pub(super) fn client_bb_ip(&self, region: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, 100 + self.index(region) as u8)
    }
    pub(super) fn client_bb_ip6(&self, region: &str) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 2, self.index(region) as u16)
    }
    /// The host's and the client's end of a city's access link.
    pub(super) fn access_ips(&self, region: &str) -> (Ipv4Addr, Ipv4Addr) {
        let i = self.index(region) as u8;
        (Ipv4Addr::new(10, 201, i, 1), Ipv4Addr::new(10, 201, i, 2))
    }
    pub(super) fn access_ips6(&self, region: &str) -> (Ipv6Addr, Ipv6Addr) {
        let i = self.index(region) as u16;
        (
            Ipv6Addr::new(0xfd00, 0x201, i, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0x201, i, 0, 0, 0, 0, 2),
        )
    }

    pub fn control_url(&self) -> String {
        format!("http://{}:{CONTROL_PORT}", self.control_ip())
    }

    /// Builds every namespace, link, address and route. Expects none of them to exist.
    pub fn build(&self) -> anyhow::Result<()> {
        let bb = self.backbone_ns();
        ip(&["netns", "add", &bb])?;
        ip(&["-n", &bb, "link", "set", "lo", "up"])?;
        ip(&["-n", &bb, "link", "add", "bb0", "type", "bridge"])?;
        ip(&["-n", &bb, "link", "set", "bb0", "up"])?;

        let cp = self.control_ns();
        self.attach(
            &cp,
            "cp",
            &format!("{}/24", self.control_ip()),
            Some("fd00:200::2/64"),
        )?;

        for region in &self.regions {
            let host = self.host_ns(region);
            let client = self.client_ns(region);
            self.attach(
                &host,
                &format!("h-{region}"),
                &format!("{}/24", self.host_ip(region)),
                Some(&format!("{}/64", self.host_ip6(region))),
            )?;
            self.attach(
                &client,
                &format!("c-{region}"),
                &format!("{}/24", self.client_bb_ip(region)),
                Some(&format!("{}/64", self.client_bb_ip6(region))),
            )?;
            // The anycast address on the host, and the city's access link to it.
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{ANYCAST_V4}/32"),
                "dev",
                "lo",
            ])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{ANYCAST_V6}/128"),
                "dev",
                "lo",
            ])?;
            ip(&[
                "-n", &host, "link", "add", "c0", "type", "veth", "peer", "name", "up0", "netns",
                &client,
            ])?;
            let (h4, c4) = self.access_ips(region);
            let (h6, c6) = self.access_ips6(region);
            ip(&["-n", &host, "addr", "add", &format!("{h4}/30"), "dev", "c0"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{h6}/64"),
                "dev",
                "c0",
                "nodad",
            ])?;
            ip(&["-n", &host, "link", "set", "c0", "up"])?;
            ip(&[
                "-n",
                &client,
                "addr",
                "add",
                &format!("{c4}/30"),
                "dev",
                "up0",
            ])?;
            ip(&[
                "-n",
                &client,
                "addr",
                "add",
                &format!("{c6}/64"),
                "dev",
                "up0",
                "nodad",
            ])?;
            ip(&["-n", &client, "link", "set", "up0", "up"])?;
            self.route_city(region, region)?;
        }
        Ok(())
    }

    /// Makes a namespace `ns` with a link `port` into the backbone bridge, named `bb0` inside.
    fn attach(&self, ns: &str, port: &str, v4: &str, v6: Option<&str>) -> anyhow::Result<()> {
        let bb = self.backbone_ns();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &bb, "link", "add", port, "type", "veth", "peer", "name", "bb0", "netns", ns,
        ])?;
        ip(&["-n", &bb, "link", "set", port, "master", "bb0"])?;
        ip(&["-n", &bb, "link", "set", port, "up"])?;
        ip(&["-n", ns, "addr", "add", v4, "dev", "bb0"])?;
        if let Some(v6) = v6 {
            ip(&["-n", ns, "addr", "add", v6, "dev", "bb0", "nodad"])?;
        }
        ip(&["-n", ns, "link", "set", "bb0", "up"])?;
        Ok(())
    }

    /// Routes the anycast addresses of `city`'s clients to the host of region `to`: over the
    /// access link when it is the city's own host, else over the backbone.
    pub fn route_city(&self, city: &str, to: &str) -> anyhow::Result<()> {
        let client = self.client_ns(city);
        let (via4, via6, dev) = if city == to {
            let (h4, _) = self.access_ips(city);
            let (h6, _) = self.access_ips6(city);
            (h4, h6, "up0")
        } else {
            (self.host_ip(to), self.host_ip6(to), "bb0")
        };
        ip(&[
            "-n",
            &client,
            "route",
            "replace",
            &format!("{ANYCAST_V4}/32"),
            "via",
            &via4.to_string(),
            "dev",
            dev,
        ])?;
        ip(&[
            "-n",
            &client,
            "-6",
            "route",
            "replace",
            &format!("{ANYCAST_V6}/128"),
            "via",
            &via6.to_string(),
            "dev",
            dev,
        ])?;
        Ok(())
    }

    /// The regions whose host namespace still exists.
    pub fn live_regions(&self) -> Vec<String> {
        self.regions
            .iter()
            .filter(|r| netns_exists(&self.host_ns(r)))
            .cloned()
            .collect()
    }

    /// Withdraws the anycast route of dead hosts: every city whose current host is gone is
    /// routed to its nearest live one. Returns `(city, region it now reaches)` for each change.
    pub fn reroute(&self) -> anyhow::Result<Vec<(String, String)>> {
        if super::bgp::active(self) {
            // The cities' routers move them by BGP.
            return Ok(Vec::new());
        }
        let live = self.live_regions();
        let mut changed = Vec::new();
        for city in &self.regions {
            if !netns_exists(&self.client_ns(city)) || live.contains(city) {
                continue;
            }
            let Some(to) = latency::nearest_first(city, live.iter().map(String::as_str))
                .first()
                .map(|s| s.to_string())
            else {
                continue;
            };
            self.route_city(city, &to)?;
            changed.push((city.clone(), to));
        }
        Ok(changed)
    }
}

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("Cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Namespaces left by a topology with this prefix (whatever its regions were).
pub fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    rest == "bb"
                        || rest == "cp"
                        || rest.strip_prefix("h-").is_some_and(is_region)
                        || rest.strip_prefix("c-").is_some_and(is_region)
                })
        })
        .collect();
    // Clients and hosts before the backbone they hang off.
    names.sort_by_key(|n| n.ends_with("-bb"));
    names
}

fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Processes whose network namespace is one of `namespaces` (the agents and the control
/// plane of a topology; machines run in namespaces of their own).
pub fn processes_in(namespaces: &[String]) -> Vec<nix::unistd::Pid> {
    use std::os::unix::fs::MetadataExt as _;
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new("/run/netns").join(n)).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// The agents' data dirs under the dev data dir, one per region that ever ran.
pub fn host_dirs(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("hosts")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

/// Kills and removes the runc containers of the agent whose data dir is `agent_dir`, removes
/// its machines' network namespaces and unmounts their root filesystems.
pub fn remove_machines(agent_dir: &Path) {
    let runc_root = agent_dir.join("machines").join("runc");
    if runc_root.exists() {
        let listed = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["kill", id, "KILL"])
                    .output();
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
    }
    if let Ok(machines) = std::fs::read_dir(agent_dir.join("machines").join("machines")) {
        for m in machines.flatten() {
            let name = format!("aloft-{}", m.file_name().to_string_lossy());
            if netns_exists(&name) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    unmount_under(agent_dir);
}

/// Lazily unmounts everything mounted below `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(&dir) && *p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Removes everything a topology with `prefix` left: processes in its namespaces, its agents'
/// machines (runc containers, their namespaces and mounts), and the namespaces (with every
/// link in them). Safe to run when nothing is left. Returns what it removed, for the user.
pub fn clean(prefix: &str, data_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let namespaces = leftover_namespaces(prefix);
    let pids = processes_in(&namespaces);
    for pid in &pids {
        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    if !pids.is_empty() {
        removed.push(format!("{} processes", pids.len()));
        // Give the kernel a moment to reap them before their namespaces go.
        for _ in 0..50 {
            if processes_in(&namespaces).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for (_, dir) in host_dirs(data_dir) {
        remove_machines(&dir);
    }
    for ns in &namespaces {
        if ip(&["netns", "del", ns]).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    removed
}

/// What a running `aloft dev` records for `aloft dev exec/kill/down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevState {
    pub pid: u32,
    pub topology: Topology,
    /// Pairs of regions whose hosts are cut off from each other (`aloft dev partition`).
    #[serde(default)]
    pub partitions: Vec<(String, String)>,
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev.json")
}

pub fn read_state(data_dir: &Path) -> Option<DevState> {
    let text = std::fs::read_to_string(state_path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `pid` is a live `aloft dev` (not a reused pid).
pub fn dev_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.iter().any(|a| *a == b"dev") && pid != std::process::id()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_bad_input_is_refused() {
        let t = Topology {
            prefix: "aloft".into(),
            regions: vec!["ams".into(), "iad".into(), "syd".into()],
        };
        assert_eq!(t.host_ns("syd"), "aloft-h-syd");
        assert_eq!(t.client_ns("ams"), "aloft-c-ams");
        assert_eq!(t.host_ip("iad"), Ipv4Addr::new(10, 200, 0, 11));
        assert!(check_prefix("aloft").is_ok());
        assert!(check_prefix("Aloft").is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("waytoolongprefix").is_err());
        assert!(check_prefix("a-b").is_err());
        assert_eq!(
            parse_regions("ams, iad,syd").unwrap(),
            ["ams", "iad", "syd"]
        );
        assert!(parse_regions("ams,ams").is_err());
        assert!(parse_regions("ams,").is_err());
        assert!(parse_regions("AMS").is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/var/lib/a\040b/rootfs"),
            PathBuf::from("/var/lib/a b/rootfs")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
