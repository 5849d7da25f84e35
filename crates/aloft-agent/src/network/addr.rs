//! Address arithmetic: the host's private IPv4 pool, 6PN IPv6 addresses, and the small files
//! (`/etc/hosts`, `/etc/resolv.conf`) a machine gets. Pure functions only; no system calls.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::NetworkError;

/// The first 16 bits of every 6PN address.
pub const SIXPN_PREFIX: u16 = 0xfdaa;

/// The value of the free low 16 bits in a machine's own address (`…:2`, as on Fly).
pub const SIXPN_MACHINE_SUFFIX: u16 = 2;

/// The value of the free low 16 bits in a host's gateway address (`…::1`, machine field 0).
pub const SIXPN_GATEWAY_SUFFIX: u16 = 1;

/// Length of the prefix that belongs to one machine.
pub const SIXPN_MACHINE_PREFIX_LEN: u8 = 112;

/// Length of the prefix that belongs to one network (org) on one host.
pub const SIXPN_HOST_PREFIX_LEN: u8 = 96;

/// A host's private IPv4 pool: an IPv4 network whose first usable address is the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Pool {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Pool {
    /// A pool from a network address and prefix length. Host bits in `addr` are cleared.
    /// The prefix must leave room for a gateway and at least one machine (at most /30).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        if !(8..=30).contains(&prefix) {
            return Err(NetworkError::InvalidPool {
                pool: format!("{addr}/{prefix}"),
                reason: "the prefix length must be between 8 and 30",
            });
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The default pool of host `host_index`: `172.19.<host_index % 256>.0/24`.
    pub fn for_host(host_index: u32) -> Self {
        let third = u8::try_from(host_index % 256).unwrap_or_default();
        Self {
            network: Ipv4Addr::new(172, 19, third, 0),
            prefix: 24,
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The gateway (the bridges' address): the first usable address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Whether `addr` is an address a machine may hold: inside the pool and neither the
    /// network, gateway nor broadcast address.
    pub fn is_machine_address(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
            && addr != self.network
            && addr != self.gateway()
            && addr != self.broadcast()
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Ipv4Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The lowest machine address of `pool` that is not in `used`, or `None` when the pool is full.
///
/// The caller owns allocation state (the agent keeps it in its store) and records the result
/// before using it, so allocation survives restarts and never hands out an address twice.
pub fn allocate(used: &HashSet<Ipv4Addr>, pool: &Ipv4Pool) -> Option<Ipv4Addr> {
    let first = u32::from(pool.gateway()) + 1;
    let last = u32::from(pool.broadcast());
    (first..last)
        .map(Ipv4Addr::from)
        .find(|addr| !used.contains(addr))
}

/// The lowest 6PN machine field (1 and up; 0 is the host gateway) that is not in `used`.
pub fn allocate_sixpn_machine(used: &HashSet<u32>) -> Option<u32> {
    (1..=u32::MAX).find(|id| !used.contains(id))
}

/// The 6PN address of a machine: `fdaa` | network (32) | host (32) | machine (32) | `2` (16).
/// The machine owns the /112 around it.
pub fn sixpn_address(network: u32, host: u32, machine: u32) -> Ipv6Addr {
    sixpn(network, host, machine, SIXPN_MACHINE_SUFFIX)
}

/// The gateway address of `network` on `host`: machine field 0, suffix `1`.
pub fn sixpn_gateway(network: u32, host: u32) -> Ipv6Addr {
    sixpn(network, host, 0, SIXPN_GATEWAY_SUFFIX)
}

fn sixpn(network: u32, host: u32, machine: u32, suffix: u16) -> Ipv6Addr {
    let hi = |v: u32| u16::try_from(v >> 16).unwrap_or_default();
    let lo = |v: u32| u16::try_from(v & 0xffff).unwrap_or_default();
    Ipv6Addr::new(
        SIXPN_PREFIX,
        hi(network),
        lo(network),
        hi(host),
        lo(host),
        hi(machine),
        lo(machine),
        suffix,
    )
}

/// The fields of a 6PN address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SixpnParts {
    /// The private network (one per org).
    pub network: u32,
    /// The host the machine runs on.
    pub host: u32,
    /// The machine on that host (0 is the host's gateway).
    pub machine: u32,
    /// The free low 16 bits.
    pub suffix: u16,
}

/// Splits a 6PN address into its fields; `None` when it does not start with `fdaa`.
pub fn parse_sixpn(addr: Ipv6Addr) -> Option<SixpnParts> {
    let s = addr.segments();
    if s[0] != SIXPN_PREFIX {
        return None;
    }
    let join = |hi: u16, lo: u16| (u32::from(hi) << 16) | u32::from(lo);
    Some(SixpnParts {
        network: join(s[1], s[2]),
        host: join(s[3], s[4]),
        machine: join(s[5], s[6]),
        suffix: s[7],
    })
}

/// An IP network: an address with its prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// `addr/len` with the host bits cleared; `None` when `len` is longer than the family's.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(v4) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
            _ => return None,
        };
        Some(Self { addr, len })
    }

    /// The single address `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        match len {
            None => Ok(Self::host(addr)),
            Some(len) => len
                .parse()
                .ok()
                .and_then(|len| Self::new(addr, len))
                .ok_or_else(|| format!("{s:?} has an invalid prefix length")),
        }
    }
}

