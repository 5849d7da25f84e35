//! The PROXY protocol (HAProxy's, versions 1 and 2): the header the edge writes first on a
//! connection to a machine so the machine learns the client's address, and a parser for it
//! (used by tests and by anything behind the edge written in Rust).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use aloft_api::routes::ProxyProtoVersion;

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, CRLF included (from the specification).
const V1_MAX: usize = 107;

/// Errors reading a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProtoError {
    #[error("The data ends before the PROXY protocol header does")]
    Incomplete,
    #[error("The data does not start with a PROXY protocol header")]
    NotProxy,
    #[error("The PROXY protocol header is malformed: {0}")]
    Malformed(&'static str),
}

/// What a PROXY protocol header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied TCP connection: the client's address and the address it connected to.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The sender's own connection (v2 `LOCAL`, v1 `UNKNOWN`): no addresses.
    Local,
}

/// Both addresses in one family: an IPv4 address is written IPv4-mapped when the other is IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    let unmap = |s: SocketAddr| match s.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    let (a, b) = (unmap(a), unmap(b));
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header announcing a connection from `source` to `destination`.
pub fn encode(version: ProxyProtoVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(source, destination);
    match version {
        ProxyProtoVersion::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyProtoVersion::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(ip) => ip,
                        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    };
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

/// Reads a PROXY protocol header (either version) at the start of `data`; returns it and its
/// length in bytes. `Incomplete` means more data may still make it valid.
pub fn parse(data: &[u8]) -> Result<(ProxyHeader, usize), ProxyProtoError> {
    if data.len() < V2_SIGNATURE.len() {
        let n = data.len();
        if V2_SIGNATURE[..n] == *data || b"PROXY "[..n.min(6)] == data[..n.min(6)] {
            return Err(ProxyProtoError::Incomplete);
        }
        return Err(ProxyProtoError::NotProxy);
    }
    if data.starts_with(&V2_SIGNATURE) {
        parse_v2(data)
    } else if data.starts_with(b"PROXY ") {
        parse_v1(data)
    } else {
        Err(ProxyProtoError::NotProxy)
    }
}

fn parse_v1(data: &[u8]) -> Result<(ProxyHeader, usize), ProxyProtoError> {
    use ProxyProtoError::{Incomplete, Malformed};
    let window = &data[..data.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return Err(if data.len() >= V1_MAX {
            Malformed("no CRLF within 107 bytes")
        } else {
            Incomplete
        });
    };
    let line = std::str::from_utf8(&data[..end]).map_err(|_| Malformed("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match fields.get(1).copied() {
        Some("UNKNOWN") => Ok((ProxyHeader::Local, len)),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, _, s, d, sp, dp] = fields[..] else {
                return Err(Malformed("expected 6 fields"));
            };
            let ip = |t: &str| -> Result<IpAddr, ProxyProtoError> {
                let ip: IpAddr = t.parse().map_err(|_| Malformed("bad address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(Malformed("address does not match the family"));
                }
                Ok(ip)
            };
            let port = |t: &str| -> Result<u16, ProxyProtoError> {
                if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Malformed("bad port"));
                }
                t.parse().map_err(|_| Malformed("bad port"))
            };
            Ok((
                ProxyHeader::Tcp {
                    source: SocketAddr::new(ip(s)?, port(sp)?),
                    destination: SocketAddr::new(ip(d)?, port(dp)?),
                },
                len,
            ))
        }
        _ => Err(Malformed("unknown family")),
    }
}

fn parse_v2(data: &[u8]) -> Result<(ProxyHeader, usize), ProxyProtoError> {
    use ProxyProtoError::{Incomplete, Malformed};
    if data.len() < 16 {
        return Err(Incomplete);
    }
    let (ver_cmd, fam) = (data[12], data[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Malformed("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([data[14], data[15]]));
    let total = 16 + len;
    if data.len() < total {
        return Err(Incomplete);
    }
    let body = &data[16..total];
    match ver_cmd & 0x0f {
        0 => return Ok((ProxyHeader::Local, total)),
        1 => {}
        _ => return Err(Malformed("unknown command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let header = match fam {
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
            ProxyHeader::Tcp {
                source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            }
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            ProxyHeader::Tcp {
                source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            }
        }
        0x11 | 0x21 => return Err(Malformed("address block too short")),
        0x00 => ProxyHeader::Local,
        _ => return Err(Malformed("unsupported address family or transport")),
    };
    Ok((header, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specification_text() {
        let h = encode(
            ProxyProtoVersion::V1,
            sa("192.0.2.1:56324"),
            sa("198.51.100.7:443"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
        let mixed = encode(
            ProxyProtoVersion::V1,
            sa("192.0.2.1:1"),
            sa("[2001:db8::1]:2"),
        );
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1 2\r\n");
    }

    #[test]
    fn v2_layout_and_round_trips() {
        let (s, d) = (sa("10.0.0.1:1000"), sa("10.0.0.2:2000"));
        let h = encode(ProxyProtoVersion::V2, s, d);
        assert_eq!(h.len(), 28);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        let want = ProxyHeader::Tcp {
            source: s,
            destination: d,
        };
        assert_eq!(parse(&h), Ok((want, 28)));
        let v1 = encode(ProxyProtoVersion::V1, s, d);
        assert_eq!(parse(&v1), Ok((want, v1.len())));
    }

    #[test]
    fn bad_and_partial_headers_are_told_apart() {
        assert_eq!(parse(b"PROX"), Err(ProxyProtoError::Incomplete));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyProtoError::NotProxy));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
            Err(ProxyProtoError::Malformed("bad port"))
        );
        assert_eq!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Err(ProxyProtoError::Malformed(
                "address does not match the family"
            ))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nrest"),
            Ok((ProxyHeader::Local, 15))
        );
    }
}
