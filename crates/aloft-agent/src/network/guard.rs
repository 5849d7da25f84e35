//! What a machine may send and where it may send it, in nftables tables of our own (one
//! `bridge` and one `inet` table named after the chain prefix, e.g. `aloft`).
//!
//! These tables only ever drop (or stop looking, with `accept`, which ends the evaluation of
//! our table only); what the host lets through at all is still decided by the `iptables`
//! chains of [`super::firewall`]. A packet dropped by any table is dropped, so the rules
//! here hold whatever other tables (Docker's, the host's own) accept.
//!
//! `bridge` table, hook `prerouting` (every frame a machine puts on its bridge, before the
//! bridge forwards it or hands it to the host; does not need `br_netfilter`): a verdict map
//! from the host end of each machine's veth to a chain of that machine, which drops frames
//! whose source MAC is not the machine's, ARP whose sender is not the machine's MAC and IPv4
//! address, IPv4 from any other source address, IPv6 from outside its 6PN /112 and its
//! link-local address, neighbour advertisements for any other target, router advertisements
//! and redirects, and any other ethertype (VLAN tags included).
//!
//! `inet` table:
//! - `input` (the host itself): from a bridge only answers to the host's own connections,
//!   DNS (UDP and TCP port 53) to the bridge's own addresses (the pool gateway) and the
//!   configured nameservers, and neighbour discovery; from the mesh device, nothing from a
//!   machine network but answers (only the infrastructure network `fdaa:0:0::/48`, other
//!   hosts' edges and probes, opens connections to the host over the mesh).
//! - `forward` (through the host): from a bridge, its own bridge and its own 6PN network over
//!   the mesh are fine; then answers; then DNS to configured nameservers; then nothing to
//!   another bridge, nothing else to the mesh, and nothing to the blocked destinations (private, link-local and special ranges,
//!   the host's directly connected networks, the protected addresses such as the control
//!   plane's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::addr::{link_local_v6, IpPrefix, SIXPN_MACHINE_PREFIX_LEN};
use super::firewall::Locked;
use super::{NetworkError, MESH_DEVICE};

/// The infrastructure network (6PN network 0): edges and health checks of other hosts.
const INFRA_NETWORK: &str = "fdaa:0:0::/48";

/// The rule set of one host.
pub(super) struct Guard {
    /// The table name in both families.
    pub(super) table: String,
    /// Bridge names are this plus the network in 8 hex digits.
    pub(super) bridge_prefix: String,
    /// Where machines may send DNS queries besides their bridge's own addresses.
    pub(super) nameservers: Vec<IpAddr>,
}

/// One machine's port on its bridge, and what it may claim to be.
pub(super) struct Port<'a> {
    pub(super) veth: &'a str,
    pub(super) mac: [u8; 6],
    pub(super) ipv4: Ipv4Addr,
    pub(super) ipv6: Ipv6Addr,
}

/// The nftables name of a link or machine chain: letters, digits and `_`.
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The table name for a chain prefix: lower case, `-` as `_`.
pub(super) fn table_name(chain_prefix: &str) -> String {
    ident(&chain_prefix.to_ascii_lowercase())
}

async fn nft(args: &[&str], script: Option<&str>) -> Result<Result<(), String>, NetworkError> {
    let out = super::firewall::output("nft", args, script).await?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    })
}

/// Applies `script` atomically (all of it or nothing).
async fn apply(script: &str) -> Result<(), NetworkError> {
    nft(&["-f", "-"], Some(script))
        .await?
        .map_err(|stderr| NetworkError::Firewall {
            command: format!("nft -f - <<EOF\n{script}EOF"),
            stderr,
        })
}

/// Whether `nft list …args` finds the object.
async fn exists(args: &[&str]) -> Result<bool, NetworkError> {
    let mut full = vec!["list"];
    full.extend_from_slice(args);
    Ok(nft(&full, None).await?.is_ok())
}

impl Guard {
    fn bridges_glob(&self) -> String {
        format!("\"{}*\"", self.bridge_prefix)
    }

