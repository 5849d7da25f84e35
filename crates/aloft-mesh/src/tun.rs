//! The mesh's TUN device: the host's infrastructure address and the `fdaa::/16` route, with
//! offloads (`IFF_VNET_HDR`: TSO super-packets in, GRO-coalesced packets out) where the
//! kernel supports them.

use std::net::Ipv6Addr;

use rtnetlink::RouteMessageBuilder;
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::addr::{infra_address, SIXPN_PREFIX};
use crate::MeshError;

/// Creates (or takes over) the TUN device `name` with `fdaa:0:0:0:H::1/128`, MTU `mtu`, up,
/// and routes `fdaa::/16` into it.
pub(crate) async fn create(
    name: &str,
    host_index: u32,
    mtu: u16,
) -> Result<AsyncDevice, MeshError> {
    let tun_error = |source| MeshError::Tun {
        name: name.to_string(),
        source,
    };
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .ipv6(infra_address(host_index), 128u8)
            .offload(offload)
            .build_async()
    };
    // Offloads (TSO reads, GRO writes) where the kernel has them; plain packets otherwise.
    let device = match build(true) {
        Ok(device) => device,
        Err(e) => {
            tracing::warn!(device = name, error = %e, "mesh TUN offloads unavailable; one packet per read and write");
            build(false).map_err(tun_error)?
        }
    };
    let index = device.if_index().map_err(tun_error)?;

    let (connection, handle, _) = rtnetlink::new_connection().map_err(MeshError::Netlink)?;
    let connection = tokio::spawn(connection);
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::new(SIXPN_PREFIX, 0, 0, 0, 0, 0, 0, 0), 16)
        .output_interface(index)
        .build();
    let result = handle.route().add(route).replace().execute().await;
    connection.abort();
    result.map_err(|source| MeshError::Route {
        name: name.to_string(),
        op: "add the route fdaa::/16".to_string(),
        source,
    })?;
    Ok(device)
}
