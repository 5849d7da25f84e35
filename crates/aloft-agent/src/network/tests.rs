//! Real namespaces, veths, bridges and firewall rules (we run as root). Every test has its own
//! bridge prefix, chain prefix, namespace directory, IPv4 pool and 6PN networks, so tests run
//! in parallel and never touch the host's real ones; a drop guard removes everything.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// One test's private slice of the host.
struct Fixture {
    net: HostNetwork,
    /// The third octet of this test's IPv4 pool (`10.231.<third>.0/24`).
    third: u8,
    suffix: String,
    machines: Vec<(String, Ipv4Addr)>,
    used_v4: HashSet<Ipv4Addr>,
    next_machine: u32,
}

impl Fixture {
    fn new() -> Self {
        // A random base per test process plus a counter: names and pools never collide
        // between the tests of one run, and rarely with a leftover of another run.
        static BASE: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let rand = *BASE.get_or_init(random_u64);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("{:05x}", (rand + u64::from(n)) & 0xfffff);
        let third = ((rand >> 24) as u8).wrapping_add(n);
        let options = NetworkOptions {
            bridge_prefix: format!("t{suffix}"),
            netns_dir: PathBuf::from(format!("/run/aloft-test-netns-{suffix}")),
            ipv4_pool: Ipv4Pool::new(Ipv4Addr::new(10, 231, third, 0), 24).unwrap(),
            host_index: (rand >> 32) as u32 & 0xffff,
            chain_prefix: format!("ALOFT-T{suffix}"),
            nameservers: Vec::new(),
            protected: Vec::new(),
        };
        Self {
            net: HostNetwork::new(options).unwrap(),
            third,
            suffix,
            machines: Vec::new(),
            used_v4: HashSet::new(),
            next_machine: 1,
        }
    }

    /// A network id unique to this test.
    fn network(&self, n: u32) -> u32 {
        (u32::from_str_radix(&self.suffix, 16).unwrap() << 8) | n
    }

    fn request(&mut self, name: &str, network: u32) -> MachineNetRequest {
        let ipv4 = allocate(&self.used_v4, &self.net.options().ipv4_pool).unwrap();
        self.used_v4.insert(ipv4);
        let machine = self.next_machine;
        self.next_machine += 1;
        MachineNetRequest {
            machine_id: format!("{name}-{}", self.suffix),
            network,
            ipv4,
            ipv6: sixpn_address(network, self.net.options().host_index, machine),
        }
    }

    async fn setup(&mut self, req: &MachineNetRequest) -> MachineNet {
        self.machines.push((req.machine_id.clone(), req.ipv4));
        self.net.setup_machine(req).await.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let options = self.net.options().clone();
        let machines = std::mem::take(&mut self.machines);
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let net = HostNetwork::new(options.clone()).unwrap();
                for (id, ipv4) in machines {
                    net.teardown_machine(&id, Some(ipv4)).await.unwrap();
                }
                net.teardown_host().await.unwrap();
            });
            if options.netns_dir.starts_with("/run")
                && options
                    .netns_dir
                    .to_string_lossy()
                    .starts_with("/run/aloft-test-netns-")
            {
                let _ = std::fs::remove_dir(&options.netns_dir);
            }
        });
        let _ = cleanup.join();
    }
}

/// A listener inside the machine's namespace on `addr:0`; binding proves the address is there.
fn listen_in(net: &MachineNet, addr: IpAddr) -> (TcpListener, SocketAddr) {
    let listener = netns::run_in(&net.netns_path, || TcpListener::bind((addr, 0)))
        .unwrap()
        .unwrap();
    let local = listener.local_addr().unwrap();
    (listener, local)
}

/// Connects to `target` (from `from`'s namespace, or the host's when `None`) and checks a
/// byte goes through both ways; returns the client address the server saw. An error means
/// "unreachable".
fn exchange(
    from: Option<&Path>,
    listener: &TcpListener,
    target: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let connect = || TcpStream::connect_timeout(&target, CONNECT_TIMEOUT);
    let mut client = match from {
        Some(path) => netns::run_in(path, connect).unwrap()?,
        None => connect()?,
    };
    let (mut server, peer) = listener.accept()?;
    client.write_all(b"x")?;
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte)?;
    server.write_all(b"y")?;
    client.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    client.read_exact(&mut byte)?;
    assert_eq!(&byte, b"y");
    Ok(peer)
}

