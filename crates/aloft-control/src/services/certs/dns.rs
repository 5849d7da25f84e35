//! The DNS look-ups that prove who controls a custom hostname: the `CNAME` of the name and the
//! `TXT` records of `_aloft-challenge.<name>`, asked of one recursive resolver over UDP (the
//! server's `--dns-resolver`, else the first `nameserver` of `/etc/resolv.conf`).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// What DNS says about a hostname.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsEvidence {
    /// The name's CNAME targets (lowercase, no trailing dot).
    pub cnames: Vec<String>,
    /// The strings of the TXT records at `_aloft-challenge.<name>`.
    pub txt: Vec<String>,
}

/// Why a look-up failed (a name without records is not a failure).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("No DNS resolver: give the server --dns-resolver ADDR:PORT or a nameserver in /etc/resolv.conf")]
    NoResolver,
    #[error("{0} is not a DNS name")]
    Name(String),
    #[error("The DNS resolver {resolver} did not answer for {name}")]
    Io {
        resolver: SocketAddr,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("The DNS resolver {resolver} answered {code} for {name}")]
    Refused {
        resolver: SocketAddr,
        name: String,
        code: String,
    },
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn resolv_conf_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The resolver to ask: the configured one, else the system's.
pub fn resolver(configured: Option<SocketAddr>) -> Result<SocketAddr, DnsError> {
    configured
        .or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .as_deref()
                .and_then(resolv_conf_nameserver)
        })
        .ok_or(DnsError::NoResolver)
}

/// Looks up the evidence for `host` (for `*.example.com`, the TXT records of
/// `_aloft-challenge.example.com`; a wildcard has no CNAME of its own).
pub async fn evidence(resolver: SocketAddr, host: &str) -> Result<DnsEvidence, DnsError> {
    let base = host.strip_prefix("*.").unwrap_or(host);
    let txt_name = format!("_aloft-challenge.{base}");
    let txt = query(resolver, &txt_name, RecordType::TXT).await?;
    let cname = if host.starts_with("*.") {
        Vec::new()
    } else {
        query(resolver, host, RecordType::CNAME).await?
    };
    let mut out = DnsEvidence::default();
    for data in txt {
        if let RData::TXT(t) = data {
            let joined: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
            out.txt
                .push(String::from_utf8_lossy(&joined).trim().to_owned());
        }
    }
    for data in cname {
        if let RData::CNAME(c) = data {
            let target = c.0.to_ascii();
            out.cnames
                .push(target.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// One query; the answer's records of the asked type (none for NXDOMAIN).
async fn query(resolver: SocketAddr, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsError> {
    let io = |source| DnsError::Io {
        resolver,
        name: name.to_owned(),
        source,
    };
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|_| DnsError::Name(name.to_owned()))?;
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(fqdn, kind));
    let bytes = message
        .to_vec()
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let bind: SocketAddr = if resolver.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(resolver).await.map_err(io)?;
    socket.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let answer = tokio::time::timeout(QUERY_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id => return Ok(m),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
    .map_err(io)?;
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => {
            return Err(DnsError::Refused {
                resolver,
                name: name.to_owned(),
                code: code.to_string(),
            })
        }
    }
    Ok(answer
        .answers
        .into_iter()
        .filter(|r| r.record_type() == kind)
        .map(|r| r.data)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_used() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(
            resolv_conf_nameserver(text),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            resolv_conf_nameserver("nameserver ::1"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(resolv_conf_nameserver("search x\n"), None);
    }
}
