//! The DNS server: hickory-server on one UDP socket and one TCP listener at the same address,
//! answering `internal.` from the current [`DnsView`] and forwarding everything else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{AAAA, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tracing::{debug, warn};

use crate::forward::forward;
use crate::names::{self, DnsView, Lookup, Scope};

/// TTL of every `internal.` answer, and the negative-caching TTL of its SOA.
pub const TTL: u32 = 5;
/// How long a TCP client may stay silent before the server closes its connection.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Places a querier whose source address is not on an org's 6PN network.
pub type ScopeFn = Arc<dyn Fn(IpAddr) -> Scope + Send + Sync>;

/// How to run a [`DnsServer`].
pub struct DnsOptions {
    /// UDP and TCP address (port 0: a free port, the same for both). The address need not be
    /// on any interface yet.
    pub listen: SocketAddr,
    /// Where names outside `internal.` go; `None`: they fail (SERVFAIL).
    pub upstream: Option<SocketAddr>,
    /// The scope of queriers that are not on an org's 6PN network (IPv4 machines, the host).
    pub scope: ScopeFn,
}

impl std::fmt::Debug for DnsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsOptions")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("Cannot listen for DNS on {addr} ({protocol})")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The querier's scope: its network when it speaks from a 6PN address of an org network,
/// else what `fallback` says.
pub fn scope_of(src: IpAddr, fallback: &ScopeFn) -> Scope {
    let src = src.to_canonical();
    if let IpAddr::V6(v6) = src {
        let s = v6.segments();
        if s[0] == 0xfdaa {
            let network = (u32::from(s[1]) << 16) | u32::from(s[2]);
            if network != 0 {
                return Scope::Org(network);
            }
        }
    }
    fallback(src)
}

struct Shared {
    view: ArcSwap<DnsView>,
    upstream: Option<SocketAddr>,
    scope: ScopeFn,
}

/// Sets the view of a running [`DnsServer`].
#[derive(Clone)]
pub struct ViewSetter(Arc<Shared>);

impl std::fmt::Debug for ViewSetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewSetter")
    }
}

impl ViewSetter {
    /// Answers from `view` from now on.
    pub fn set_view(&self, view: DnsView) {
        self.0.view.store(Arc::new(view));
    }
}

/// A running DNS server.
pub struct DnsServer {
    shared: Arc<Shared>,
    server: Server<Handler>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `opts.listen` and starts answering, with an empty view.
    pub async fn start(opts: DnsOptions) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(opts.listen)?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: opts.listen,
            protocol: "udp",
            source,
        })?;
        let shared = Arc::new(Shared {
            view: ArcSwap::from_pointee(DnsView::default()),
            upstream: opts.upstream,
            scope: opts.scope,
        });
        let mut server = Server::new(Handler {
            shared: shared.clone(),
        });
        let bind_err = |protocol, source| DnsError::Bind {
            addr,
            protocol,
            source,
        };
        server
            .register_socket(tokio::net::UdpSocket::from_std(udp).map_err(|e| bind_err("udp", e))?);
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp).map_err(|e| bind_err("tcp", e))?,
            TCP_IDLE,
            64,
        );
        Ok(DnsServer {
            shared,
            server,
            addr,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers from `view` from now on.
    pub fn set_view(&self, view: DnsView) {
        self.shared.view.store(Arc::new(view));
    }

    /// The view in use.
    pub fn view(&self) -> Arc<DnsView> {
        self.shared.view.load_full()
    }

    /// A handle that sets the view, for a task that follows the sources.
    pub fn view_setter(&self) -> ViewSetter {
        ViewSetter(self.shared.clone())
    }

    /// Stops listening and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            debug!(error = %e, "DNS server ended with an error");
        }
    }
}

/// Binds UDP then TCP on the same port (when `listen` has port 0, retries until both get one).
fn bind_pair(listen: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let mut attempts = 0;
    loop {
        let udp: std::net::UdpSocket = bind(listen, socket2::Type::DGRAM)
            .map_err(|source| DnsError::Bind {
                addr: listen,
                protocol: "udp",
                source,
            })?
            .into();
        let port = udp
            .local_addr()
            .map(|a| a.port())
            .map_err(|source| DnsError::Bind {
                addr: listen,
                protocol: "udp",
                source,
            })?;
        let at = SocketAddr::new(listen.ip(), port);
        match bind(at, socket2::Type::STREAM) {
            Ok(tcp) => return Ok((udp, tcp.into())),
            Err(e) if listen.port() == 0 && attempts < 10 => {
                attempts += 1;
                debug!(error = %e, port, "TCP port taken; trying another");
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    addr: at,
                    protocol: "tcp",
                    source,
                })
            }
        }
    }
}