fn reachable(from: Option<&MachineNet>, to: &MachineNet, v6: bool) -> bool {
    let addr = if v6 {
        IpAddr::V6(to.ipv6)
    } else {
        IpAddr::V4(to.ipv4)
    };
    let (listener, target) = listen_in(to, addr);
    exchange(from.map(|m| m.netns_path.as_path()), &listener, target).is_ok()
}

/// A namespace standing in for the internet: reached from the host over a plain veth, with no
/// route back to the machines' pool, so machines reach it only through NAT.
struct Outside {
    path: PathBuf,
    host_veth: String,
    host_addr: Ipv4Addr,
    addr: Ipv4Addr,
    /// A "public" address on the outside's loopback, routed through it (an internet host).
    public: Ipv4Addr,
    /// Another one, which tests may list in `NetworkOptions::protected`.
    protected: Ipv4Addr,
    /// A link-local address like the metadata service's (169.254.169.254), routed through
    /// the outside (one per test, so parallel tests do not share a route).
    metadata: Ipv4Addr,
}

impl Outside {
    async fn new(fx: &Fixture) -> Self {
        let path = fx
            .net
            .options()
            .netns_dir
            .join(format!("outside-{}", fx.suffix));
        let (host_veth, peer) = (format!("x{}", fx.suffix), format!("y{}", fx.suffix));
        let host_addr = Ipv4Addr::new(10, 233, fx.third, 1);
        let addr = Ipv4Addr::new(10, 233, fx.third, 2);
        netns::create(&path).unwrap();
        let public = Ipv4Addr::new(198, 18, fx.third, 1);
        let protected = Ipv4Addr::new(198, 18, fx.third, 2);
        let metadata = Ipv4Addr::new(169, 254, fx.third, 254);
        let outside = Self {
            path: path.clone(),
            host_veth: host_veth.clone(),
            host_addr,
            addr,
            public,
            protected,
            metadata,
        };
        let nl = Netlink::connect().unwrap();
        nl.create_veth(&host_veth, &peer).await.unwrap();
        let index = nl.index(&host_veth).await.unwrap().unwrap();
        nl.add_address(index, IpAddr::V4(host_addr), 30)
            .await
            .unwrap();
        nl.set_up(index, &host_veth).await.unwrap();
        nl.move_to(&peer, &std::fs::File::open(&path).unwrap())
            .await
            .unwrap();
        let mac = machine_mac(&peer);
        netns::run_async_in(path, move || async move {
            let nl = Netlink::connect()?;
            let eth0 = nl.rename_up(&peer, "eth0", mac).await?;
            nl.add_address(eth0, IpAddr::V4(addr), 30).await?;
            let lo = nl.index("lo").await?.unwrap();
            nl.set_up(lo, "lo").await?;
            for extra in [public, protected, metadata] {
                nl.add_address(lo, IpAddr::V4(extra), 32).await?;
            }
            nl.wait_oper_up("eth0", Duration::from_secs(5)).await
        })
        .await
        .unwrap();
        // The host reaches the outside's loopback addresses through it.
        for extra in [public, protected, metadata] {
            nl.add_route_via_v4(extra, addr, index).await.unwrap();
        }
        nl.wait_oper_up(&host_veth, Duration::from_secs(5))
            .await
            .unwrap();
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let (path, veth) = (self.path.clone(), self.host_veth.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { Netlink::connect()?.delete_link(&veth).await })
                .unwrap();
            netns::delete(&path).unwrap();
        })
        .join();
    }
}

