//! Real meshes in real network namespaces joined by a bridge on a simulated backbone (we run
//! as root). Each test has its own namespaces (unique names); a drop guard deletes them, so a
//! failing test leaves nothing behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aloft_mesh::{infra_address, KeyPair, LinkSim, Mesh, MeshConfig, MeshStats, Peer};
use nix::sched::{setns, CloneFlags};

const MESH_PORT: u16 = 51820;
const WAIT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_millis(500);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a fresh thread inside this namespace.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn enter(path: &str) {
    let file = File::open(path).expect("open namespace");
    setns(&file, CloneFlags::CLONE_NEWNET).expect("enter namespace");
}

type Job = Box<dyn FnOnce(&Mesh) + Send>;

/// One simulated host: a namespace on the backbone and a mesh running on its own thread
/// (current-thread runtime) inside it.
struct Host {
    index: u32,
    key: KeyPair,
    endpoint: SocketAddr,
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
    ns: Netns,
}

impl Host {
    fn call<R: Send + 'static>(&self, f: impl FnOnce(&Mesh) -> R + Send + 'static) -> R {
        let (tx, rx) = std_mpsc::channel();
        let job: Job = Box::new(move |mesh| {
            let _ = tx.send(f(mesh));
        });
        self.jobs
            .as_ref()
            .unwrap()
            .send(job)
            .expect("mesh thread is gone");
        rx.recv().expect("mesh thread is gone")
    }

    fn peer(&self, region: &str) -> Peer {
        Peer {
            host_index: self.index,
            region: region.to_string(),
            public_key: self.key.public(),
            endpoint: Some(self.endpoint),
            link: LinkSim::default(),
        }
    }

    fn set_peers(&self, peers: Vec<Peer>) {
        self.call(move |mesh| mesh.set_peers(peers))
            .expect("set peers");
    }

    fn stats(&self) -> MeshStats {
        self.call(|mesh| mesh.stats())
    }

    fn infra(&self) -> Ipv6Addr {
        infra_address(self.index)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A backbone namespace with a bridge, and hosts attached to it. Hosts are dropped (their
/// meshes stopped) before the namespaces go.
struct Cluster {
    hosts: Vec<Host>,
    _backbone: Netns,
}

fn cluster(count: u32) -> Cluster {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tag = format!(
        "am{:x}-{}",
        std::process::id() & 0xfffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let backbone = Netns::new(format!("{tag}-bb"));
    ip(&["-n", &backbone.0, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &backbone.0, "link", "set", "br0", "up"]);
    let mut hosts = Vec::new();
    for i in 1..=count {
        let ns = Netns::new(format!("{tag}-h{i}"));
        let port = format!("vh{i}");
        ip(&[
            "-n",
            &backbone.0,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.0,
        ]);
        ip(&[
            "-n",
            &backbone.0,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        let addr = Ipv4Addr::new(10, 77, 0, i as u8);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        hosts.push(start_host(ns, i, addr));
    }
    Cluster {
        hosts,
        _backbone: backbone,
    }
}

fn start_host(ns: Netns, index: u32, addr: Ipv4Addr) -> Host {
    let key = KeyPair::generate();
    let endpoint = SocketAddr::V4(SocketAddrV4::new(addr, MESH_PORT));
    let config = MeshConfig::new(index, endpoint, key.clone());
    let path = format!("/run/netns/{}", ns.0);
    let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let thread = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mesh = match Mesh::start(config).await {
                Ok(mesh) => mesh,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:?}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Some(job) = jobs_rx.recv().await {
                job(&mesh);
            }
        });
    });
    ready_rx.recv().unwrap().expect("mesh starts");
    Host {
        index,
        key,
        endpoint,
        jobs: Some(jobs_tx),
        thread: Some(thread),
        ns,
    }
}

/// Sends a datagram from `from` to the UDP echo `to` until an answer comes or `deadline`.
fn udp_round_trip(from: &Host, bind: Ipv6Addr, to: SocketAddr, deadline: Duration) -> bool {
    from.ns.run(move || {
        let socket = UdpSocket::bind(SocketAddrV6::new(bind, 0, 0, 0)).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while start.elapsed() < deadline {
            socket.send_to(b"ARTTping-probe", to).unwrap();
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if &buf[..n] == b"ARTTping-probe" {
                    return true;
                }
            }
        }
        false
    })
}

