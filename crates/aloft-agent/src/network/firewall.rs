//! The host firewall rules machines need, in chains of our own, through `iptables` and
//! `ip6tables` (the standard tools; both the nft and legacy back ends accept these rules).
//!
//! Filter chain `<prefix>-FWD` (IPv4 and IPv6), jumped to first from `FORWARD`:
//! 1. `-i B -o B -j ACCEPT` for each bridge B (machines of one network reach each other),
//! 2. `-i P+ -o P+ -j DROP` (no traffic between networks),
//! 3. `-i P+ -j ACCEPT` (machines reach the outside),
//! 4. `-o P+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` (and get answers),
//! 5. `-o P+ -j DROP` (nothing else is forwarded to machines).
//!
//! where `P+` matches every bridge of this host. NAT chain `<prefix>-NAT` (IPv4), jumped to
//! from `POSTROUTING`: `-s <pool> ! -o P+ -j MASQUERADE`.
//!
//! Traffic between the bridges and the mesh device `alwg0` (IPv6 only: 6PN crosses hosts, the
//! IPv4 pools are host-local). With `N(B)` the `/48` of bridge B's network and `N(0)` the
//! infrastructure network's (edges and health checks of other hosts), before the rules above:
//! - `-i alwg0 -o B -s N(B) -j ACCEPT` and `-i alwg0 -o B -s N(0) -j ACCEPT` for each B,
//! - `-i B -o alwg0 -s N(B) -d N(B) -j ACCEPT` for each B,
//! - `-i P+ -o alwg0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` (answers),
//! - `-i P+ -o alwg0 -j DROP` (nothing else leaves for the mesh);
//!
//! anything else from the mesh to a bridge meets rules 4 and 5 (answers only).

use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::{Mutex, MutexGuard};

use super::{NetworkError, MESH_DEVICE};

/// Serialises our own check-then-change sequences (and the bridge creation they depend on)
/// within this process; `-w` waits for other processes' xtables lock.
static IPTABLES: Mutex<()> = Mutex::const_new(());

/// Proof that the caller holds the firewall lock.
pub(super) struct Locked {
    _guard: MutexGuard<'static, ()>,
}