#[tokio::test]
async fn host_reaches_a_machine_on_both_families_and_teardown_removes_everything() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let req = fx.request("solo", fx.network(1));
    let net = fx.setup(&req).await;

    assert_eq!(net.gateway_v4, fx.net.options().ipv4_pool.gateway());
    assert!(netns::exists(&net.netns_path));
    assert!(
        reachable(None, &net, false),
        "host cannot reach {}",
        net.ipv4
    );
    assert!(
        reachable(None, &net, true),
        "host cannot reach {}",
        net.ipv6
    );

    // The machine sees exactly the interfaces it should: loopback up and eth0.
    let names = netns::run_async_in(net.netns_path.clone(), || async {
        Netlink::connect()?.names().await
    })
    .await
    .unwrap();
    assert_eq!(
        names.iter().filter(|n| *n == MACHINE_INTERFACE).count(),
        1,
        "{names:?}"
    );
    let lo_listener = netns::run_in(&net.netns_path, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
    })
    .unwrap()
    .unwrap();
    let lo_addr = lo_listener.local_addr().unwrap();
    exchange(Some(&net.netns_path), &lo_listener, lo_addr).expect("loopback is up");

    let host_nl = Netlink::connect().unwrap();
    assert!(host_nl.has_host_route_v4(net.ipv4).await.unwrap());
    assert_eq!(host_nl.count_neighbours_to(net.mac).await.unwrap(), 2);
    // Without the caller's record of the address, teardown finds it in the namespace.
    fx.net
        .teardown_machine(&req.machine_id, None)
        .await
        .unwrap();
    assert!(!net.netns_path.exists());
    assert_eq!(host_nl.index(&net.veth_host).await.unwrap(), None);
    assert!(!host_nl.has_host_route_v4(net.ipv4).await.unwrap());
    assert_eq!(host_nl.count_neighbours_to(net.mac).await.unwrap(), 0);
    // Idempotent.
    fx.net
        .teardown_machine(&req.machine_id, Some(req.ipv4))
        .await
        .unwrap();
}

#[tokio::test]
async fn machines_of_one_org_reach_each_other_and_other_orgs_do_not() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let (org_a, org_b) = (fx.network(0xa), fx.network(0xb));
    let req = fx.request("a1", org_a);
    let a1 = fx.setup(&req).await;
    let req = fx.request("a2", org_a);
    let a2 = fx.setup(&req).await;
    let req = fx.request("b1", org_b);
    let b1 = fx.setup(&req).await;
    assert_ne!(a1.bridge, b1.bridge);
    assert_eq!(a1.bridge, a2.bridge);

    for v6 in [false, true] {
        assert!(reachable(Some(&a1), &a2, v6), "a1 -> a2 (v6: {v6})");
        assert!(reachable(Some(&a2), &a1, v6), "a2 -> a1 (v6: {v6})");
        assert!(!reachable(Some(&b1), &a1, v6), "b1 -> a1 (v6: {v6})");
        assert!(!reachable(Some(&b1), &a2, v6), "b1 -> a2 (v6: {v6})");
        assert!(!reachable(Some(&a1), &b1, v6), "a1 -> b1 (v6: {v6})");
        for m in [&a1, &a2, &b1] {
            assert!(reachable(None, m, v6), "host -> {} (v6: {v6})", m.bridge);
        }
    }

    // A machine that routes another org's IPv4 address through the gateway (instead of
    // looking for it on its own link) is stopped by the firewall, while the same route
    // works inside one org.
    for (from, to) in [(&b1, &a1), (&a2, &a1)] {
        let (dst, gw) = (to.ipv4, from.gateway_v4);
        netns::run_async_in(from.netns_path.clone(), move || async move {
            let nl = Netlink::connect()?;
            let eth0 = nl.index(MACHINE_INTERFACE).await?.unwrap();
            nl.add_route_via_v4(dst, gw, eth0).await
        })
        .await
        .unwrap();
    }
    assert!(
        !reachable(Some(&b1), &a1, false),
        "b1 -> a1 through the gateway"
    );
    assert!(
        reachable(Some(&a2), &a1, false),
        "a2 -> a1 through the gateway"
    );
}