fn echo_of(host: &Host) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(host.infra(), aloft_mesh::ECHO_PORT, 0, 0))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP server in `server`'s namespace on its infra address; a client in `client`'s sends a
/// message and reads it back upper-cased.
fn tcp_exchange(client: &Host, server: &Host) {
    let addr = SocketAddr::V6(SocketAddrV6::new(server.infra(), 0, 0, 0));
    let listener = server.ns.run(move || TcpListener::bind(addr).unwrap());
    let target = listener.local_addr().unwrap();
    let serve = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 100_000];
        conn.read_exact(&mut buf).unwrap();
        buf.make_ascii_uppercase();
        conn.write_all(&buf).unwrap();
    });
    let reply = client.ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&target, WAIT).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(&vec![b'a'; 100_000]).unwrap();
        let mut buf = vec![0u8; 100_000];
        conn.read_exact(&mut buf).unwrap();
        buf
    });
    serve.join().unwrap();
    assert!(reply.iter().all(|&b| b == b'A'));
}

#[test]
fn tcp_and_udp_cross_the_mesh_both_ways() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.set_peers(vec![b.peer("iad")]);
    b.set_peers(vec![a.peer("ams")]);

    assert!(udp_round_trip(a, a.infra(), echo_of(b), WAIT));
    assert!(udp_round_trip(b, b.infra(), echo_of(a), WAIT));
    tcp_exchange(a, b);
    tcp_exchange(b, a);
    assert!(a.stats().tx_packets > 0 && a.stats().rx_packets > 0);
    assert_eq!(a.stats().refused_handshakes, 0);
}

#[test]
fn a_peer_with_a_wrong_key_is_refused() {
    let c = cluster(3);
    let (a, b, intruder) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    // a knows b; it lists host 3 but with a key that is not the intruder's.
    let mut impostor = intruder.peer("syd");
    impostor.public_key = KeyPair::generate().public();
    a.set_peers(vec![b.peer("iad"), impostor]);
    b.set_peers(vec![a.peer("ams")]);
    intruder.set_peers(vec![a.peer("ams")]);

    assert!(!udp_round_trip(
        intruder,
        intruder.infra(),
        echo_of(a),
        Duration::from_secs(3)
    ));
    wait_for("a to count refused handshakes", || {
        a.stats().refused_handshakes > 0
    });
    // a's own attempts are refused by the intruder too (encrypted to another key).
    assert!(!udp_round_trip(
        a,
        a.infra(),
        echo_of(intruder),
        Duration::from_secs(2)
    ));
    wait_for("the intruder to refuse a's handshakes", || {
        intruder.stats().refused_handshakes > 0
    });
    // Nothing ever got through to the intruder, while the genuine peer still does.
    assert_eq!(intruder.stats().rx_packets, 0);
    assert!(udp_round_trip(b, b.infra(), echo_of(a), WAIT));
}

#[test]
fn removing_a_peer_cuts_traffic() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.set_peers(vec![b.peer("iad")]);
    b.set_peers(vec![a.peer("ams")]);
    assert!(udp_round_trip(b, b.infra(), echo_of(a), WAIT));

    a.set_peers(Vec::new());
    let no_peer_before = a.stats().no_peer;
    assert!(!udp_round_trip(
        b,
        b.infra(),
        echo_of(a),
        Duration::from_secs(2)
    ));
    assert!(!udp_round_trip(
        a,
        a.infra(),
        echo_of(b),
        Duration::from_secs(1)
    ));
    assert!(a.stats().no_peer > no_peer_before);

    // Adding it back restores traffic.
    a.set_peers(vec![b.peer("iad")]);
    assert!(udp_round_trip(b, b.infra(), echo_of(a), WAIT));
}

