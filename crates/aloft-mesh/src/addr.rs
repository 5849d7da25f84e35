//! The few 6PN facts the mesh needs: which host an address belongs to, and a host's own
//! infrastructure address (network 0). The layout is `fdaa:<network 32>:<host 32>:<machine 32>:<free 16>`.

use std::net::Ipv6Addr;

/// The first 16 bits of every 6PN address.
pub const SIXPN_PREFIX: u16 = 0xfdaa;

/// The UDP port of the RTT echo on every host's infrastructure address.
pub const ECHO_PORT: u16 = 4281;

/// The host field of a 6PN address, or `None` if `addr` is not in `fdaa::/16`.
pub fn host_field(addr: Ipv6Addr) -> Option<u32> {
    let s = addr.segments();
    (s[0] == SIXPN_PREFIX).then(|| (u32::from(s[3]) << 16) | u32::from(s[4]))
}

/// Host `host_index`'s own mesh address, `fdaa:0:0:0:H::1` (network 0, machine 0, free 1).
pub fn infra_address(host_index: u32) -> Ipv6Addr {
    let hi = (host_index >> 16) as u16;
    let lo = (host_index & 0xffff) as u16;
    Ipv6Addr::new(SIXPN_PREFIX, 0, 0, hi, lo, 0, 0, 1)
}

/// The source and destination of an IPv6 packet, or `None` if `packet` is not one.
pub(crate) fn ipv6_endpoints(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let dst: [u8; 16] = packet[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_field_matches_the_layout() {
        // Network 0x12345, host 0x2a, machine 0xbeef (docs/networking.md).
        let addr: Ipv6Addr = "fdaa:1:2345:0:2a:0:beef:2".parse().unwrap();
        assert_eq!(host_field(addr), Some(0x2a));
        let big: Ipv6Addr = "fdaa:0:0:1:2::1".parse().unwrap();
        assert_eq!(host_field(big), Some(0x1_0002));
        assert_eq!(host_field("fd00::1".parse().unwrap()), None);
        assert_eq!(infra_address(0x1_0002), big);
        assert_eq!(infra_address(7).to_string(), "fdaa::7:0:0:1");
        assert_eq!(host_field(infra_address(65535)), Some(65535));
    }

    #[test]
    fn ipv6_endpoints_reads_the_header() {
        let mut packet = vec![0u8; 40];
        packet[0] = 0x60;
        packet[8..24].copy_from_slice(&infra_address(1).octets());
        packet[24..40].copy_from_slice(&infra_address(2).octets());
        assert_eq!(
            ipv6_endpoints(&packet),
            Some((infra_address(1), infra_address(2)))
        );
        packet[0] = 0x45;
        assert_eq!(ipv6_endpoints(&packet), None);
        assert_eq!(ipv6_endpoints(&packet[..20]), None);
    }
}