#[tokio::test]
async fn setup_recovers_from_a_crash_half_way() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let req = fx.request("crash", fx.network(1));
    fx.machines.push((req.machine_id.clone(), req.ipv4));
    // What a crash after creating the namespace and veth pair leaves behind.
    let path = fx.net.netns_path(&req.machine_id);
    netns::create(&path).unwrap();
    let (host, peer) = HostNetwork::veth_names(&req.machine_id);
    Netlink::connect()
        .unwrap()
        .create_veth(&host, &peer)
        .await
        .unwrap();

    let net = fx.net.setup_machine(&req).await.unwrap();
    assert!(reachable(None, &net, false));
    assert!(reachable(None, &net, true));
    // Setting up again replaces the machine's network rather than failing.
    let net = fx.net.setup_machine(&req).await.unwrap();
    assert!(reachable(None, &net, false));
}

#[tokio::test]
async fn ensure_host_is_idempotent_and_keeps_bridge_rules() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let (org, other) = (fx.network(1), fx.network(2));
    let req = fx.request("m1", org);
    let m1 = fx.setup(&req).await;
    let req = fx.request("m2", org);
    let m2 = fx.setup(&req).await;
    let req = fx.request("o1", other);
    let o1 = fx.setup(&req).await;
    // An agent restart runs ensure_host again with the bridges in place.
    fx.net.ensure_host().await.unwrap();
    fx.net.ensure_host().await.unwrap();
    assert!(reachable(Some(&m1), &m2, false));
    assert!(reachable(Some(&m1), &m2, true));
    assert!(!reachable(Some(&o1), &m1, true));
}

#[tokio::test]
async fn setup_rejects_requests_that_do_not_fit_the_host() {
    let mut fx = Fixture::new();
    let good = fx.request("bad", fx.network(1));
    let pool = fx.net.options().ipv4_pool;
    let host = fx.net.options().host_index;
    let cases = [
        MachineNetRequest {
            machine_id: "../x".into(),
            ..good.clone()
        },
        MachineNetRequest {
            ipv4: pool.gateway(),
            ..good.clone()
        },
        MachineNetRequest {
            ipv4: Ipv4Addr::new(192, 0, 2, 9),
            ..good.clone()
        },
        MachineNetRequest {
            ipv6: "fd00::2".parse().unwrap(),
            ..good.clone()
        },
        MachineNetRequest {
            ipv6: sixpn_address(good.network + 1, host, 5),
            ..good.clone()
        },
        MachineNetRequest {
            ipv6: sixpn_address(good.network, host + 1, 5),
            ..good.clone()
        },
        MachineNetRequest {
            ipv6: sixpn_gateway(good.network, host),
            ..good.clone()
        },
    ];
    for req in cases {
        let err = fx.net.setup_machine(&req).await.unwrap_err();
        assert!(
            matches!(err, NetworkError::InvalidRequest { .. }),
            "{req:?}: {err}"
        );
    }
    assert!(!fx.net.netns_path(&good.machine_id).exists());
}

#[test]
fn options_reject_names_that_do_not_fit_interfaces_or_chains() {
    let good = NetworkOptions::for_host(3);
    assert!(HostNetwork::new(good.clone()).is_ok());
    for bad in [
        NetworkOptions {
            bridge_prefix: "toolong1".into(),
            ..good.clone()
        },
        NetworkOptions {
            bridge_prefix: String::new(),
            ..good.clone()
        },
        NetworkOptions {
            bridge_prefix: "vmx".into(),
            ..good.clone()
        },
        NetworkOptions {
            chain_prefix: "A B".into(),
            ..good.clone()
        },
        NetworkOptions {
            netns_dir: "run/netns".into(),
            ..good.clone()
        },
    ] {
        assert!(HostNetwork::new(bad.clone()).is_err(), "{bad:?}");
    }
    let net = HostNetwork::new(good).unwrap();
    assert_eq!(net.bridge_name(0xab), "aloft000000ab");
    assert!(net.bridge_name(u32::MAX).len() <= 15);
    let (host, peer) = HostNetwork::veth_names("e286065f969386");
    assert!(host.len() <= 15 && peer.len() <= 15);
    assert_ne!(host, HostNetwork::veth_names("e286065f969387").0);
    assert_eq!(net.netns_path("m1"), Path::new("/run/netns/aloft-m1"));
}

