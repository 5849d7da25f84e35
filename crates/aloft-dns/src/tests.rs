//! The server over real sockets on loopback: answers, scoping by source address, UDP and
//! TCP, truncation, and forwarding to an upstream started here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use crate::{DnsApp, DnsMachine, DnsOptions, DnsServer, DnsView, Scope, TTL};

const ACME: u32 = 0xacde;
const RIVAL: u32 = 0x1111;
/// Queries from this loopback address are ACME's, from `RIVAL_SRC` RIVAL's.
const ACME_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const RIVAL_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn addr(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfdaa, 0, ACME as u16, 0, 3, 0, last, 2)
}

fn view(machines: u16) -> DnsView {
    DnsView {
        region: "ams".into(),
        rtts: HashMap::new(),
        apps: vec![
            DnsApp {
                name: "shop".into(),
                network: ACME,
                machines: (1..=machines)
                    .map(|i| DnsMachine {
                        id: format!("m{i}"),
                        region: "ams".into(),
                        address: addr(i),
                        started: true,
                        healthy: true,
                        process_group: None,
                    })
                    .collect(),
            },
            DnsApp {
                name: "vault".into(),
                network: RIVAL,
                machines: vec![],
            },
        ],
    }
}

async fn start(upstream: Option<SocketAddr>) -> DnsServer {
    let server = DnsServer::start(DnsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        scope: Arc::new(|ip: IpAddr| match ip {
            IpAddr::V4(v4) if v4 == ACME_SRC => Scope::Org(ACME),
            IpAddr::V4(v4) if v4 == RIVAL_SRC => Scope::Org(RIVAL),
            _ => Scope::Unknown,
        }),
    })
    .await
    .unwrap();
    server.set_view(view(2));
    server
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp_from(src: Ipv4Addr, server: SocketAddr, bytes: &[u8]) -> Message {
    let socket = UdpSocket::bind((src, 0)).await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = socket.recv_from(&mut buf).await.unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    udp_from(ACME_SRC, server, &query(name, qtype, true)).await
}

async fn tcp(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn aaaa(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_aaaa_and_txt_with_a_short_ttl() {
    let server = start(None).await;
    let at = server.local_addr();
    let m = udp(at, "shop.internal.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(aaaa(&m), vec![addr(1), addr(2)]);
    assert!(m.answers.iter().all(|r| r.ttl == TTL));
    assert!(m.edns.is_some(), "EDNS is answered with EDNS");

    let m = udp(at, "VMS.Shop.Internal.", RecordType::TXT).await;
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m}")
    };
    assert_eq!(txt.to_string(), "m1 ams,m2 ams");
    server.shutdown().await;
}

#[tokio::test]
async fn a_queries_get_nodata_and_unknown_names_nxdomain() {
    let server = start(None).await;
    let at = server.local_addr();
    let m = udp(at, "shop.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].ttl, TTL);

    let m = udp(at, "nosuch.internal.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown().await;
}

#[tokio::test]
async fn another_orgs_querier_gets_nxdomain() {
    let server = start(None).await;
    let at = server.local_addr();
    let m = udp_from(
        RIVAL_SRC,
        at,
        &query("shop.internal.", RecordType::AAAA, false),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    let m = udp_from(
        RIVAL_SRC,
        at,
        &query("vault.internal.", RecordType::AAAA, false),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // A source nobody can place is refused.
    let m = udp_from(
        Ipv4Addr::new(127, 0, 0, 3),
        at,
        &query("shop.internal.", RecordType::AAAA, false),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    server.shutdown().await;
}

#[tokio::test]
async fn a_stopped_machine_disappears_from_answers() {
    let server = start(None).await;
    let at = server.local_addr();
    let mut v = view(2);
    v.apps[0].machines[1].started = false;
    server.set_view(v);
    let m = udp(at, "shop.internal.", RecordType::AAAA).await;
    assert_eq!(aaaa(&m), vec![addr(1)]);
    let m = udp(at, "m2.vm.shop.internal.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown().await;
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let server = start(None).await;
    let at = server.local_addr();
    server.set_view(view(100));
    // No EDNS: 512 bytes at most over UDP.
    let bytes = query("shop.internal.", RecordType::AAAA, false);
    let m = udp_from(ACME_SRC, at, &bytes).await;
    assert!(m.metadata.truncation);
    assert!(
        !m.answers.is_empty() && m.answers.len() < 100,
        "{}",
        m.answers.len()
    );
    let m = tcp(at, &bytes).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // A long TXT answer is split into 255-byte strings that join back.
    let m = tcp(at, &query("vms.shop.internal.", RecordType::TXT, false)).await;
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m}")
    };
    assert!(txt.txt_data.len() > 1);
    let joined: Vec<u8> = txt.txt_data.iter().flat_map(|s| s.to_vec()).collect();
    let joined = String::from_utf8(joined).unwrap();
    assert_eq!(joined.split(',').count(), 100);
    assert!(joined.starts_with("m1 ams,m2 ams,"));
    server.shutdown().await;
}

/// An upstream resolver that answers every A query with 192.0.2.7.
async fn fake_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().clone();
            r.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ));
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    at
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    let upstream = fake_upstream().await;
    let server = start(Some(upstream)).await;
    let at = server.local_addr();
    let m = udp(at, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.id, 0x5151);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let RData::A(a) = &m.answers[0].data else {
        panic!("{m}")
    };
    assert_eq!(a.0, Ipv4Addr::new(192, 0, 2, 7));
    // Forwarding does not depend on the querier's org (even an unplaced source gets it).
    let m = udp_from(
        Ipv4Addr::new(127, 0, 0, 3),
        at,
        &query("example.org.", RecordType::A, false),
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_upstream_other_names_fail() {
    let server = start(None).await;
    let m = udp(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    server.shutdown().await;
}

#[tokio::test]
async fn binds_an_address_that_is_not_up_yet() {
    // TEST-NET-2 is on no interface here: IP_FREEBIND lets the server bind it anyway.
    let server = DnsServer::start(DnsOptions {
        listen: "198.51.100.77:0".parse().unwrap(),
        upstream: None,
        scope: Arc::new(|_| Scope::Unknown),
    })
    .await
    .unwrap();
    assert_eq!(
        server.local_addr().ip(),
        "198.51.100.77".parse::<IpAddr>().unwrap()
    );
    server.shutdown().await;
}