#[test]
fn simulated_delay_shows_in_the_measured_rtt() {
    let c = cluster(3);
    let (a, b, far) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    let mut to_far = far.peer("syd");
    to_far.link = LinkSim::new(Duration::from_millis(120), 0.0).unwrap();
    a.set_peers(vec![b.peer("iad"), to_far]);
    b.set_peers(vec![a.peer("ams")]);
    far.set_peers(vec![a.peer("ams")]);

    wait_for("RTTs to both peers", || {
        a.call(|mesh| mesh.peer_rtt(2).is_some() && mesh.peer_rtt(3).is_some())
    });
    let regions = a.call(|mesh| mesh.region_rtts());
    assert!(regions["syd"] >= Duration::from_millis(120), "{regions:?}");
    assert!(regions.contains_key("iad"), "{regions:?}");
    // The delay is a's, on its link to far only.
    assert!(a.call(|mesh| mesh.peer_rtt(3)).unwrap() >= Duration::from_millis(120));

    assert!(LinkSim::new(Duration::ZERO, 1.5).is_err());
}

#[test]
fn a_forged_source_address_is_dropped() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.set_peers(vec![b.peer("iad")]);
    b.set_peers(vec![a.peer("ams")]);
    assert!(udp_round_trip(b, b.infra(), echo_of(a), WAIT));

    // b claims to be host 9: an address of host 9's on its loopback, used as the source.
    let forged = infra_address(9);
    ip(&[
        "-n",
        &b.ns.0,
        "addr",
        "add",
        &format!("{forged}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let spoofed_before = a.stats().spoofed;
    assert!(!udp_round_trip(
        b,
        forged,
        echo_of(a),
        Duration::from_secs(2)
    ));
    assert!(a.stats().spoofed > spoofed_before);
}

#[test]
fn bad_peer_lists_are_refused_whole() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let own = a.peer("ams");
    let err = a.call(move |mesh| mesh.set_peers(vec![own])).unwrap_err();
    assert!(err.to_string().contains("this host's own"), "{err}");
    let mut twice = b.peer("iad");
    twice.host_index = 3;
    let list = vec![b.peer("iad"), twice];
    let err = a.call(move |mesh| mesh.set_peers(list)).unwrap_err();
    assert!(err.to_string().contains("same public key"), "{err}");
    let mut zero = b.peer("iad");
    zero.host_index = 0;
    assert!(a.call(move |mesh| mesh.set_peers(vec![zero])).is_err());
}

/// The `i`th byte of a test stream: not periodic over a TCP segment, so a segment delivered
/// twice, dropped or out of place changes what arrives.
fn stream_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i >> 13) as u8
}

/// A TCP server in `server`'s namespace reads `len` bytes and answers with how many of them
/// differ from the expected stream; a client in `client`'s sends the stream in large writes
/// (so the sender's TCP hands the mesh super-packets to segment).
fn bulk_tcp(client: &Host, server: &Host, len: u64) {
    let addr = SocketAddr::V6(SocketAddrV6::new(server.infra(), 0, 0, 0));
    let listener = server.ns.run(move || TcpListener::bind(addr).unwrap());
    let target = listener.local_addr().unwrap();
    let serve = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut at, mut wrong) = (0u64, 0u64);
        while at < len {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended after {at} of {len} bytes");
            for &b in &buf[..n] {
                wrong += u64::from(b != stream_byte(at));
                at += 1;
            }
        }
        conn.write_all(&wrong.to_be_bytes()).unwrap();
    });
    let wrong = client.ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&target, WAIT).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut chunk = vec![0u8; 256 << 10];
        let mut at = 0u64;
        while at < len {
            let n = chunk.len().min((len - at) as usize);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = stream_byte(at + i as u64);
            }
            conn.write_all(&chunk[..n]).unwrap();
            at += n as u64;
        }
        let mut answer = [0u8; 8];
        conn.read_exact(&mut answer).unwrap();
        u64::from_be_bytes(answer)
    });
    serve.join().unwrap();
    assert_eq!(wrong, 0, "{wrong} bytes arrived corrupted");
}