    /// The script that (re)builds the host's chains and sets, keeping the machines' chains
    /// and the bridge and port maps; `blocked` are the destinations machines never reach.
    pub(super) fn host_script(&self, bridges: &[(String, u32)], blocked: &[IpPrefix]) -> String {
        let t = &self.table;
        let b = self.bridges_glob();
        let mut s = String::new();
        let mut line = |text: String| {
            s.push_str(&text);
            s.push('\n');
        };
        line(format!("add table bridge {t}"));
        line(format!(
            "add chain bridge {t} pre {{ type filter hook prerouting priority -200; policy accept; }}"
        ));
        line(format!(
            "add map bridge {t} ports {{ type ifname : verdict; }}"
        ));
        line(format!("flush chain bridge {t} pre"));
        line(format!("add rule bridge {t} pre iifname vmap @ports"));

        line(format!("add table inet {t}"));
        for (set, family) in [("blocked4", "ipv4_addr"), ("blocked6", "ipv6_addr")] {
            line(format!(
                "add set inet {t} {set} {{ type {family}; flags interval; auto-merge; }}"
            ));
            line(format!("flush set inet {t} {set}"));
        }
        let (v4, v6): (Vec<&IpPrefix>, Vec<&IpPrefix>) = blocked.iter().partition(|p| p.is_ipv4());
        for (set, list) in [("blocked4", v4), ("blocked6", v6)] {
            if !list.is_empty() {
                let items: Vec<String> = list.iter().map(|p| p.to_string()).collect();
                line(format!(
                    "add element inet {t} {set} {{ {} }}",
                    items.join(", ")
                ));
            }
        }
        line(format!(
            "add map inet {t} bridges {{ type ifname : verdict; }}"
        ));
        for (chain, hook) in [("input", "input"), ("forward", "forward")] {
            line(format!(
                "add chain inet {t} {chain} {{ type filter hook {hook} priority -10; policy accept; }}"
            ));
        }
        for chain in ["input", "forward", "machine_in", "machine_out"] {
            line(format!("add chain inet {t} {chain}"));
            line(format!("flush chain inet {t} {chain}"));
        }
        line(format!(
            "add rule inet {t} input iifname {b} jump machine_in"
        ));
        line(format!(
            "add rule inet {t} input iifname \"{MESH_DEVICE}\" ct state established,related accept"
        ));
        line(format!(
            "add rule inet {t} input iifname \"{MESH_DEVICE}\" ip6 saddr != {INFRA_NETWORK} drop"
        ));
        line(format!(
            "add rule inet {t} forward iifname {b} jump machine_out"
        ));

        line(format!(
            "add rule inet {t} machine_in ct state established,related accept"
        ));
        // DNS on the addresses of the bridge the query came in on: the pool gateway (and the
        // network's 6PN gateway), whichever host's pool that is.
        line(format!(
            "add rule inet {t} machine_in meta l4proto {{ tcp, udp }} th dport 53 fib daddr . iif type local accept"
        ));
        for ns in &self.nameservers {
            let family = if ns.is_ipv4() { "ip" } else { "ip6" };
            line(format!(
                "add rule inet {t} machine_in {family} daddr {ns} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ));
        }
        line(format!(
            "add rule inet {t} machine_in icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        ));
        line(format!("add rule inet {t} machine_in drop"));

        line(format!(
            "add rule inet {t} machine_out iifname vmap @bridges"
        ));
        line(format!(
            "add rule inet {t} machine_out ct state established,related accept"
        ));
        line(format!("add rule inet {t} machine_out oifname {b} drop"));
        for ns in &self.nameservers {
            let family = if ns.is_ipv4() { "ip" } else { "ip6" };
            line(format!(
                "add rule inet {t} machine_out {family} daddr {ns} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ));
        }
        line(format!(
            "add rule inet {t} machine_out oifname \"{MESH_DEVICE}\" drop"
        ));
        line(format!(
            "add rule inet {t} machine_out ip daddr @blocked4 drop"
        ));
        line(format!(
            "add rule inet {t} machine_out ip6 daddr @blocked6 drop"
        ));
        for (bridge, network) in bridges {
            s.push_str(&self.bridge_script(bridge, *network));
        }
        s
    }

    /// The chain of one bridge: traffic within it, and its own 6PN network over the mesh.
    pub(super) fn bridge_script(&self, bridge: &str, network: u32) -> String {
        let t = &self.table;
        let chain = format!("b_{}", ident(bridge));
        let own = format!("fdaa:{:x}:{:x}::/48", network >> 16, network & 0xffff);
        format!(
            "add chain inet {t} {chain}\n\
             flush chain inet {t} {chain}\n\
             add rule inet {t} {chain} oifname \"{bridge}\" accept\n\
             add rule inet {t} {chain} oifname \"{MESH_DEVICE}\" ip6 saddr {own} ip6 daddr {own} accept\n\
             add element inet {t} bridges {{ \"{bridge}\" : jump {chain} }}\n"
        )
    }

    /// Rebuilds the host's chains and sets (idempotent; machines' chains stay).
    pub(super) async fn ensure(
        &self,
        _locked: &Locked,
        bridges: &[(String, u32)],
        blocked: &[IpPrefix],
    ) -> Result<(), NetworkError> {
        apply(&self.host_script(bridges, blocked)).await
    }

    /// Adds the chain of `bridge` (idempotent). Run after [`Guard::ensure`] (the caller
    /// checks the host is prepared first).
    pub(super) async fn ensure_bridge(
        &self,
        _locked: &Locked,
        bridge: &str,
        network: u32,
    ) -> Result<(), NetworkError> {
        apply(&self.bridge_script(bridge, network)).await
    }

    /// The chain of one machine's port.
    pub(super) fn port_script(&self, port: &Port<'_>) -> String {
        let t = &self.table;
        let chain = ident(port.veth);
        let mac = mac_text(port.mac);
        let (ipv4, ipv6) = (port.ipv4, port.ipv6);
        let ll = link_local_v6(port.mac);
        let own = IpPrefix::new(IpAddr::V6(ipv6), SIXPN_MACHINE_PREFIX_LEN)
            .map_or_else(|| ipv6.to_string(), |p| p.to_string());
        let as_int = |a: Ipv6Addr| format!("0x{:032x}", u128::from(a));
        let mut s = format!("add chain bridge {t} {chain}\nflush chain bridge {t} {chain}\n");
        for rule in [
            format!("ether saddr != {mac} drop"),
            format!("arp saddr ether != {mac} drop"),
            format!("arp saddr ip != {ipv4} drop"),
            format!("ip saddr != {ipv4} drop"),
            format!("ip6 saddr != {{ {own}, {ll} }} drop"),
            "icmpv6 type { nd-router-advert, nd-redirect } drop".to_string(),
            // The target address of a neighbour advertisement is bytes 8 to 24 of the
            // message: it must be in the machine's /112 or its link-local address.
            format!(
                "icmpv6 type nd-neighbor-advert @th,64,112 != 0x{:028x} @th,64,128 != {} drop",
                u128::from(ipv6) >> 16,
                as_int(ll)
            ),
            "ether type != { ip, ip6, arp } drop".to_string(),
        ] {
            s.push_str(&format!("add rule bridge {t} {chain} {rule}\n"));
        }
        s.push_str(&format!(
            "add element bridge {t} ports {{ \"{}\" : jump {chain} }}\n",
            port.veth
        ));
        s
    }

    /// Installs (or replaces) the rules of one machine's port. Run after [`Guard::ensure`].
    pub(super) async fn add_port(
        &self,
        _locked: &Locked,
        port: &Port<'_>,
    ) -> Result<(), NetworkError> {
        apply(&self.port_script(port)).await
    }

    /// Removes the rules of the machine port `veth`; missing ones are fine.
    pub(super) async fn remove_port(
        &self,
        _locked: &Locked,
        veth: &str,
    ) -> Result<(), NetworkError> {
        let t = &self.table;
        let chain = ident(veth);
        if !exists(&["chain", "bridge", t, &chain]).await? {
            return Ok(());
        }
        let mut script = String::new();
        if nft(
            &[
                "get",
                "element",
                "bridge",
                t,
                "ports",
                &format!("{{ \"{veth}\" }}"),
            ],
            None,
        )
        .await?
        .is_ok()
        {
            script.push_str(&format!(
                "delete element bridge {t} ports {{ \"{veth}\" }}\n"
            ));
        }
        script.push_str(&format!(
            "flush chain bridge {t} {chain}\ndelete chain bridge {t} {chain}\n"
        ));
        apply(&script).await
    }

    /// Removes both tables; missing ones are fine.
    pub(super) async fn remove(&self, _locked: &Locked) -> Result<(), NetworkError> {
        for family in ["bridge", "inet"] {
            if exists(&["table", family, &self.table]).await? {
                apply(&format!("delete table {family} {}\n", self.table)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    #[test]
    fn a_port_may_claim_only_its_own_addresses() {
        let guard = Guard {
            table: table_name("ALOFT-T1"),
            bridge_prefix: "aloft".into(),
            nameservers: vec![IpAddr::V4(Ipv4Addr::new(172, 19, 1, 1))],
        };
        assert_eq!(guard.table, "aloft_t1");
        let script = guard.port_script(&Port {
            veth: "vm0123456789ab",
            mac: [6, 1, 2, 3, 4, 5],
            ipv4: Ipv4Addr::new(172, 19, 1, 2),
            ipv6: "fdaa:0:1:0:1:0:1:2".parse().unwrap(),
        });
        assert!(
            script.contains("ether saddr != 06:01:02:03:04:05 drop"),
            "{script}"
        );
        assert!(
            script.contains("arp saddr ip != 172.19.1.2 drop"),
            "{script}"
        );
        assert!(
            script.contains("ip6 saddr != { fdaa:0:1:0:1:0:1:0/112, fe80::401:2ff:fe03:405 } drop"),
            "{script}"
        );
        assert!(
            script.contains("@th,64,112 != 0xfdaa000000010000000100000001"),
            "{script}"
        );
        assert!(script.ends_with(
            "add element bridge aloft_t1 ports { \"vm0123456789ab\" : jump vm0123456789ab }\n"
        ));
        let host = guard.host_script(
            &[("aloft00012345".into(), 0x12345)],
            &["10.0.0.0/8".parse().unwrap(), "fc00::/7".parse().unwrap()],
        );
        assert!(host.contains("add element inet aloft_t1 blocked4 { 10.0.0.0/8 }"));
        assert!(host.contains("add element inet aloft_t1 blocked6 { fc00::/7 }"));
        assert!(host.contains(
            "machine_in ip daddr 172.19.1.1 meta l4proto { tcp, udp } th dport 53 accept"
        ));
        assert!(host.contains(
            "b_aloft00012345 oifname \"alwg0\" ip6 saddr fdaa:1:2345::/48 ip6 daddr fdaa:1:2345::/48 accept"
        ));
    }
}