/// Destinations no machine reaches through the host, whatever the host's own networks: IPv4
/// "this network", RFC 1918, shared address space (carrier-grade NAT), loopback, link-local
/// (cloud metadata at 169.254.169.254), IETF protocol assignments, multicast and reserved;
/// IPv6 unspecified, loopback, IPv4-mapped, unique local (6PN is let through before this
/// list, for the machine's own network only), link-local and multicast.
pub const BLOCKED_DESTINATIONS: [&str; 17] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0.0.0.0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The IPv6 link-local address the kernel derives from `mac` (modified EUI-64), which a
/// machine's `eth0` uses for neighbour discovery.
pub fn link_local_v6(mac: [u8; 6]) -> Ipv6Addr {
    let seg = |hi: u8, lo: u8| (u16::from(hi) << 8) | u16::from(lo);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        seg(mac[0] ^ 0x02, mac[1]),
        seg(mac[2], 0xff),
        seg(0xfe, mac[3]),
        seg(mac[4], mac[5]),
    )
}

/// The `/etc/hosts` a machine gets: loopback names plus its hostname on its private addresses.
pub fn hosts_file(hostname: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         {ipv4}\t{hostname}\n{ipv6}\t{hostname}\n"
    )
}

/// The `/etc/resolv.conf` a machine gets.
pub fn resolv_conf(nameservers: &[std::net::IpAddr], search: &[&str]) -> String {
    let mut out = String::new();
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_rejects_prefixes_without_room_for_machines() {
        assert!(Ipv4Pool::new(Ipv4Addr::new(10, 0, 0, 0), 31).is_err());
        assert!(Ipv4Pool::new(Ipv4Addr::new(10, 0, 0, 0), 7).is_err());
        let pool = Ipv4Pool::new(Ipv4Addr::new(10, 1, 2, 77), 24).unwrap();
        assert_eq!(pool.network(), Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(pool.gateway(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(pool.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(pool.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn allocate_skips_gateway_and_used_and_stops_before_broadcast() {
        let pool = Ipv4Pool::new(Ipv4Addr::new(10, 9, 0, 0), 29).unwrap();
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(addr) = allocate(&used, &pool) {
            assert!(pool.is_machine_address(addr), "{addr}");
            assert!(used.insert(addr), "{addr} handed out twice");
            got.push(addr);
        }
        // A /29 has 8 addresses: network, gateway, 5 machines, broadcast.
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 9, 0, 6));
        // Freeing one makes exactly that one available again.
        used.remove(&Ipv4Addr::new(10, 9, 0, 4));
        assert_eq!(allocate(&used, &pool), Some(Ipv4Addr::new(10, 9, 0, 4)));
    }

    #[test]
    fn default_pool_follows_the_host_index() {
        let pool = Ipv4Pool::for_host(7);
        assert_eq!(pool.to_string(), "172.19.7.0/24");
        assert_eq!(pool.gateway(), Ipv4Addr::new(172, 19, 7, 1));
    }

    #[test]
    fn sixpn_round_trips_every_field() {
        let addr = sixpn_address(0x0001_2345, 0xabcd_0042, 0x0000_beef);
        assert_eq!(addr.to_string(), "fdaa:1:2345:abcd:42:0:beef:2");
        let parts = parse_sixpn(addr).unwrap();
        assert_eq!(
            parts,
            SixpnParts {
                network: 0x0001_2345,
                host: 0xabcd_0042,
                machine: 0xbeef,
                suffix: 2
            }
        );
        let gw = sixpn_gateway(0x0001_2345, 0xabcd_0042);
        assert_eq!(gw.to_string(), "fdaa:1:2345:abcd:42::1");
        assert_eq!(parse_sixpn(gw).unwrap().machine, 0);
        assert!(parse_sixpn("fd00::2".parse().unwrap()).is_none());
        // The example in docs/networking.md.
        assert_eq!(
            sixpn_address(0x12345, 0x2a, 0xbeef).to_string(),
            "fdaa:1:2345:0:2a:0:beef:2"
        );
        assert_eq!(
            sixpn_gateway(0x12345, 0x2a).to_string(),
            "fdaa:1:2345:0:2a::1"
        );
    }

    #[test]
    fn sixpn_machine_allocation_never_returns_the_gateway_field() {
        let mut used = HashSet::new();
        assert_eq!(allocate_sixpn_machine(&used), Some(1));
        used.extend([1, 2, 4]);
        assert_eq!(allocate_sixpn_machine(&used), Some(3));
    }

    #[test]
    fn hosts_and_resolv_files_name_the_machine() {
        let hosts = hosts_file("m1", Ipv4Addr::new(172, 19, 0, 2), sixpn_address(1, 2, 3));
        assert!(hosts.contains("172.19.0.2\tm1\n"));
        assert!(hosts.contains("fdaa:0:1:0:2:0:3:2\tm1\n"));
        let resolv = resolv_conf(&["fdaa::3".parse().unwrap()], &["internal"]);
        assert_eq!(resolv, "nameserver fdaa::3\nsearch internal\n");
    }

    #[test]
    fn prefixes_parse_clear_host_bits_and_reject_bad_lengths() {
        let p: IpPrefix = "10.1.2.3/8".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert_eq!(
            "192.0.2.7".parse::<IpPrefix>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            "fdaa:1:2::5/48".parse::<IpPrefix>().unwrap().to_string(),
            "fdaa:1:2::/48"
        );
        assert_eq!("0.0.0.0/0".parse::<IpPrefix>().unwrap().prefix_len(), 0);
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x"] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
        for blocked in BLOCKED_DESTINATIONS {
            let p: IpPrefix = blocked.parse().unwrap();
            assert_eq!(p.to_string(), blocked, "already in canonical form");
        }
    }

    #[test]
    fn link_local_follows_the_kernel_s_eui64() {
        let ll = link_local_v6([0x06, 0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(ll.to_string(), "fe80::412:34ff:fe56:789a");
    }
}
