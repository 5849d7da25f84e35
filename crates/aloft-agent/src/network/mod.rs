//! Per-machine networking on a host.
//!
//! Each machine gets a network namespace bind-mounted at `<netns_dir>/aloft-<machine_id>` (the
//! OCI runtime joins it by path; `ip netns exec` works when the directory is `/run/netns`), a
//! veth pair whose inner end is the machine's `eth0`, a private IPv4 address from the host's
//! pool and a 6PN IPv6 address in its network (one per org). Every network has its own bridge
//! on the host (`<bridge_prefix><network as 8 hex digits>`); the host routes between bridges
//! and the outside, and the firewall (see [`firewall`]) drops traffic between bridges, so
//! machines of different orgs cannot reach each other while the host reaches all of them.
//!
//! This module does not decide addresses: the caller allocates them with the pure functions
//! in [`addr`] and keeps the allocation durable. It never touches links, routes or rules other
//! than the ones named by its own prefixes. See `docs/networking.md`.

pub mod addr;
mod firewall;
mod guard;
mod link;
pub mod netns;

#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};

pub use addr::{
    allocate, allocate_sixpn_machine, hosts_file, link_local_v6, parse_sixpn, resolv_conf,
    sixpn_address, sixpn_gateway, IpPrefix, Ipv4Pool, SixpnParts, BLOCKED_DESTINATIONS,
};

use firewall::Firewall;
use guard::{Guard, Port};
use link::Netlink;

/// The mesh's TUN device (`aloft-mesh`), deliberately outside the bridges' `aloft+` wildcard.
pub const MESH_DEVICE: &str = "alwg0";

/// Name of the machine's interface inside its namespace.
pub const MACHINE_INTERFACE: &str = "eth0";

/// How long setup waits for the machine's links and addresses to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest bridge prefix: the prefix plus 8 hex digits must fit in 15 characters.
pub const MAX_BRIDGE_PREFIX: usize = 7;

/// Errors of host and machine network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A [`NetworkOptions`] field is unusable.
    #[error("Network option {option} = {value:?} is invalid: {reason}")]
    InvalidOptions {
        option: &'static str,
        value: String,
        reason: &'static str,
    },
    /// An IPv4 pool is unusable.
    #[error("IPv4 pool {pool} is invalid: {reason}")]
    InvalidPool { pool: String, reason: &'static str },
    /// A [`MachineNetRequest`] does not fit this host.
    #[error("Network request for machine {machine_id:?} is invalid: {reason}")]
    InvalidRequest { machine_id: String, reason: String },
    /// A namespace file could not be created, joined or removed.
    #[error("Could not {op} network namespace {path}")]
    Namespace {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The netlink socket could not be opened.
    #[error("Could not open a netlink socket")]
    NetlinkSocket { source: io::Error },
    /// A netlink request failed.
    #[error("Could not {op}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    /// A link we just created or expect is not there.
    #[error("Link {name} does not exist")]
    MissingLink { name: String },
    /// A link did not come up in time.
    #[error("Link {name} did not come up within {timeout:?}")]
    LinkNotUp { name: String, timeout: Duration },
    /// An address did not become usable in time.
    #[error("Address {addr} did not become usable within {timeout:?}")]
    AddressNotReady { addr: IpAddr, timeout: Duration },
    /// `ensure_host` has not run on this host.
    #[error("Host networking is not prepared (chain {chain} is missing): run ensure_host first")]
    HostNotPrepared { chain: String },
    /// A firewall tool could not be started.
    #[error("Could not run {command}")]
    Spawn { command: String, source: io::Error },
    /// A firewall tool failed.
    #[error("Firewall command {command} failed: {stderr}")]
    Firewall { command: String, stderr: String },
    /// A sysctl could not be set.
    #[error("Could not set sysctl {key}")]
    Sysctl { key: String, source: io::Error },
}

/// How a host lays out machine networking. Tests use their own prefixes, directory and pool
/// so they never touch the host's real bridges or rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Bridge names are this plus the network id in 8 hex digits (at most 7 characters).
    pub bridge_prefix: String,
    /// Directory of the namespace files (`/run/netns` so `ip netns` sees them).
    pub netns_dir: PathBuf,
    /// This host's private IPv4 pool; its first address is every bridge's gateway address.
    pub ipv4_pool: Ipv4Pool,
    /// This host's 6PN host field.
    pub host_index: u32,
    /// Firewall chains are `<chain_prefix>-FWD` and `<chain_prefix>-NAT`; the nftables
    /// tables are the prefix in lower case with `-` as `_`.
    pub chain_prefix: String,
    /// Where machines may send DNS queries (UDP and TCP port 53) besides the pool gateway:
    /// the resolver in their `/etc/resolv.conf` when it is not the gateway.
    pub nameservers: Vec<IpAddr>,
    /// Destinations machines never reach, besides [`BLOCKED_DESTINATIONS`], the host's own
    /// addresses and its directly connected networks: the control plane's address, other
    /// hosts' addresses.
    pub protected: Vec<IpPrefix>,
}

