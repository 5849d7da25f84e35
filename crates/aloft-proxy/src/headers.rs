//! Headers on the way to machines and back: the platform's forwarding headers (from the client
//! connection's [`ConnInfo`] and the request's [`RequestId`]), hop-by-hop removal, and the
//! request headers that steer machine choice.

use std::collections::HashSet;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::balance::Steering;

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The address the client connected to (for apps' dedicated addresses).
    pub local: std::net::IpAddr,
    pub tls: bool,
    /// The public port the listener stands for.
    pub port: u16,
    /// The client's address (IPv4-mapped addresses as IPv4) and `port` as header values, made
    /// once per connection.
    pub ip_header: HeaderValue,
    pub port_header: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: std::net::IpAddr, tls: bool, port: u16) -> ConnInfo {
        let value = |s: String| {
            HeaderValue::from_maybe_shared(Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        ConnInfo {
            peer,
            local,
            tls,
            port,
            ip_header: value(peer.ip().to_canonical().to_string()),
            port_header: value(port.to_string()),
        }
    }
}

/// A request id: 32 random lowercase hex digits, made without a formatting allocation.
pub(crate) struct RequestId([u8; 32]);

impl RequestId {
    pub fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u128>();
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        RequestId(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&self.0))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// Header names the edge reads and writes, parsed once at compile time.
pub(crate) mod hdr {
    use http::header::HeaderName;

    pub const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");
    pub const ALOFT_REQUEST_ID: HeaderName = HeaderName::from_static("aloft-request-id");
    pub const FLY_FORCE_INSTANCE_ID: HeaderName = HeaderName::from_static("fly-force-instance-id");
    pub const ALOFT_FORCE_INSTANCE_ID: HeaderName =
        HeaderName::from_static("aloft-force-instance-id");
    pub const FLY_PREFER_INSTANCE_ID: HeaderName =
        HeaderName::from_static("fly-prefer-instance-id");
    pub const ALOFT_PREFER_INSTANCE_ID: HeaderName =
        HeaderName::from_static("aloft-prefer-instance-id");
    pub const FLY_PREFER_REGION: HeaderName = HeaderName::from_static("fly-prefer-region");
    pub const ALOFT_PREFER_REGION: HeaderName = HeaderName::from_static("aloft-prefer-region");
    pub const FLY_FORCE_REGION: HeaderName = HeaderName::from_static("fly-force-region");
    pub const ALOFT_FORCE_REGION: HeaderName = HeaderName::from_static("aloft-force-region");
    pub const FLY_REPLAY_SRC: HeaderName = HeaderName::from_static("fly-replay-src");
    pub const ALOFT_REPLAY_SRC: HeaderName = HeaderName::from_static("aloft-replay-src");
    pub const FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");
    pub const ALOFT_CLIENT_IP: HeaderName = HeaderName::from_static("aloft-client-ip");
    pub const FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");
    pub const ALOFT_FORWARDED_PORT: HeaderName = HeaderName::from_static("aloft-forwarded-port");
    pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    pub const FLY_REGION: HeaderName = HeaderName::from_static("fly-region");
    pub const ALOFT_REGION: HeaderName = HeaderName::from_static("aloft-region");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
pub(crate) fn steering(h: &HeaderMap) -> Steering {
    steering_with(|name| h.get(name).and_then(|v| v.to_str().ok()))
}

/// The steering headers' constraints, with `get` looking a header up by its lowercase name.
pub(crate) fn steering_with<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Steering {
    let first = |names: [&HeaderName; 2]| {
        names
            .iter()
            .find_map(|n| get(n.as_str()))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let list = |v: Option<&str>| -> Vec<String> {
        v.map(|v| {
            v.split(',')
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    Steering {
        force_instance: first([&hdr::FLY_FORCE_INSTANCE_ID, &hdr::ALOFT_FORCE_INSTANCE_ID])
            .map(String::from),
        prefer_instance: first([&hdr::FLY_PREFER_INSTANCE_ID, &hdr::ALOFT_PREFER_INSTANCE_ID])
            .map(String::from),
        prefer_regions: list(first([&hdr::FLY_PREFER_REGION, &hdr::ALOFT_PREFER_REGION])),
        force_regions: list(first([&hdr::FLY_FORCE_REGION, &hdr::ALOFT_FORCE_REGION])),
        exclude: HashSet::new(),
    }
}

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them but `Connection`: one pass over the names instead of a
    // lookup per name.
    if !h
        .keys()
        .any(|n| n == header::UPGRADE || HOP_BY_HOP.contains(n))
    {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// The headers sent to a machine: the client's, minus hop-by-hop ones, plus the platform's
/// forwarding headers. Values that do not change per request (client address, ports, region)
/// are shared, not rebuilt.
pub(crate) fn forward_headers(
    region: &HeaderValue,
    incoming: &HeaderMap,
    host: &str,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    version: Version,
    upgrade: bool,
) -> HeaderMap {
    // Room for the headers added below, so the map does not grow twice on the way.
    let mut h = HeaderMap::with_capacity(incoming.len() + 16);
    for (name, value) in incoming {
        h.append(name.clone(), value.clone());
    }
    let upgrade_value = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut h);
    if upgrade {
        if let Some(v) = upgrade_value {
            h.insert(header::UPGRADE, v);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    // `host` came from the Host header, or from the authority when there is none (HTTP/2).
    if h.get_all(header::HOST).iter().count() != 1 {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
    }
    h.insert(hdr::FLY_CLIENT_IP, conn.ip_header.clone());
    h.insert(hdr::ALOFT_CLIENT_IP, conn.ip_header.clone());
    h.insert(hdr::FLY_FORWARDED_PORT, conn.port_header.clone());
    h.insert(hdr::ALOFT_FORWARDED_PORT, conn.port_header.clone());
    h.insert(hdr::X_FORWARDED_PORT, conn.port_header.clone());
    h.insert(hdr::FLY_REGION, region.clone());
    h.insert(hdr::ALOFT_REGION, region.clone());
    h.insert(hdr::FLY_REQUEST_ID, request_id.clone());
    h.insert(hdr::ALOFT_REQUEST_ID, request_id.clone());
    let (proto, ssl) = if conn.tls {
        ("https", "on")
    } else {
        ("http", "off")
    };
    h.insert(hdr::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    h.insert(hdr::X_FORWARDED_SSL, HeaderValue::from_static(ssl));
    let xff = match h.get(hdr::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let ip = conn.ip_header.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        _ => Some(conn.ip_header.clone()),
    };
    if let Some(v) = xff {
        h.insert(hdr::X_FORWARDED_FOR, v);
    }
    let hop = if version == Version::HTTP_2 {
        "2 aloft"
    } else {
        "1.1 aloft"
    };
    let via = match h.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {hop}")).ok()
        }
        _ => Some(HeaderValue::from_static(hop)),
    };
    if let Some(v) = via {
        h.insert(header::VIA, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_reads_fly_and_aloft_spellings() {
        let mut h = HeaderMap::new();
        h.insert("fly-prefer-region", HeaderValue::from_static(" ams , ,fra"));
        h.insert("aloft-force-instance-id", HeaderValue::from_static("m1"));
        h.insert("fly-prefer-instance-id", HeaderValue::from_static("  "));
        let s = steering(&h);
        assert_eq!(s.prefer_regions, ["ams", "fra"]);
        assert_eq!(s.force_instance.as_deref(), Some("m1"));
        assert_eq!(s.prefer_instance, None);
        assert!(s.force_regions.is_empty());
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }
}