/// Takes the firewall lock. Hold it across "list or create bridges, then change rules" so a
/// concurrent [`Firewall::ensure`] never rebuilds the chain without a bridge's rule.
pub(super) async fn lock() -> Locked {
    Locked {
        _guard: IPTABLES.lock().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// The rule set of one host.
pub(super) struct Firewall {
    /// `<chain_prefix>-FWD`.
    pub(super) forward_chain: String,
    /// `<chain_prefix>-NAT`.
    pub(super) nat_chain: String,
    /// `<bridge_prefix>+`: every bridge of this host.
    pub(super) bridges: String,
    /// The IPv4 pool in CIDR notation.
    pub(super) pool: String,
    /// Bridge names are this plus the network in 8 hex digits.
    pub(super) bridge_prefix: String,
}

/// The `/48` of 6PN network `network`: `fdaa:<network>::/48`.
fn sixpn_network(network: u32) -> String {
    format!("fdaa:{:x}:{:x}::/48", network >> 16, network & 0xffff)
}

/// Runs `program args`, feeding it `stdin` when given; its output (stderr captured) whatever
/// its exit status. Fails only when it cannot be run.
pub(super) async fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, NetworkError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| NetworkError::Spawn {
        command: format!("{program} {}", args.join(" ")),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(input.as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    child.wait_with_output().await.map_err(spawn_error)
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<bool, NetworkError> {
    let command = || format!("{program} {}", args.join(" "));
    let out = output(program, args, stdin).await?;
    if out.status.success() {
        return Ok(true);
    }
    // iptables exits with 1 for "no such rule/chain" on -C/-S/-D and uses other codes for
    // real failures (2: bad arguments, 4: resource problem).
    if out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(NetworkError::Firewall {
        command: command(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `iptables`/`ip6tables` with `args` and fails unless it succeeds.
async fn must(family: Family, args: &[&str]) -> Result<(), NetworkError> {
    let mut full = vec!["-w"];
    full.extend_from_slice(args);
    if run(family.iptables(), &full, None).await? {
        Ok(())
    } else {
        Err(NetworkError::Firewall {
            command: format!("{} {}", family.iptables(), args.join(" ")),
            stderr: "exit status 1".to_string(),
        })
    }
}

/// Whether `iptables`/`ip6tables` with `args` succeeds (for `-C` and `-S`).
async fn holds(family: Family, args: &[&str]) -> Result<bool, NetworkError> {
    let mut full = vec!["-w"];
    full.extend_from_slice(args);
    run(family.iptables(), &full, None).await
}

impl Firewall {
    fn static_rules(&self, family: Family) -> Vec<String> {
        let b = &self.bridges;
        let mut rules = Vec::new();
        if family == Family::V6 {
            rules.push(format!(
                "-i {b} -o {MESH_DEVICE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ));
            rules.push(format!("-i {b} -o {MESH_DEVICE} -j DROP"));
        }
        rules.extend([
            format!("-i {b} -o {b} -j DROP"),
            format!("-i {b} -j ACCEPT"),
            format!("-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            format!("-o {b} -j DROP"),
        ]);
        rules
    }

    /// The rules of one bridge: its machines reach each other, and (IPv6) its network's
    /// traffic crosses the mesh.
    fn bridge_rules(&self, family: Family, bridge: &str) -> Vec<String> {
        let mut rules = vec![format!("-i {bridge} -o {bridge} -j ACCEPT")];
        let network = bridge
            .strip_prefix(self.bridge_prefix.as_str())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok());
        if let (Family::V6, Some(network)) = (family, network) {
            let own = sixpn_network(network);
            let infra = sixpn_network(0);
            rules.push(format!("-i {MESH_DEVICE} -o {bridge} -s {own} -j ACCEPT"));
            rules.push(format!("-i {MESH_DEVICE} -o {bridge} -s {infra} -j ACCEPT"));
            rules.push(format!(
                "-i {bridge} -o {MESH_DEVICE} -s {own} -d {own} -j ACCEPT"
            ));
        }
        rules
    }

    /// Rebuilds the chains of both families atomically (per family) for the given existing
    /// bridges, and makes sure `FORWARD` and `POSTROUTING` jump to them.
    pub(super) async fn ensure(
        &self,
        _locked: &Locked,
        bridges: &[String],
    ) -> Result<(), NetworkError> {
        for family in [Family::V4, Family::V6] {
            let mut script = format!("*filter\n:{} - [0:0]\n", self.forward_chain);
            for bridge in bridges {
                for rule in self.bridge_rules(family, bridge) {
                    script.push_str(&format!("-A {} {rule}\n", self.forward_chain));
                }
            }
            for rule in self.static_rules(family) {
                script.push_str(&format!("-A {} {rule}\n", self.forward_chain));
            }
            script.push_str("COMMIT\n");
            if family == Family::V4 {
                script.push_str(&format!(
                    "*nat\n:{chain} - [0:0]\n-A {chain} -s {pool} ! -o {b} -j MASQUERADE\nCOMMIT\n",
                    chain = self.nat_chain,
                    pool = self.pool,
                    b = self.bridges,
                ));
            }
            if !run(family.restore(), &["-w", "--noflush"], Some(&script)).await? {
                return Err(NetworkError::Firewall {
                    command: format!("{} --noflush", family.restore()),
                    stderr: "exit status 1".to_string(),
                });
            }
            let jump = ["FORWARD", "-j", self.forward_chain.as_str()];
            if !holds(family, &[&["-C"][..], &jump[..]].concat()).await? {
                must(family, &["-I", "FORWARD", "1", "-j", &self.forward_chain]).await?;
            }
            if family == Family::V4 {
                let jump = [
                    "-t",
                    "nat",
                    "-C",
                    "POSTROUTING",
                    "-j",
                    self.nat_chain.as_str(),
                ];
                if !holds(family, &jump).await? {
                    must(
                        family,
                        &["-t", "nat", "-I", "POSTROUTING", "1", "-j", &self.nat_chain],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Lets the machines on `bridge` reach each other (idempotent). Fails without changing
    /// anything if [`Firewall::ensure`] has not run.
    pub(super) async fn ensure_bridge(
        &self,
        _locked: &Locked,
        bridge: &str,
    ) -> Result<(), NetworkError> {
        for family in [Family::V4, Family::V6] {
            if !holds(family, &["-S", &self.forward_chain]).await? {
                return Err(NetworkError::HostNotPrepared {
                    chain: self.forward_chain.clone(),
                });
            }
            // Inserted last to first at the top, so they end up in order before the rest.
            for rule in self.bridge_rules(family, bridge).iter().rev() {
                let rule: Vec<&str> = rule.split(' ').collect();
                let check = [&["-C", self.forward_chain.as_str()][..], &rule[..]].concat();
                if !holds(family, &check).await? {
                    let insert =
                        [&["-I", self.forward_chain.as_str(), "1"][..], &rule[..]].concat();
                    must(family, &insert).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes the jumps and chains of both families; missing ones are fine.
    pub(super) async fn remove(&self, _locked: &Locked) -> Result<(), NetworkError> {
        for family in [Family::V4, Family::V6] {
            while holds(family, &["-D", "FORWARD", "-j", &self.forward_chain]).await? {}
            if holds(family, &["-S", &self.forward_chain]).await? {
                must(family, &["-F", &self.forward_chain]).await?;
                must(family, &["-X", &self.forward_chain]).await?;
            }
            if family == Family::V4 {
                while holds(
                    family,
                    &["-t", "nat", "-D", "POSTROUTING", "-j", &self.nat_chain],
                )
                .await?
                {}
                if holds(family, &["-t", "nat", "-S", &self.nat_chain]).await? {
                    must(family, &["-t", "nat", "-F", &self.nat_chain]).await?;
                    must(family, &["-t", "nat", "-X", &self.nat_chain]).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    fn firewall() -> Firewall {
        Firewall {
            forward_chain: "ALOFT-FWD".into(),
            nat_chain: "ALOFT-NAT".into(),
            bridges: "aloft+".into(),
            pool: "172.19.1.0/24".into(),
            bridge_prefix: "aloft".into(),
        }
    }

    #[test]
    fn mesh_rules_let_only_a_bridge_s_own_network_and_infra_cross() {
        let fw = firewall();
        let v6 = fw.bridge_rules(Family::V6, "aloft00012345");
        assert_eq!(
            v6,
            vec![
                "-i aloft00012345 -o aloft00012345 -j ACCEPT",
                "-i alwg0 -o aloft00012345 -s fdaa:1:2345::/48 -j ACCEPT",
                "-i alwg0 -o aloft00012345 -s fdaa:0:0::/48 -j ACCEPT",
                "-i aloft00012345 -o alwg0 -s fdaa:1:2345::/48 -d fdaa:1:2345::/48 -j ACCEPT",
            ]
        );
        assert_eq!(fw.bridge_rules(Family::V4, "aloft00012345").len(), 1);
        let statics = fw.static_rules(Family::V6);
        assert_eq!(statics[1], "-i aloft+ -o alwg0 -j DROP");
        // The mesh's drop comes before the bridges' general accept of outbound traffic.
        let accept_out = statics
            .iter()
            .position(|r| r == "-i aloft+ -j ACCEPT")
            .unwrap();
        assert!(accept_out > 1);
        assert!(!fw
            .static_rules(Family::V4)
            .iter()
            .any(|r| r.contains(MESH_DEVICE)));
    }
}
