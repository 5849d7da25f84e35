//! Forwarding of names outside `internal.` to one upstream resolver: the query's bytes are
//! relayed as they came (same id, same EDNS size), over UDP, and again over TCP when the
//! upstream answer is truncated or the query itself came over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::Message;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// How long the upstream has to answer one query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Upstream resolver {upstream} failed")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Upstream resolver {upstream} did not answer in {UPSTREAM_TIMEOUT:?}")]
    Timeout { upstream: SocketAddr },
    #[error("Upstream resolver {upstream} sent an answer that is not DNS")]
    Decode { upstream: SocketAddr },
}

/// Relays `query` (a whole DNS message) to `upstream`; over TCP directly when `tcp`.
pub async fn forward(
    upstream: SocketAddr,
    query: &[u8],
    tcp: bool,
) -> Result<Message, ForwardError> {
    let timeout = || ForwardError::Timeout { upstream };
    if !tcp {
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, udp(upstream, query))
            .await
            .map_err(|_| timeout())??;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
    }
    tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(upstream, query))
        .await
        .map_err(|_| timeout())?
}

async fn udp(upstream: SocketAddr, query: &[u8]) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        // A connected socket only hears the upstream; still, only our id is our answer.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            return Message::from_vec(&buf[..n]).map_err(|_| ForwardError::Decode { upstream });
        }
    }
}

async fn over_tcp(upstream: SocketAddr, query: &[u8]) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(query.len()).map_err(|_| ForwardError::Decode { upstream })?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.map_err(io)?;
    Message::from_vec(&buf).map_err(|_| ForwardError::Decode { upstream })
}