#[tokio::test]
async fn machines_reach_the_outside_through_nat() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let req = fx.request("out", fx.network(1));
    let machine = fx.setup(&req).await;
    let outside = Outside::new(&fx).await;

    let listener = netns::run_in(&outside.path, || TcpListener::bind((outside.public, 0)))
        .unwrap()
        .unwrap();
    let target = listener.local_addr().unwrap();
    let peer = exchange(Some(&machine.netns_path), &listener, target)
        .expect("the machine reaches the outside");
    // The outside sees the host's address, not the machine's private one.
    assert_eq!(peer.ip(), IpAddr::V4(outside.host_addr));
}

#[tokio::test]
async fn concurrent_setups_of_new_networks_all_work() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let (one, two) = (fx.network(1), fx.network(2));
    let reqs: Vec<_> = [("c1", one), ("c2", one), ("c3", two), ("c4", two)]
        .into_iter()
        .map(|(name, network)| fx.request(name, network))
        .collect();
    fx.machines
        .extend(reqs.iter().map(|r| (r.machine_id.clone(), r.ipv4)));
    let nets: Vec<_> = futures::future::join_all(reqs.iter().map(|req| fx.net.setup_machine(req)))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    for req in &reqs {
        assert!(fx.net.is_set_up(&req.machine_id).await.unwrap());
    }
    assert!(reachable(Some(&nets[0]), &nets[1], true));
    assert!(reachable(Some(&nets[3]), &nets[2], false));
    assert!(!reachable(Some(&nets[2]), &nets[0], true));
    for net in &nets {
        assert!(reachable(None, net, false));
    }
    fx.net
        .teardown_machine(&reqs[0].machine_id, Some(reqs[0].ipv4))
        .await
        .unwrap();
    assert!(!fx.net.is_set_up(&reqs[0].machine_id).await.unwrap());
}

#[tokio::test]
async fn ip_netns_sees_machines_in_run_netns() {
    let mut fx = Fixture::new();
    let mut options = fx.net.options().clone();
    options.netns_dir = PathBuf::from("/run/netns");
    fx.net = HostNetwork::new(options).unwrap();
    fx.net.ensure_host().await.unwrap();
    let req = fx.request("ipn", fx.network(1));
    let net = fx.setup(&req).await;

    let name = format!("aloft-{}", req.machine_id);
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &name, "ip", "-o", "addr", "show", "dev"])
        .arg(MACHINE_INTERFACE)
        .output()
        .await
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", net.ipv4)), "{text}");
    assert!(text.contains(&format!("{}/96", net.ipv6)), "{text}");
}

#[tokio::test]
async fn setup_before_ensure_host_fails_cleanly() {
    let mut fx = Fixture::new();
    let req = fx.request("early", fx.network(1));
    fx.machines.push((req.machine_id.clone(), req.ipv4));
    let err = fx.net.setup_machine(&req).await.unwrap_err();
    assert!(matches!(err, NetworkError::HostNotPrepared { .. }), "{err}");
    assert!(!fx.net.is_set_up(&req.machine_id).await.unwrap());
    let bridge = fx.net.bridge_name(req.network);
    assert_eq!(
        Netlink::connect().unwrap().index(&bridge).await.unwrap(),
        None
    );
}

