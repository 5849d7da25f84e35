//! Dedicated public addresses per app (`fly ips allocate-v4/allocate-v6/list/release`): the
//! operator names the networks to hand out (`aloft server --ip-pool CIDR`, repeatable); an
//! allocation takes the lowest free address of the first pool of the asked family, and is
//! kept in the store until released or until its app is deleted.
//!
//! The route table lists each app's addresses (the routes service), so allocating and releasing bump
//! the revision and edges learn the change at once. Which edge actually holds an address (BGP,
//! a secondary address on an interface) is the edge's business, not this module's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use aloft_api::ips::{AppIp, IpKind};

use crate::core::{now_rfc3339, Store, StoreError};

/// Why an `--ip-pool` value is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpPoolError {
    #[error("{0:?} is not a network in CIDR notation (e.g. 203.0.113.0/28 or 2001:db8:1::/120)")]
    Syntax(String),
    #[error("{0:?} has a prefix length longer than the address ({1} bits)")]
    Prefix(String, u8),
    #[error("{0:?} has host bits set; did you mean {1}?")]
    HostBits(String, IpPool),
}

/// A network addresses are allocated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPool {
    network: IpAddr,
    prefix: u8,
}

fn bits(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        // Callers stay within an IPv4 pool's range.
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Ones in the low `host_bits` bits.
fn host_mask(host_bits: u8) -> u128 {
    match host_bits {
        0 => 0,
        128.. => u128::MAX,
        b => (1u128 << b) - 1,
    }
}

impl IpPool {
    /// The family of the pool's addresses.
    pub fn kind(&self) -> IpKind {
        match self.network {
            IpAddr::V4(_) => IpKind::V4,
            IpAddr::V6(_) => IpKind::V6,
        }
    }

    /// The first and last address handed out (IPv4 pools of /30 or wider keep their network
    /// and broadcast addresses).
    fn range(&self) -> (u128, u128) {
        let host_bits = bits(self.network) - self.prefix;
        let first = to_u128(self.network);
        let last = first | host_mask(host_bits);
        if self.kind() == IpKind::V4 && self.prefix <= 30 {
            (first + 1, last - 1)
        } else {
            (first, last)
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        let host_bits = bits(self.network) - self.prefix;
        bits(addr) == bits(self.network)
            && to_u128(addr) & !host_mask(host_bits) == to_u128(self.network)
    }

    /// The lowest address of the pool not in `taken`.
    fn lowest_free(&self, taken: &[IpAddr]) -> Option<IpAddr> {
        let (first, last) = self.range();
        let mut used: Vec<u128> = taken
            .iter()
            .filter(|a| self.contains(**a))
            .map(|a| to_u128(*a))
            .collect();
        used.sort_unstable();
        let mut candidate = first;
        for u in used {
            if u == candidate {
                candidate = candidate.checked_add(1)?;
            } else if u > candidate {
                break;
            }
        }
        (candidate <= last).then(|| from_u128(self.kind() == IpKind::V4, candidate))
    }
}

impl std::fmt::Display for IpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for IpPool {
    type Err = IpPoolError;

    fn from_str(s: &str) -> Result<IpPool, IpPoolError> {
        let syntax = || IpPoolError::Syntax(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let network: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let max = bits(network);
        if prefix > max {
            return Err(IpPoolError::Prefix(s.to_owned(), max));
        }
        let host = host_mask(max - prefix);
        if to_u128(network) & host != 0 {
            let network = from_u128(max == 32, to_u128(network) & !host);
            return Err(IpPoolError::HostBits(
                s.to_owned(),
                IpPool { network, prefix },
            ));
        }
        Ok(IpPool { network, prefix })
    }
}

/// Why an address could not be allocated or released.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    InvalidAddress(String),
    #[error(
        "The server has no {0} pool to allocate from; start it with `aloft server --ip-pool CIDR`"
    )]
    NoPool(&'static str),
    #[error("No free {family} address left in the pool(s) {pools}")]
    PoolsFull { family: &'static str, pools: String },
    #[error("App {app:?} holds no address {address}")]
    NotHeld { app: String, address: IpAddr },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The address service: the configured pools, and allocations in the store.
#[derive(Debug)]
pub struct Ips {
    store: Arc<Store>,
    pools: OnceLock<Vec<IpPool>>,
}

impl Ips {
    pub fn new(store: Arc<Store>) -> Ips {
        Ips {
            store,
            pools: OnceLock::new(),
        }
    }

    /// Sets the networks dedicated addresses are allocated from (once, before serving).
    pub fn configure(&self, pools: Vec<IpPool>) {
        let _ = self.pools.set(pools);
    }

    /// Allocates the lowest free address of the first pool of `kind` to `app`.
    pub fn allocate(&self, app: &str, kind: IpKind) -> Result<AppIp, IpError> {
        let pools: Vec<IpPool> = self
            .pools
            .get()
            .into_iter()
            .flatten()
            .filter(|p| p.kind() == kind)
            .copied()
            .collect();
        let family = match kind {
            IpKind::V4 => "IPv4",
            IpKind::V6 => "IPv6",
        };
        let mut inner = self.store.lock();
        inner.db().require_app(app)?;
        if pools.is_empty() {
            return Err(IpError::NoPool(family));
        }
        let taken: Vec<IpAddr> = inner
            .db()
            .app_ips(None)?
            .into_iter()
            .map(|ip| ip.address)
            .collect();
        let address = pools
            .iter()
            .find_map(|p| p.lowest_free(&taken))
            .ok_or_else(|| {
                let names: Vec<String> = pools.iter().map(ToString::to_string).collect();
                IpError::PoolsFull {
                    family,
                    pools: names.join(", "),
                }
            })?;
        let ip = AppIp {
            address,
            kind,
            app: app.to_owned(),
            created_at: now_rfc3339(),
        };
        let ((), revision) = inner.write(|db, _| db.insert_app_ip(&ip).map_err(IpError::from))?;
        drop(inner);
        self.store.notify(revision);
        tracing::info!(%app, %address, "dedicated address allocated");
        Ok(ip)
    }

    /// The addresses `app` holds, sorted.
    pub fn list(&self, app: &str) -> Result<Vec<AppIp>, IpError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        Ok(inner.db().app_ips(Some(app))?)
    }

    /// Releases an address `app` holds; edges stop routing it to the app.
    pub fn release(&self, app: &str, address: &str) -> Result<(), IpError> {
        let addr: IpAddr = address
            .parse()
            .map_err(|_| IpError::InvalidAddress(address.to_owned()))?;
        let mut inner = self.store.lock();
        inner.db().require_app(app)?;
        let ((), revision) = inner.write(|db, _| {
            if db.delete_app_ip(app, addr)? {
                Ok(())
            } else {
                Err(IpError::NotHeld {
                    app: app.to_owned(),
                    address: addr,
                })
            }
        })?;
        drop(inner);
        self.store.notify(revision);
        tracing::info!(%app, address = %addr, "dedicated address released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> IpPool {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_parse_and_refuse_bad_networks() {
        assert_eq!(pool("203.0.113.0/28").to_string(), "203.0.113.0/28");
        assert_eq!(pool("2001:db8:1::/120").kind(), IpKind::V6);
        assert!(matches!(
            "203.0.113.0".parse::<IpPool>(),
            Err(IpPoolError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpPool>(),
            Err(IpPoolError::Prefix(_, 32))
        ));
        let err = "203.0.113.5/28".parse::<IpPool>().unwrap_err();
        assert!(err.to_string().contains("203.0.113.0/28"), "{err}");
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_and_skips_network_and_broadcast() {
        let p = pool("203.0.113.0/30");
        assert_eq!(p.lowest_free(&[]), Some(ip("203.0.113.1")));
        assert_eq!(p.lowest_free(&[ip("203.0.113.1")]), Some(ip("203.0.113.2")));
        assert_eq!(p.lowest_free(&[ip("203.0.113.2"), ip("203.0.113.1")]), None);
        // A /31 (point-to-point) and a /32 use every address.
        assert_eq!(
            pool("198.51.100.0/31").lowest_free(&[]),
            Some(ip("198.51.100.0"))
        );
        assert_eq!(
            pool("198.51.100.7/32").lowest_free(&[]),
            Some(ip("198.51.100.7"))
        );
        // A hole left by a release is reused first; other pools' addresses do not count.
        let p6 = pool("2001:db8::/126");
        assert_eq!(
            p6.lowest_free(&[ip("2001:db8::"), ip("2001:db8::2"), ip("203.0.113.1")]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(pool("::/0").lowest_free(&[]), Some(ip("::")));
    }
}