#[test]
fn a_bulk_tcp_stream_arrives_intact_both_ways() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.set_peers(vec![b.peer("iad")]);
    b.set_peers(vec![a.peer("ams")]);
    assert!(udp_round_trip(a, a.infra(), echo_of(b), WAIT));

    bulk_tcp(a, b, 64 << 20);
    bulk_tcp(b, a, 64 << 20);
    for host in [a, b] {
        let stats = host.stats();
        assert_eq!(stats.bad_datagrams + stats.spoofed, 0, "{stats:?}");
        // 128 MiB in packets of at most the MTU.
        assert!(
            stats.tx_packets > 40_000 && stats.rx_packets > 40_000,
            "{stats:?}"
        );
    }
}

#[test]
fn a_bulk_tcp_stream_survives_a_lossy_delayed_link() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let mut to_b = b.peer("iad");
    to_b.link = LinkSim::new(Duration::from_millis(5), 0.02).unwrap();
    a.set_peers(vec![to_b]);
    b.set_peers(vec![a.peer("ams")]);
    wait_for("a session", || {
        udp_round_trip(a, a.infra(), echo_of(b), IO_TIMEOUT)
    });

    // Loss and delay on a's sending side reorder and drop segments of both directions' flows.
    bulk_tcp(a, b, 4 << 20);
    bulk_tcp(b, a, 4 << 20);
    assert!(a.stats().sim_lost > 0, "{:?}", a.stats());
}

#[test]
fn udp_datagrams_keep_their_boundaries_and_contents() {
    let c = cluster(2);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    a.set_peers(vec![b.peer("iad")]);
    b.set_peers(vec![a.peer("ams")]);
    assert!(udp_round_trip(a, a.infra(), echo_of(b), WAIT));

    const COUNT: u32 = 3000;
    let bind = SocketAddr::V6(SocketAddrV6::new(b.infra(), 0, 0, 0));
    let receiver = b.ns.run(move || UdpSocket::bind(bind).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let target = receiver.local_addr().unwrap();
    let receive = std::thread::spawn(move || {
        let (mut intact, mut broken) = (0u32, 0u32);
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = receiver.recv(&mut buf) {
            let Some(seq) = buf
                .get(..4)
                .map(|s| u32::from_be_bytes(s.try_into().unwrap()))
            else {
                broken += 1;
                continue;
            };
            let ok = n == datagram_len(seq) && buf[4..n].iter().all(|&x| x == seq as u8);
            if ok {
                intact += 1
            } else {
                broken += 1
            }
            if seq == COUNT - 1 {
                break;
            }
        }
        (intact, broken)
    });
    let from = SocketAddr::V6(SocketAddrV6::new(a.infra(), 0, 0, 0));
    a.ns.run(move || {
        let socket = UdpSocket::bind(from).unwrap();
        for seq in 0..COUNT {
            let mut datagram = vec![seq as u8; datagram_len(seq)];
            datagram[..4].copy_from_slice(&seq.to_be_bytes());
            socket.send_to(&datagram, target).unwrap();
            if seq % 50 == 49 {
                // Keep within the receiver's buffer: UDP has no flow control.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let (intact, broken) = receive.join().unwrap();
    assert_eq!(
        broken, 0,
        "{broken} datagrams arrived cut, merged or corrupted"
    );
    assert!(
        intact > COUNT / 2,
        "only {intact} of {COUNT} datagrams arrived"
    );
}

/// Runs of equal sizes (which the mesh may coalesce) and odd sizes between them.
fn datagram_len(seq: u32) -> usize {
    if seq % 7 == 0 {
        100 + (seq as usize * 37) % 1200
    } else {
        1200
    }
}
