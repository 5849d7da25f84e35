//! Links, addresses and routes over rtnetlink, in whichever network namespace the calling
//! thread is in when [`Netlink::connect`] runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, State};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetworkError;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

/// The errno of a netlink error answer, if it is one.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn nl_error(op: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { op, source }
}

/// One rtnetlink connection, bound to the namespace it was opened in.
pub(super) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and drives it on the current tokio runtime.
    pub(super) fn connect() -> Result<Self, NetworkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetworkError::NetlinkSocket { source })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The index of the link called `name`, or `None` if there is none.
    pub(super) async fn index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_error(format!("look up link {name}"))(e)),
        }
    }

    /// The names of all links in this namespace.
    pub(super) async fn names(&self) -> Result<Vec<String>, NetworkError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list links".to_string()))?;
        Ok(links
            .into_iter()
            .filter_map(|link| {
                link.attributes.into_iter().find_map(|attr| match attr {
                    LinkAttribute::IfName(name) => Some(name),
                    _ => None,
                })
            })
            .collect())
    }

    /// Every address in this namespace with its prefix length and its link's name.
    pub(super) async fn addresses(&self) -> Result<Vec<(String, IpAddr, u8)>, NetworkError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list links".to_string()))?;
        let name_of = |index: u32| {
            links
                .iter()
                .find(|link| link.header.index == index)
                .and_then(|link| {
                    link.attributes.iter().find_map(|attr| match attr {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                })
        };
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list addresses".to_string()))?;
        Ok(messages
            .into_iter()
            .filter_map(|msg| {
                let name = name_of(msg.header.index)?;
                let len = msg.header.prefix_len;
                // IPv4 carries the interface's own address in Local (Address is the peer's on
                // point-to-point links); IPv6 has only Address.
                let local = msg.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(addr) => Some(*addr),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    msg.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(addr) => Some(*addr),
                        _ => None,
                    })
                })?;
                Some((name, addr, len))
            })
            .collect())
    }

    /// The IPv4 addresses on link `index`.
    pub(super) async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>, NetworkError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_error(format!("list addresses of link {index}")))?;
        Ok(messages
            .into_iter()
            .flat_map(|msg| msg.attributes)
            .filter_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(addr)) => Some(addr),
                _ => None,
            })
            .collect())
    }

    /// Waits until link `name` is operationally up. The kernel applies carrier changes
    /// asynchronously (up to a second later), and until then packets sent on the link are
    /// dropped, so setup waits for it instead of letting the first connections stall.
    pub(super) async fn wait_oper_up(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(), NetworkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut links = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute();
            let link = links
                .try_next()
                .await
                .map_err(nl_error(format!("look up link {name}")))?
                .ok_or_else(|| NetworkError::MissingLink {
                    name: name.to_string(),
                })?;
            if link
                .attributes
                .contains(&LinkAttribute::OperState(State::Up))
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetworkError::LinkNotUp {
                    name: name.to_string(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `addr` is usable as a local address: the kernel finishes bringing up an
    /// IPv6 address (and installs its local route) asynchronously, once the link is up, and
    /// drops packets to it until then.
    pub(super) async fn wait_local_v6(
        &self,
        addr: Ipv6Addr,
        timeout: Duration,
    ) -> Result<(), NetworkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let wanted = RouteAttribute::Destination(RouteAddress::Inet6(addr));
        loop {
            let routes: Vec<_> = self
                .handle
                .route()
                .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(nl_error("list routes".to_string()))?;
            if routes
                .iter()
                .any(|r| r.header.kind == RouteType::Local && r.attributes.contains(&wanted))
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetworkError::AddressNotReady {
                    addr: IpAddr::V6(addr),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn require(&self, name: &str) -> Result<u32, NetworkError> {
        self.index(name)
            .await?
            .ok_or_else(|| NetworkError::MissingLink {
                name: name.to_string(),
            })
    }

    /// Creates bridge `name` with hardware address `mac` if missing (a fixed address keeps
    /// the bridge from taking a new one each time a port with a lower address joins), brings
    /// it up, and returns its index.
    pub(super) async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
    ) -> Result<u32, NetworkError> {
        if self.index(name).await?.is_none() {
            let bridge = LinkBridge::new(name)
                .mcast_snooping(false)
                .address(mac.to_vec())
                .build();
            let add = self.handle.link().add(bridge).execute().await;
            match add {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(nl_error(format!("create bridge {name}"))(e)),
            }
        }
        let index = self.require(name).await?;
        self.set_up(index, name).await?;
        Ok(index)
    }

    /// Brings link `index` up.
    pub(super) async fn set_up(&self, index: u32, name: &str) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_error(format!("bring up link {name}")))
    }

    /// Adds `addr/prefix` to link `index` without duplicate address detection; an address
    /// that is already there is fine.
    pub(super) async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let mut req = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_error(format!(
                "add address {addr}/{prefix} to link {index}"
            ))(e)),
        }
    }

    /// Creates the veth pair `host`/`peer`; fails if `host` exists.
    pub(super) async fn create_veth(&self, host: &str, peer: &str) -> Result<(), NetworkError> {
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).build())
            .execute()
            .await
            .map_err(nl_error(format!("create veth pair {host}/{peer}")))
    }

    /// Attaches link `name` to bridge `bridge` and brings it up.
    pub(super) async fn attach(&self, name: &str, bridge: u32) -> Result<(), NetworkError> {
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_error(format!("attach link {name} to bridge {bridge}")))
    }

    /// Moves link `name` into the namespace open as `ns`.
    pub(super) async fn move_to(&self, name: &str, ns: &std::fs::File) -> Result<(), NetworkError> {
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_error(format!("move link {name} into its namespace")))
    }

    /// Renames link `from` to `to`, gives it hardware address `mac`, and brings it up;
    /// returns its index.
    pub(super) async fn rename_up(
        &self,
        from: &str,
        to: &str,
        mac: [u8; 6],
    ) -> Result<u32, NetworkError> {
        let index = self.require(from).await?;
        let message = LinkUnspec::new_with_index(index)
            .name(to.to_string())
            .address(mac.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(nl_error(format!("rename link {from} to {to}")))?;
        Ok(index)
    }

    /// Adds or replaces the permanent neighbour entry `addr` -> `mac` on link `index`, so
    /// traffic to `addr` needs no ARP or neighbour discovery.
    pub(super) async fn set_neighbour(
        &self,
        index: u32,
        addr: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetworkError> {
        self.handle
            .neighbours()
            .add(index, addr)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_error(format!("add neighbour {addr} on link {index}")))
    }

    /// Deletes the neighbour entries on the links `indexes` that point to `mac`.
    pub(super) async fn delete_neighbours_to(
        &self,
        indexes: &[u32],
        mac: [u8; 6],
    ) -> Result<(), NetworkError> {
        let entries: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list neighbours".to_string()))?;
        let lladdr = NeighbourAttribute::LinkLayerAddress(mac.to_vec());
        for entry in entries {
            if indexes.contains(&entry.header.ifindex) && entry.attributes.contains(&lladdr) {
                match self.handle.neighbours().del(entry).execute().await {
                    Ok(()) => {}
                    Err(e) if matches!(errno(&e), Some(ENOENT | ENODEV)) => {}
                    Err(e) => return Err(nl_error("delete a neighbour".to_string())(e)),
                }
            }
        }
        Ok(())
    }

    /// Deletes link `name` (and so its veth peer); a missing link is fine.
    pub(super) async fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(nl_error(format!("delete link {name}"))(e)),
        }
    }

    /// Adds or replaces the on-link host route `addr/32 dev index src pref_source`.
    pub(super) async fn replace_host_route_v4(
        &self,
        addr: Ipv4Addr,
        index: u32,
        pref_source: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(index)
            .pref_source(pref_source)
            .scope(RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl_error(format!("add host route to {addr}")))
    }

    /// Deletes the host route to `addr/32`; a missing route is fine.
    pub(super) async fn delete_host_route_v4(&self, addr: Ipv4Addr) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT | EADDRNOTAVAIL)) => Ok(()),
            Err(e) => Err(nl_error(format!("delete host route to {addr}"))(e)),
        }
    }

    /// Adds the default IPv4 route via `gateway` out of link `index`.
    pub(super) async fn add_default_v4(
        &self,
        gateway: Ipv4Addr,
        index: u32,
    ) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl_error(format!("add default route via {gateway}")))
    }

    /// Adds the default IPv6 route via `gateway` out of link `index`.
    pub(super) async fn add_default_v6(
        &self,
        gateway: Ipv6Addr,
        index: u32,
    ) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl_error(format!("add default route via {gateway}")))
    }

    /// Adds the route `addr/32 via gateway dev index` (tests use it to act as a machine that
    /// ignores its on-link prefix).
    #[cfg(test)]
    pub(super) async fn add_route_via_v4(
        &self,
        addr: Ipv4Addr,
        gateway: Ipv4Addr,
        index: u32,
    ) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl_error(format!("add route to {addr} via {gateway}")))
    }

    /// Whether the main table has a route to exactly `addr/32`.
    #[cfg(test)]
    pub(super) async fn has_host_route_v4(&self, addr: Ipv4Addr) -> Result<bool, NetworkError> {
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list routes".to_string()))?;
        Ok(routes.iter().any(|route| {
            route.header.destination_prefix_length == 32
                && route
                    .attributes
                    .contains(&RouteAttribute::Destination(RouteAddress::Inet(addr)))
        }))
    }

    /// How many neighbour entries in this namespace point to `mac`.
    #[cfg(test)]
    pub(super) async fn count_neighbours_to(&self, mac: [u8; 6]) -> Result<usize, NetworkError> {
        let entries: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_error("list neighbours".to_string()))?;
        let lladdr = NeighbourAttribute::LinkLayerAddress(mac.to_vec());
        Ok(entries
            .iter()
            .filter(|e| e.attributes.contains(&lladdr))
            .count())
    }
}
