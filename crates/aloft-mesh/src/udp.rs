//! The mesh's UDP socket with batched I/O: `recvmmsg` with UDP GRO on the way in (one call
//! returns many datagrams, and the kernel may coalesce a peer's datagrams into one buffer),
//! and UDP GSO on the way out (one `sendmsg` carries a run of equal-sized datagrams to one
//! peer). Both come from `quinn-udp`, which falls back to one datagram per call where the
//! kernel lacks them.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams (or GRO buffers) one receive call can return.
pub(crate) const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Room for one GRO buffer: the kernel coalesces at most 64 KiB.
pub(crate) const RECV_BUF: usize = 65536;
/// The most bytes one GSO send may carry (a UDP datagram's length field bounds it).
pub(crate) const GSO_BYTES: usize = 65000;
/// Socket buffer size asked for in both directions (the kernel caps it at its maximum).
const SOCKET_BUFFER: usize = 8 << 20;

pub(crate) struct BatchSocket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let io = UdpSocket::bind(addr).await?;
        let state = UdpSocketState::new((&io).into())?;
        // Larger buffers absorb bursts (a whole TSO super-packet arrives at once); a kernel
        // that refuses keeps its default, which still works.
        let _ = state.set_recv_buffer_size((&io).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&io).into(), SOCKET_BUFFER);
        Ok(Self { io, state })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// How many datagrams one GSO send may carry (1 where the kernel has no GSO).
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends one datagram.
    pub(crate) async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        self.io.send_to(data, to).await.map(|_| ())
    }

    /// Sends `data`, a run of datagrams of `segment` bytes each (the last may be shorter), to
    /// `to` in one call where the kernel can; one call per datagram where it cannot.
    pub(crate) async fn send_run(&self, data: &[u8], segment: usize, to: SocketAddr) {
        if data.is_empty() {
            return;
        }
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: (data.len() > segment).then_some(segment),
            src_ip: None,
        };
        let result = loop {
            match self.io.writable().await {
                Ok(()) => {}
                Err(e) => break Err(e),
            }
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        let Err(e) = result else { return };
        if transmit.segment_size.is_none() {
            tracing::debug!(%to, error = %e, "mesh send failed");
            return;
        }
        // The path refused segmentation offload (quinn-udp stops using it from now on):
        // send this run one datagram at a time.
        tracing::debug!(%to, error = %e, "mesh GSO send failed; sending datagrams one by one");
        for datagram in data.chunks(segment) {
            if let Err(e) = self.send_to(datagram, to).await {
                tracing::debug!(%to, error = %e, "mesh send failed");
            }
        }
    }

    /// Waits for datagrams and receives up to [`RECV_BATCH`] buffers into `slab` (split into
    /// [`RECV_BUF`]-byte buffers); `meta[i]` describes buffer `i`.
    pub(crate) async fn recv_batch(
        &self,
        slab: &mut [u8],
        meta: &mut [RecvMeta; RECV_BATCH],
    ) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            let mut chunks = slab.chunks_mut(RECV_BUF);
            let mut bufs: [IoSliceMut<'_>; RECV_BATCH] = std::array::from_fn(|_| {
                IoSliceMut::new(chunks.next().expect("the slab holds RECV_BATCH buffers"))
            });
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), &mut bufs, meta)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}