/// Runs `args` in the namespace at `path` (as root, so with every capability a machine
/// could have: the rules on the host side must hold anyway).
fn run_in_ns(path: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(args)
        .output()
        .expect("nsenter (util-linux) is installed");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a connection from `from`'s namespace to a listener of the host on `addr` works.
fn reaches_host(from: &MachineNet, addr: SocketAddr) -> bool {
    let listener = TcpListener::bind(addr).unwrap();
    let target = listener.local_addr().unwrap();
    exchange(Some(&from.netns_path), &listener, target).is_ok()
}

/// Whether a connection from `from` (or the host) to a listener in `outside` on `addr` works.
fn reaches_outside(from: Option<&MachineNet>, outside: &Outside, addr: Ipv4Addr) -> bool {
    let listener = netns::run_in(&outside.path, || TcpListener::bind((addr, 0)))
        .unwrap()
        .unwrap();
    let target = listener.local_addr().unwrap();
    exchange(from.map(|m| m.netns_path.as_path()), &listener, target).is_ok()
}

#[tokio::test]
async fn a_machine_sends_only_from_its_own_addresses_and_hardware_address() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let org = fx.network(1);
    let req = fx.request("s1", org);
    let s1 = fx.setup(&req).await;
    let req = fx.request("s2", org);
    let s2 = fx.setup(&req).await;
    for v6 in [false, true] {
        assert!(reachable(Some(&s1), &s2, v6), "s1 -> s2 (v6: {v6})");
    }
    let ns = s1.netns_path.as_path();
    let prefix = format!("/{}", s1.ipv4_prefix);

    // s1 takes a free address of the pool instead of its own: what it sends from there
    // never reaches s2 (without the rules s2 would answer, through ARP, to s1).
    // Deleting the primary address keeps the other one (and the routes).
    run_in_ns(
        ns,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    );
    let free = allocate(&fx.used_v4, &fx.net.options().ipv4_pool).unwrap();
    let own = format!("{}{prefix}", s1.ipv4);
    let other = format!("{free}{prefix}");
    run_in_ns(ns, &["ip", "addr", "add", &other, "dev", "eth0"]);
    run_in_ns(ns, &["ip", "addr", "del", &own, "dev", "eth0"]);
    assert!(!reachable(Some(&s1), &s2, false), "s1 sent from {free}");
    run_in_ns(ns, &["ip", "addr", "add", &own, "dev", "eth0"]);
    run_in_ns(ns, &["ip", "addr", "del", &other, "dev", "eth0"]);
    run_in_ns(
        ns,
        &[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &s1.gateway_v4.to_string(),
        ],
    );
    assert!(reachable(Some(&s1), &s2, false), "s1 from its own address");

    // The same with a 6PN address outside its /112 (another machine's of the same network).
    let parts = parse_sixpn(s1.ipv6).unwrap();
    let foreign = sixpn_address(parts.network, parts.host, parts.machine + 100);
    let own6 = format!("{}/96", s1.ipv6);
    let other6 = format!("{foreign}/96");
    run_in_ns(ns, &["ip", "addr", "add", &other6, "dev", "eth0", "nodad"]);
    run_in_ns(ns, &["ip", "addr", "del", &own6, "dev", "eth0"]);
    assert!(!reachable(Some(&s1), &s2, true), "s1 sent from {foreign}");
    run_in_ns(ns, &["ip", "addr", "add", &own6, "dev", "eth0", "nodad"]);
    run_in_ns(ns, &["ip", "addr", "del", &other6, "dev", "eth0"]);
    assert!(
        reachable(Some(&s1), &s2, true),
        "s1 from its own 6PN address"
    );

    // Another hardware address: nothing goes through, on either family.
    run_in_ns(
        ns,
        &["ip", "link", "set", "eth0", "address", "06:00:00:00:00:99"],
    );
    for v6 in [false, true] {
        assert!(
            !reachable(Some(&s1), &s2, v6),
            "s1 with another MAC (v6: {v6})"
        );
    }
}

