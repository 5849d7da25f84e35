//! End-to-end: `aloft server --geodns-listen … --geodns-zone …` answers `<app>.<zone>` with the
//! edge of the healthy region nearest each resolver, by the resolver's address (or the EDNS
//! client subnet it sends), and stops answering with a host that stops heartbeating.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use aloft_api::{Client, CreateAppRequest, RegisterHostRequest};
use aloft_testkit::{wait_for, Server};
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_server::proto::rr::{Name, RData, RecordType};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// Asks `server` for `name`/`qtype` from the local address `from` (optionally with a client
/// subnet); returns the response code and the addresses answered.
fn ask(
    server: SocketAddr,
    from: &str,
    name: &str,
    qtype: RecordType,
    subnet: Option<&str>,
) -> (ResponseCode, Vec<IpAddr>) {
    let socket = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some(subnet) = subnet {
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.parse().unwrap(),
                32,
                0,
            )));
        m.set_edns(edns);
    }
    socket.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).expect("GeoDNS answers");
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, 0x4242);
    let addrs = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    (reply.metadata.response_code, addrs)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn each_resolver_gets_its_nearest_healthy_edge() {
    let map_dir = tempfile::tempdir().unwrap();
    let map = map_dir.path().join("map.toml");
    std::fs::write(
        &map,
        r#"
[networks]
"127.0.0.2/32" = "ams"
"127.0.0.3/32" = "iad"
"127.0.0.4/32" = "syd"
"127.0.0.5/32" = "sin"
"#,
    )
    .unwrap();
    let mut server = Server::start_with(
        bin(),
        &[
            "--heartbeat-timeout",
            "2",
            "--geodns-listen",
            "127.0.0.1:0",
            "--geodns-zone",
            "example.net",
            "--geodns-map",
            map.to_str().unwrap(),
        ],
    )
    .unwrap();
    let printed = server.proc.output();
    let dns: SocketAddr = printed
        .lines()
        .find_map(|l| l.strip_prefix("geodns listening on udp://"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no GeoDNS address in:\n{printed}"))
        .parse()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Client::new(&server.url, server.token.clone()).unwrap();
    rt.block_on(api.create_app(&CreateAppRequest {
        app_name: "hello".into(),
        org_slug: None,
        network: None,
    }))
    .unwrap();
    let hosts = [
        ("h-ams", "ams", vec!["192.0.2.1", "2001:db8::1"]),
        ("h-iad", "iad", vec!["192.0.2.2"]),
        ("h-syd", "syd", vec!["192.0.2.3"]),
    ];
    for (id, region, edges) in &hosts {
        rt.block_on(api.register_host(&RegisterHostRequest {
            id: id.to_string(),
            region: region.to_string(),
            address: "127.0.0.1:9".into(),
            cpus: 1,
            memory_mb: 512,
            api_secret: None,
            mesh: None,
            host_index: None,
            edge_addresses: edges.iter().map(|e| e.to_string()).collect(),
        }))
        .unwrap();
    }
    // ams and iad keep heartbeating; syd only until it is told to stop.
    let (stop_syd, syd_stopped) = tokio::sync::oneshot::channel::<()>();
    {
        let api = api.clone();
        rt.spawn(async move {
            let mut syd_stopped = syd_stopped;
            let mut syd = true;
            loop {
                for id in ["h-ams", "h-iad"] {
                    let _ = api.heartbeat(id).await;
                }
                if syd {
                    if syd_stopped.try_recv().is_ok() {
                        syd = false;
                    } else {
                        let _ = api.heartbeat("h-syd").await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }

    let name = "hello.example.net.";
    let a = RecordType::A;
    assert_eq!(
        ask(dns, "127.0.0.2", name, a, None),
        (ResponseCode::NoError, ips(&["192.0.2.1"]))
    );
    assert_eq!(
        ask(dns, "127.0.0.2", name, RecordType::AAAA, None),
        (ResponseCode::NoError, ips(&["2001:db8::1"]))
    );
    assert_eq!(ask(dns, "127.0.0.3", name, a, None).1, ips(&["192.0.2.2"]));
    assert_eq!(ask(dns, "127.0.0.4", name, a, None).1, ips(&["192.0.2.3"]));
    // sin has no edge: syd is its nearest.
    assert_eq!(ask(dns, "127.0.0.5", name, a, None).1, ips(&["192.0.2.3"]));
    // The client subnet a resolver passes on wins over the resolver's own address.
    assert_eq!(
        ask(dns, "127.0.0.2", name, a, Some("127.0.0.4")).1,
        ips(&["192.0.2.3"])
    );
    // Names under an app, and the apex, answer too; unknown apps do not; other zones are
    // refused.
    assert_eq!(
        ask(dns, "127.0.0.3", "www.hello.example.net.", a, None).1,
        ips(&["192.0.2.2"])
    );
    assert_eq!(
        ask(dns, "127.0.0.3", "example.net.", a, None).1,
        ips(&["192.0.2.2"])
    );
    assert_eq!(
        ask(dns, "127.0.0.3", "nope.example.net.", a, None),
        (ResponseCode::NXDomain, vec![])
    );
    assert_eq!(
        ask(dns, "127.0.0.3", "hello.example.org.", a, None).0,
        ResponseCode::Refused
    );

    // syd's host stops heartbeating: its clients get the next nearest region, iad.
    stop_syd.send(()).unwrap();
    wait_for(
        "syd's edge to leave the answers",
        Duration::from_secs(30),
        || (ask(dns, "127.0.0.4", name, a, None).1 == ips(&["192.0.2.2"])).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", ask(dns, "127.0.0.4", name, a, None)));
    assert_eq!(ask(dns, "127.0.0.2", name, a, None).1, ips(&["192.0.2.1"]));
    drop(rt);
    server.proc.kill9();
}