impl NetworkOptions {
    /// The production layout for host `host_index`: bridges `aloft<network>`, namespaces in
    /// `/run/netns`, pool `172.19.<host>.0/24`, chains `ALOFT-*`.
    pub fn for_host(host_index: u32) -> Self {
        Self {
            bridge_prefix: "aloft".to_string(),
            netns_dir: PathBuf::from("/run/netns"),
            ipv4_pool: Ipv4Pool::for_host(host_index),
            host_index,
            chain_prefix: "ALOFT".to_string(),
            nameservers: Vec::new(),
            protected: Vec::new(),
        }
    }
}

/// What a machine's network is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNetRequest {
    /// The machine id (letters, digits, `-` and `_`).
    pub machine_id: String,
    /// The machine's private network: the org's 6PN network id.
    pub network: u32,
    /// An address of the host's pool, allocated with [`allocate`].
    pub ipv4: Ipv4Addr,
    /// The machine's 6PN address ([`sixpn_address`] of `network`, this host, a machine field).
    pub ipv6: Ipv6Addr,
}

/// A machine's network once set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNet {
    /// The namespace file the OCI runtime joins.
    pub netns_path: PathBuf,
    /// The machine's IPv4 address (prefix [`MachineNet::ipv4_prefix`] on `eth0`).
    pub ipv4: Ipv4Addr,
    /// The pool's prefix length.
    pub ipv4_prefix: u8,
    /// The machine's 6PN address (the host's /96 of its network is on-link on `eth0`).
    pub ipv6: Ipv6Addr,
    /// The IPv4 default gateway (the pool's first address, on every bridge).
    pub gateway_v4: Ipv4Addr,
    /// The IPv6 default gateway ([`sixpn_gateway`] of the network and host).
    pub gateway_v6: Ipv6Addr,
    /// The bridge of the machine's network.
    pub bridge: String,
    /// The host end of the machine's veth pair.
    pub veth_host: String,
    /// The hardware address of the machine's `eth0` ([`machine_mac`]).
    pub mac: [u8; 6],
}

/// Machine networking on one host.
#[derive(Debug)]
pub struct HostNetwork {
    options: NetworkOptions,
}

