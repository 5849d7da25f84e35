//! Identifier generation: machine ids, ULID-like instance ids, tokens, private addresses.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A machine id: 14 lowercase hex characters, like Fly's.
pub fn machine_id() -> String {
    let mut bytes = [0u8; 7];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// An app or event id: 16 lowercase hex characters.
pub fn short_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 characters.
pub fn ulid() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    let mut value: u128 = (millis & ((1u128 << 48) - 1)) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            let index = ((value >> shift) & 31) as usize;
            char::from(CROCKFORD[index])
        })
        .collect()
}

/// A bearer token: `aloft_` then 64 hex characters (256 random bits).
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("aloft_{}", hex::encode(bytes))
}

/// The machine's 6PN address: `fdaa:0:<org>:a7b:<host>:<machine>::2` style, derived from ids.
pub fn private_ip(host_id: &str, machine_id: &str) -> String {
    let host = fold16(host_id.as_bytes());
    let m = machine_id.as_bytes();
    let (a, b) = m.split_at(m.len().min(7));
    format!("fdaa:0:1:a7b:{host:x}:{:x}:{:x}:2", fold16(a), fold16(b))
}

fn fold16(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |acc, &b| acc.rotate_left(5) ^ u16::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_14_hex_chars_and_differ() {
        let a = machine_id();
        assert_eq!(a.len(), 14);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, machine_id());
    }

    #[test]
    fn ulids_are_26_crockford_chars_and_sort_by_time() {
        let a = ulid();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert_ne!(a, ulid());
    }

    #[test]
    fn private_ips_parse_as_ipv6() {
        let ip = private_ip("host-1", "148e21ea4e5589");
        assert!(ip.parse::<std::net::Ipv6Addr>().is_ok(), "{ip}");
    }
}