/// A non-blocking socket bound with IP_FREEBIND / IPV6_FREEBIND, so the address may appear
/// on an interface later (the pool gateway shows up on the first bridge).
fn bind(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    if ty == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if ty == socket2::Type::STREAM {
        socket.listen(1024)?;
    }
    Ok(socket)
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let metadata = request.metadata;
        match self.respond(request, response).await {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, src = %request.src(), "cannot send a DNS response");
                let mut metadata = Metadata::response_from_request(&metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let builder = MessageResponseBuilder::from_message_request(request);
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            return response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::NotImp))
                .await;
        }
        let [query] = request.queries.queries() else {
            return response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::FormErr))
                .await;
        };
        let name = query.name().to_string();
        if names::in_zone(&name) {
            self.internal(request, response).await
        } else {
            self.forwarded(request, response).await
        }
    }

    /// Answers a name of the `internal.` zone from the view.
    async fn internal<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let query = &request.queries.queries()[0];
        let qname = query.original().name().clone();
        let qtype = query.query_type();
        let scope = scope_of(request.src().ip(), &self.shared.scope);
        let view = self.shared.view.load();
        let found = names::lookup(&view, scope, &query.name().to_string());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = self.shared.upstream.is_some();
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let mut answers = Vec::new();
        match found {
            Lookup::Refused => metadata.response_code = ResponseCode::Refused,
            Lookup::NxDomain => metadata.response_code = ResponseCode::NXDomain,
            Lookup::Apex if wants(RecordType::SOA) => answers.push(soa()),
            Lookup::Apex => {}
            Lookup::Addresses(addrs) if wants(RecordType::AAAA) => answers.extend(
                addrs
                    .into_iter()
                    .map(|a| Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(a)))),
            ),
            Lookup::Text(text) if wants(RecordType::TXT) => answers.push(Record::from_rdata(
                qname.clone(),
                TTL,
                RData::TXT(TXT::new(txt_strings(&text))),
            )),
            Lookup::Addresses(_) | Lookup::Text(_) => {}
        }
        // Negative answers (NXDOMAIN, and NODATA such as A for a name that exists) carry the
        // zone's SOA so resolvers cache them for TTL seconds only.
        let authorities = if answers.is_empty() && metadata.response_code != ResponseCode::Refused {
            vec![soa()]
        } else {
            Vec::new()
        };
        let limit = match request.protocol() {
            Protocol::Udp => request
                .edns
                .as_ref()
                .map_or(512, |e| e.max_payload().clamp(512, 4096)),
            _ => u16::MAX,
        };
        if fit(request, &metadata, &mut answers, limit) {
            metadata.truncation = true;
        }
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().clamp(512, 4096));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        response
            .send_response(builder.build(
                metadata,
                answers.iter(),
                authorities.iter(),
                std::iter::empty(),
                std::iter::empty(),
            ))
            .await
    }

    /// Relays a name outside `internal.` to the upstream resolver.
    async fn forwarded<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Some(upstream) = self.shared.upstream else {
            return response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                .await;
        };
        let tcp = request.protocol() != Protocol::Udp;
        let answer = match forward(upstream, request.as_slice(), tcp).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(error = %e, "forwarding failed");
                return response
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                    .await;
            }
        };
        let mut metadata = answer.metadata;
        metadata.id = request.metadata.id;
        let mut builder = builder;
        if let Some(edns) = &answer.edns {
            builder.edns(edns);
        }
        response
            .send_response(builder.build(
                metadata,
                answer.answers.iter(),
                answer.authorities.iter(),
                std::iter::empty(),
                answer.additionals.iter(),
            ))
            .await
    }
}

/// Drops answers from the end until the response fits in `limit` bytes; returns whether any
/// were dropped (the response is then marked truncated, and the client retries over TCP).
fn fit(request: &Request, metadata: &Metadata, answers: &mut Vec<Record>, limit: u16) -> bool {
    let size = |answers: &[Record]| {
        let mut m = Message::new(metadata.id, MessageType::Response, OpCode::Query);
        m.add_queries(
            request
                .queries
                .queries()
                .iter()
                .map(|q| q.original().clone()),
        );
        m.add_answers(answers.iter().cloned());
        m.add_authority(soa());
        // Room for an OPT record.
        m.to_vec().map_or(usize::MAX, |v| v.len() + 11)
    };
    let mut dropped = false;
    while !answers.is_empty() && size(answers) > usize::from(limit) {
        answers.pop();
        dropped = true;
    }
    dropped
}

/// TXT character-strings hold at most 255 bytes: longer text is split (clients join them).
fn txt_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    out.push(current);
    out
}

/// The SOA of `internal.`, whose minimum is the negative-caching TTL.
fn soa() -> Record {
    let zone = Name::from_ascii("internal.").expect("valid name");
    let mname = Name::from_ascii("ns.internal.").expect("valid name");
    let rname = Name::from_ascii("hostmaster.internal.").expect("valid name");
    Record::from_rdata(
        zone,
        TTL,
        RData::SOA(SOA::new(mname, rname, 1, 60, 60, 600, TTL)),
    )
}