/// Sends one frame built by `script` (Python, with `s` an AF_PACKET socket bound to eth0
/// and `mac(text)`, `ip4(text)` helpers) from the namespace at `path`.
fn send_frame(path: &Path, script: &str) {
    let program = format!(
        "import socket, struct\n\
         mac = lambda t: bytes(int(x, 16) for x in t.split(':'))\n\
         ip4 = socket.inet_aton\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         {script}\n"
    );
    run_in_ns(path, &["python3", "-c", &program]);
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The hardware address `path`'s namespace has for `addr`, if any.
fn neighbour(path: &Path, addr: IpAddr) -> Option<String> {
    let out = run_in_ns(path, &["ip", "neigh", "show", &addr.to_string()]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "lladdr")?;
    words.get(at + 1).map(|w| w.to_string())
}

#[tokio::test]
async fn a_machine_cannot_claim_another_machine_s_address_to_its_neighbours() {
    let mut fx = Fixture::new();
    fx.net.ensure_host().await.unwrap();
    let org = fx.network(1);
    let mut nets = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let req = fx.request(name, org);
        nets.push(fx.setup(&req).await);
    }
    let (liar, victim, target) = (&nets[0], &nets[1], &nets[2]);
    // The target knows the victim; a gratuitous ARP reply (which overrides an entry at once)
    // from the liar, claiming the victim's address, would redirect it.
    assert!(reachable(Some(target), victim, false), "target -> victim");
    assert_eq!(
        neighbour(&target.netns_path, IpAddr::V4(victim.ipv4)),
        Some(mac_text(victim.mac))
    );
    send_frame(
        &liar.netns_path,
        &format!(
            "arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 2) + mac('{liar_mac}') + ip4('{victim}') \
             + mac('{liar_mac}') + ip4('{victim}')\n\
             s.send(mac('ff:ff:ff:ff:ff:ff') + mac('{liar_mac}') + struct.pack('!H', 0x0806) + arp)",
            liar_mac = mac_text(liar.mac),
            victim = victim.ipv4,
        ),
    );
    assert_eq!(
        neighbour(&target.netns_path, IpAddr::V4(victim.ipv4)),
        Some(mac_text(victim.mac)),
        "the liar's ARP reply changed the target's entry"
    );
    assert!(reachable(Some(target), victim, false), "target -> victim");

    // IPv6: an unsolicited neighbour advertisement with the override flag replaces an entry
    // the target already has.
    assert!(
        reachable(Some(target), victim, true),
        "target -> victim (v6)"
    );
    let victim6 = IpAddr::V6(victim.ipv6);
    assert_eq!(
        neighbour(&target.netns_path, victim6),
        Some(mac_text(victim.mac))
    );
    let program = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)\n\
         mac = bytes(int(x, 16) for x in '{liar_mac}'.split(':'))\n\
         na = struct.pack('!BBHI', 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, '{victim}') \
         + struct.pack('!BB', 2, 1) + mac\n\
         s.sendto(na, ('{target}', 0))\n",
        liar_mac = mac_text(liar.mac),
        victim = victim.ipv6,
        target = target.ipv6,
    );
    run_in_ns(&liar.netns_path, &["python3", "-c", &program]);
    assert!(
        reachable(Some(target), victim, true),
        "target -> victim (v6)"
    );
    assert_eq!(
        neighbour(&target.netns_path, victim6),
        Some(mac_text(victim.mac))
    );
}

#[tokio::test]
async fn machines_reach_dns_on_the_host_and_the_internet_but_not_the_host_or_its_lan() {
    let mut fx = Fixture::new();
    let probe = Outside::new(&fx).await;
    let mut options = fx.net.options().clone();
    options.protected = vec![IpPrefix::host(IpAddr::V4(probe.protected))];
    fx.net = HostNetwork::new(options).unwrap();
    fx.net.ensure_host().await.unwrap();
    let req = fx.request("lan", fx.network(1));
    let m = fx.setup(&req).await;
    let outside = &probe;
    let gw = IpAddr::V4(m.gateway_v4);

    // What machines are given: DNS on the gateway, and the internet through NAT.
    assert!(
        reaches_host(&m, SocketAddr::new(gw, 53)),
        "DNS on the gateway"
    );
    assert!(
        reaches_outside(Some(&m), outside, outside.public),
        "the internet"
    );

    // The host: any other port of the gateway, its 6PN gateway, its address on another
    // link; the host's directly connected network; link-local (metadata); a protected
    // address (the control plane's). Each of these the host itself reaches.
    assert!(
        !reaches_host(&m, SocketAddr::new(gw, 0)),
        "the gateway's other ports"
    );
    assert!(!reaches_host(
        &m,
        SocketAddr::new(IpAddr::V6(m.gateway_v6), 0)
    ));
    assert!(!reaches_host(
        &m,
        SocketAddr::new(outside.host_addr.into(), 0)
    ));
    for (what, addr) in [
        ("the host's LAN", outside.addr),
        ("link-local metadata", outside.metadata),
        ("a protected address", outside.protected),
    ] {
        assert!(
            reaches_outside(None, outside, addr),
            "the host reaches {what}"
        );
        assert!(
            !reaches_outside(Some(&m), outside, addr),
            "the machine reached {what}"
        );
    }
}