fn invalid_option(option: &'static str, value: &str, reason: &'static str) -> NetworkError {
    NetworkError::InvalidOptions {
        option,
        value: value.to_string(),
        reason,
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// FNV-1a, for short stable interface names derived from machine ids.
fn fnv1a(data: &str) -> u64 {
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hardware address of the machine's `eth0`: locally administered, unicast, and never
/// equal to a bridge's (those start with `02`).
pub fn machine_mac(machine_id: &str) -> [u8; 6] {
    let h = fnv1a(machine_id).to_be_bytes();
    [0x06, h[0], h[1], h[2], h[3], h[4]]
}

/// A locally administered unicast address for the bridge of `network`.
fn bridge_mac(network: u32) -> [u8; 6] {
    let n = network.to_be_bytes();
    [0x02, 0xa1, n[0], n[1], n[2], n[3]]
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(|source| NetworkError::Sysctl {
        key: key.to_string(),
        source,
    })
}

impl HostNetwork {
    /// Checks `options` and returns the host's network manager. Changes nothing on the host.
    pub fn new(options: NetworkOptions) -> Result<Self, NetworkError> {
        let prefix = &options.bridge_prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_BRIDGE_PREFIX
            || !prefix.chars().all(is_name_char)
        {
            return Err(invalid_option(
                "bridge_prefix",
                prefix,
                "it must be 1 to 7 letters, digits, '-' or '_'",
            ));
        }
        if prefix.starts_with("vm") || prefix.starts_with("vn") {
            return Err(invalid_option(
                "bridge_prefix",
                prefix,
                "it must not start with \"vm\" or \"vn\" (the machines' veth names)",
            ));
        }
        let chain = &options.chain_prefix;
        if chain.is_empty() || chain.len() > 20 || !chain.chars().all(is_name_char) {
            return Err(invalid_option(
                "chain_prefix",
                chain,
                "it must be 1 to 20 letters, digits, '-' or '_'",
            ));
        }
        if !options.netns_dir.is_absolute() {
            return Err(invalid_option(
                "netns_dir",
                &options.netns_dir.display().to_string(),
                "it must be an absolute path",
            ));
        }
        Ok(Self { options })
    }

    /// The options this host runs with.
    pub fn options(&self) -> &NetworkOptions {
        &self.options
    }

    /// The namespace file of `machine_id`.
    pub fn netns_path(&self, machine_id: &str) -> PathBuf {
        self.options.netns_dir.join(format!("aloft-{machine_id}"))
    }

    /// The bridge of `network` on this host.
    pub fn bridge_name(&self, network: u32) -> String {
        format!("{}{network:08x}", self.options.bridge_prefix)
    }

    /// The host and (before it is renamed `eth0` in the namespace) inner veth names.
    pub fn veth_names(machine_id: &str) -> (String, String) {
        let hash = fnv1a(machine_id) & 0xffff_ffff_ffff;
        (format!("vm{hash:012x}"), format!("vn{hash:012x}"))
    }

    fn guard(&self) -> Guard {
        Guard {
            table: guard::table_name(&self.options.chain_prefix),
            bridge_prefix: self.options.bridge_prefix.clone(),
            nameservers: self.options.nameservers.clone(),
        }
    }

    /// The network of one of our bridges, from its name.
    fn bridge_network(&self, bridge: &str) -> Option<u32> {
        bridge
            .strip_prefix(self.options.bridge_prefix.as_str())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
    }

    /// What machines never reach: the fixed list, the protected addresses, and every network
    /// the host is directly connected to except through its bridges and the mesh.
    async fn blocked_destinations(&self, nl: &Netlink) -> Result<Vec<IpPrefix>, NetworkError> {
        let mut blocked: Vec<IpPrefix> = BLOCKED_DESTINATIONS
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        blocked.extend(self.options.protected.iter().copied());
        for (link, addr, len) in nl.addresses().await? {
            let ours = link == MESH_DEVICE
                || link.starts_with("vm")
                || link.starts_with("vn")
                || (link.starts_with(self.options.bridge_prefix.as_str())
                    && self.bridge_network(&link).is_some());
            if ours || addr.is_loopback() {
                continue;
            }
            blocked.extend(IpPrefix::new(addr, len));
        }
        Ok(blocked)
    }

    fn firewall(&self) -> Firewall {
        Firewall {
            forward_chain: format!("{}-FWD", self.options.chain_prefix),
            nat_chain: format!("{}-NAT", self.options.chain_prefix),
            bridges: format!("{}+", self.options.bridge_prefix),
            pool: self.options.ipv4_pool.to_string(),
            bridge_prefix: self.options.bridge_prefix.clone(),
        }
    }

    /// Our bridges that exist now.
    async fn bridges(&self, nl: &Netlink) -> Result<Vec<String>, NetworkError> {
        let prefix = &self.options.bridge_prefix;
        Ok(nl
            .names()
            .await?
            .into_iter()
            .filter(|name| {
                name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.len() == 8 && rest.chars().all(|c| c.is_ascii_hexdigit())
                })
            })
            .collect())
    }

    /// Prepares the host: IPv4 and IPv6 forwarding on, firewall chains (rebuilt atomically for
    /// the bridges that exist) and the jumps to them. Idempotent; run it at agent start.
    pub async fn ensure_host(&self) -> Result<(), NetworkError> {
        write_sysctl("net.ipv4.ip_forward", "1")?;
        write_sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let nl = Netlink::connect()?;
        let locked = firewall::lock().await;
        let bridges = self.bridges(&nl).await?;
        self.firewall().ensure(&locked, &bridges).await?;
        let networks: Vec<(String, u32)> = bridges
            .iter()
            .filter_map(|b| Some((b.clone(), self.bridge_network(b)?)))
            .collect();
        let blocked = self.blocked_destinations(&nl).await?;
        self.guard().ensure(&locked, &networks, &blocked).await?;
        drop(locked);
        info!(pool = %self.options.ipv4_pool, bridges = bridges.len(), "host network ready");
        Ok(())
    }

    fn check_request(&self, req: &MachineNetRequest) -> Result<(), NetworkError> {
        let invalid = |reason: String| NetworkError::InvalidRequest {
            machine_id: req.machine_id.clone(),
            reason,
        };
        if req.machine_id.is_empty()
            || req.machine_id.len() > 64
            || !req.machine_id.chars().all(is_name_char)
        {
            return Err(invalid(
                "the id must be 1 to 64 letters, digits, '-' or '_'".to_string(),
            ));
        }
        let pool = &self.options.ipv4_pool;
        if !pool.is_machine_address(req.ipv4) {
            return Err(invalid(format!(
                "IPv4 address {} is not a machine address of pool {pool}",
                req.ipv4
            )));
        }
        let expected = |what: &str| {
            invalid(format!(
                "IPv6 address {} is not a 6PN address of network {:#x} on host {:#x} ({what})",
                req.ipv6, req.network, self.options.host_index
            ))
        };
        let parts = parse_sixpn(req.ipv6).ok_or_else(|| expected("it does not start with fdaa"))?;
        if parts.network != req.network {
            return Err(expected("wrong network field"));
        }
        if parts.host != self.options.host_index {
            return Err(expected("wrong host field"));
        }
        if parts.machine == 0 {
            return Err(expected("machine field 0 is the gateway"));
        }
        Ok(())
    }

    /// Builds the machine's namespace, veth, addresses, routes and its network's bridge.
    /// Anything left of an earlier attempt for the same machine is removed first, so calling
    /// it again after a crash works; on failure it removes what it made.
    pub async fn setup_machine(&self, req: &MachineNetRequest) -> Result<MachineNet, NetworkError> {
        self.check_request(req)?;
        self.teardown_machine(&req.machine_id, Some(req.ipv4))
            .await?;
        match self.build_machine(req).await {
            Ok(net) => {
                info!(machine = %req.machine_id, ipv4 = %net.ipv4, ipv6 = %net.ipv6, "machine network ready");
                Ok(net)
            }
            Err(err) => {
                if let Err(cleanup) = self.teardown_machine(&req.machine_id, Some(req.ipv4)).await {
                    warn!(machine = %req.machine_id, error = %cleanup, "cleanup after a failed network setup failed");
                }
                Err(err)
            }
        }
    }

    async fn build_machine(&self, req: &MachineNetRequest) -> Result<MachineNet, NetworkError> {
        let pool = self.options.ipv4_pool;
        let gateway_v4 = pool.gateway();
        let gateway_v6 = sixpn_gateway(req.network, self.options.host_index);
        let bridge = self.bridge_name(req.network);
        let (veth_host, veth_peer) = Self::veth_names(&req.machine_id);
        let netns_path = self.netns_path(&req.machine_id);

        let nl = Netlink::connect()?;
        let locked = firewall::lock().await;
        // The rule first: it fails cleanly when `ensure_host` has not run.
        self.firewall().ensure_bridge(&locked, &bridge).await?;
        self.guard()
            .ensure_bridge(&locked, &bridge, req.network)
            .await?;
        let bridge_index = nl.ensure_bridge(&bridge, bridge_mac(req.network)).await?;
        nl.add_address(bridge_index, IpAddr::V4(gateway_v4), 32)
            .await?;
        nl.add_address(
            bridge_index,
            IpAddr::V6(gateway_v6),
            addr::SIXPN_HOST_PREFIX_LEN,
        )
        .await?;
        drop(locked);

        let (mac, gateway_mac) = (machine_mac(&req.machine_id), bridge_mac(req.network));
        // The port's rules exist before the port does: nothing the machine sends is ever
        // unchecked.
        let locked = firewall::lock().await;
        let port = Port {
            veth: &veth_host,
            mac,
            ipv4: req.ipv4,
            ipv6: req.ipv6,
        };
        self.guard().add_port(&locked, &port).await?;
        drop(locked);
        netns::create(&netns_path)?;
        nl.create_veth(&veth_host, &veth_peer).await?;
        nl.attach(&veth_host, bridge_index).await?;
        let ns_file = fs::File::open(&netns_path).map_err(|source| NetworkError::Namespace {
            path: netns_path.clone(),
            op: "open",
            source,
        })?;
        nl.move_to(&veth_peer, &ns_file).await?;
        drop(ns_file);

        let (ipv4, ipv6, prefix) = (req.ipv4, req.ipv6, pool.prefix());
        netns::run_async_in(netns_path.clone(), move || async move {
            let nl = Netlink::connect()?;
            let lo = nl
                .index("lo")
                .await?
                .ok_or_else(|| NetworkError::MissingLink {
                    name: "lo".to_string(),
                })?;
            nl.set_up(lo, "lo").await?;
            let eth0 = nl.rename_up(&veth_peer, MACHINE_INTERFACE, mac).await?;
            nl.add_address(eth0, IpAddr::V4(ipv4), prefix).await?;
            nl.add_address(eth0, IpAddr::V6(ipv6), addr::SIXPN_HOST_PREFIX_LEN)
                .await?;
            nl.add_default_v4(gateway_v4, eth0).await?;
            nl.add_default_v6(gateway_v6, eth0).await?;
            // Both ends know each other's hardware address up front, so no packet between
            // the machine and the host waits on (or is lost to) ARP or neighbour discovery.
            nl.set_neighbour(eth0, IpAddr::V4(gateway_v4), gateway_mac)
                .await?;
            nl.set_neighbour(eth0, IpAddr::V6(gateway_v6), gateway_mac)
                .await?;
            nl.wait_oper_up(MACHINE_INTERFACE, LINK_UP_TIMEOUT).await?;
            nl.wait_local_v6(ipv6, LINK_UP_TIMEOUT).await
        })
        .await?;

        nl.replace_host_route_v4(ipv4, bridge_index, gateway_v4)
            .await?;
        nl.set_neighbour(bridge_index, IpAddr::V4(ipv4), mac)
            .await?;
        nl.set_neighbour(bridge_index, IpAddr::V6(ipv6), mac)
            .await?;
        nl.wait_oper_up(&veth_host, LINK_UP_TIMEOUT).await?;
        // A new bridge gets its carrier from its first port; until the kernel has applied
        // that, packets the host sends through it are dropped.
        nl.wait_oper_up(&bridge, LINK_UP_TIMEOUT).await?;
        nl.wait_local_v6(gateway_v6, LINK_UP_TIMEOUT).await?;
        Ok(MachineNet {
            netns_path,
            ipv4,
            ipv4_prefix: prefix,
            ipv6,
            gateway_v4,
            gateway_v6,
            bridge,
            veth_host,
            mac,
        })
    }

    /// Removes the machine's host route and neighbour entries, veth and namespace. Pass the machine's IPv4 address
    /// when known (the agent's record); with `None` it is read from the namespace, so a route
    /// is left behind only if the namespace is already gone. Idempotent: parts that are
    /// already gone are skipped, so it is safe after a crash at any point of
    /// [`HostNetwork::setup_machine`] or of itself. The bridge stays.
    pub async fn teardown_machine(
        &self,
        machine_id: &str,
        ipv4: Option<Ipv4Addr>,
    ) -> Result<(), NetworkError> {
        let (veth_host, veth_peer) = Self::veth_names(machine_id);
        let path = self.netns_path(machine_id);
        let addrs = match ipv4 {
            Some(addr) => vec![addr],
            // Without the caller's record, the namespace (if it is still there) knows.
            None if netns::exists(&path) => {
                netns::run_async_in(path.clone(), || async {
                    let nl = Netlink::connect()?;
                    match nl.index(MACHINE_INTERFACE).await? {
                        Some(eth0) => nl.ipv4_addresses(eth0).await,
                        None => Ok(Vec::new()),
                    }
                })
                .await?
            }
            None => Vec::new(),
        };
        let nl = Netlink::connect()?;
        for addr in addrs {
            nl.delete_host_route_v4(addr).await?;
        }
        let mut bridges = Vec::new();
        for name in self.bridges(&nl).await? {
            bridges.extend(nl.index(&name).await?);
        }
        nl.delete_neighbours_to(&bridges, machine_mac(machine_id))
            .await?;
        // The peer is only in the host namespace if a setup stopped before moving it.
        nl.delete_link(&veth_host).await?;
        nl.delete_link(&veth_peer).await?;
        let locked = firewall::lock().await;
        self.guard().remove_port(&locked, &veth_host).await?;
        drop(locked);
        netns::delete(&path)?;
        debug!(machine = %machine_id, "machine network removed");
        Ok(())
    }

    /// Whether the machine's namespace and host veth exist, e.g. to re-adopt a running
    /// machine after an agent restart instead of setting its network up again.
    pub async fn is_set_up(&self, machine_id: &str) -> Result<bool, NetworkError> {
        if !netns::exists(&self.netns_path(machine_id)) {
            return Ok(false);
        }
        let (veth_host, _) = Self::veth_names(machine_id);
        Ok(Netlink::connect()?.index(&veth_host).await?.is_some())
    }

    /// Removes this host's bridges and firewall chains (for uninstalling, and for tests).
    /// Machines must have been torn down first.
    pub async fn teardown_host(&self) -> Result<(), NetworkError> {
        let nl = Netlink::connect()?;
        let locked = firewall::lock().await;
        for bridge in self.bridges(&nl).await? {
            nl.delete_link(&bridge).await?;
        }
        self.firewall().remove(&locked).await?;
        self.guard().remove(&locked).await
    }
}
