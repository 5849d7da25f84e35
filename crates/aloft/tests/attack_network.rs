//! Attacks on the network boundary from inside a machine, against the real binaries on a real
//! two-region topology (`aloft dev --regions ams,iad`: a namespace per host, the control
//! plane on the backbone, hosts joined by the WireGuard mesh). One topology serves every case.
//!
//! The attacker is a machine of app `web` (org `personal`) in ams. It must still resolve names
//! with its DNS resolver and reach its own org's machines on their 6PN addresses, in ams and
//! across the mesh in iad, and the internet-facing path through NAT must keep working; and it
//! must not reach link-local metadata, any port its host or the other host listens on (on
//! their backbone, gateway or 6PN addresses), the control plane, another org's machines on
//! either host, or anything with a source address or MAC that is not its own.
//!
//! Probes that need exact answers (connected or not) run as root in the machine's network
//! namespace (`nsenter`, with every capability a machine could be given): the rules are on
//! the host side, so they hold whatever the machine may do inside.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aloft_testkit::dev::{dev_prefix, Dev};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

const CONTROL: &str = "10.200.0.2:4280";
const METADATA: &str = "169.254.169.254";
/// A port a test service listens on, on every address of each host.
const SERVICE_PORT: u16 = 8181;

/// Connects to every `host:port` (IPv6 in brackets) at once from the network namespace at
/// `netns`, as root; true where a TCP connection was established within 3 s.
fn probe(netns: &str, targets: &[String]) -> BTreeMap<String, bool> {
    let script = r#"
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def one(t):
    host, port = t.rsplit(':', 1)
    try:
        socket.create_connection((host.strip('[]'), int(port)), timeout=3).close()
        return True
    except OSError:
        return False
with ThreadPoolExecutor(64) as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(one, sys.argv[1:])))))
"#;
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["python3", "-c", script])
        .args(targets)
        .output()
        .expect("nsenter and python3 are installed");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `args` in the network namespace at `path` as root; its stdout.
fn in_netns(path: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn named_netns(name: &str) -> String {
    format!("/run/netns/{name}")
}

fn machine_netns(id: &str) -> String {
    format!("/run/netns/aloft-{id}")
}

/// Every TCP listener in the namespace at `path`: (address, port).
fn listeners(path: &str) -> Vec<(String, u16)> {
    in_netns(path, &["ss", "-Hltn"])
        .lines()
        .filter_map(|line| {
            let local = line.split_whitespace().nth(3)?;
            let (addr, port) = local.rsplit_once(':')?;
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let addr = addr.split('%').next()?.to_string();
            Some((addr, port.parse().ok()?))
        })
        .collect()
}

fn target(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `aloft machine run IMAGE` in `app` and `region`; returns (id, 6PN address).
fn run_machine(dev: &Dev, app: &str, region: &str, image: &str) -> (String, Ipv6Addr) {
    let out = dev.cli(&[
        "machine", "run", image, "--app", app, "--region", region, "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    (
        m["id"].as_str().unwrap().to_string(),
        m["private_ip"].as_str().unwrap().parse().unwrap(),
    )
}

/// Runs busybox `args` inside machine `id` of `app`: (exit code, stdout + stderr).
fn exec(dev: &Dev, app: &str, id: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = vec!["machine", "exec", id, "--app", app, "--", "/bin/busybox"];
    cmd.extend_from_slice(args);
    let out = dev.cli(&cmd);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `GET /` on `ip:port` from inside machine `id` with busybox nc: (exit code, answer).
fn http_get(dev: &Dev, app: &str, id: &str, ip: &str, port: u16) -> (Option<i32>, String) {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 {ip} {port}");
    exec(dev, app, id, &["sh", "-c", &script])
}

/// The 6PN gateway of `addr`'s network on `addr`'s host (machine field 0, suffix 1).
fn sixpn_gateway(addr: Ipv6Addr) -> Ipv6Addr {
    let s = addr.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], 0, 0, 1)
}

/// The infrastructure address of `addr`'s host (6PN network 0).
fn infra_address(addr: Ipv6Addr) -> Ipv6Addr {
    let s = addr.segments();
    Ipv6Addr::new(0xfdaa, 0, 0, s[3], s[4], 0, 0, 1)
}

/// `addr` with its machine field moved by `by`: an address of another machine.
fn other_machine(addr: Ipv6Addr, by: u16) -> Ipv6Addr {
    let s = addr.segments();
    Ipv6Addr::new(
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
        s[6].wrapping_add(by),
        s[7],
    )
}

/// A web server with secrets on `addr:port` in namespace `ns`; killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &str, addr: &str, port: u16, dir: &Path) -> Server {
        std::fs::write(dir.join("index.html"), "metadata: secrets\n").unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args([
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                addr,
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_machine_reaches_its_org_and_dns_and_nothing_else() {
    let dev =
        Dev::start(bin(), &dev_prefix("an"), "ams,iad", &[]).unwrap_or_else(|e| panic!("{e}"));
    let (host_ams, host_iad) = (
        named_netns(&format!("{}-h-ams", dev.prefix)),
        named_netns(&format!("{}-h-iad", dev.prefix)),
    );
    let control_ns = named_netns(&format!("{}-cp", dev.prefix));
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    aloft_testkit::busybox_layout(
        &layout,
        "1",
        "hello from the private network\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let push_to = dev.api_url.trim_start_matches("http://").to_string();
    // Each app runs its own copy: a machine runs only its app's images of the registry.
    for app in ["web", "spy"] {
        aloft_testkit::skopeo_push(
            &layout,
            "1",
            &format!("{push_to}/{app}/busybox:1"),
            &dev.token(),
        )
        .unwrap();
    }
    let image = format!("{CONTROL}/web/busybox:1");
    let spy_image = format!("{CONTROL}/spy/busybox:1");

    // A second organization (added to the store directly: see the org API for the real way).
    {
        let db = rusqlite::Connection::open(dev.data_dir.join("server/aloft.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.execute(
            "INSERT INTO orgs (slug, name) VALUES ('rival', 'rival')",
            [],
        )
        .unwrap();
    }
    for args in [
        &["apps", "create", "web"][..],
        &["apps", "create", "spy", "--org", "rival"][..],
    ] {
        let out = dev.cli(args);
        assert!(out.status.success(), "{out:?}");
    }
    let (attacker, attacker6) = run_machine(&dev, "web", "ams", &image);
    let (neighbour, neighbour6) = run_machine(&dev, "web", "ams", &image);
    let (_remote, remote6) = run_machine(&dev, "web", "iad", &image);
    let (spy, spy6) = run_machine(&dev, "spy", "ams", &spy_image);
    let (_spy_iad, spy_iad6) = run_machine(&dev, "spy", "iad", &spy_image);
    let ns = machine_netns(&attacker);
    let attacker_v4 = in_netns(&ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let attacker_v4 = attacker_v4
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .to_string(); // a.b.c.d/len
    let route = in_netns(&ns, &["ip", "-4", "route", "show", "default"]);
    let gateway = route.split_whitespace().nth(2).unwrap().to_string();
    let neighbour_v4 = {
        let out = in_netns(
            &machine_netns(&neighbour),
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap();
        cidr.split('/').next().unwrap().to_string()
    };
    let spy_v4 = {
        let out = in_netns(
            &machine_netns(&spy),
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap();
        cidr.split('/').next().unwrap().to_string()
    };

    // What a machine is given: DNS (a name of its org resolves to the iad machine) ...
    let remote_name = "iad.web.internal";
    wait_until(
        &format!("{remote_name} resolves to {remote6} in the machine"),
        || {
            let (code, text) = exec(
                &dev,
                "web",
                &attacker,
                &["nslookup", "-type=AAAA", remote_name],
            );
            code == Some(0) && text.contains(&remote6.to_string())
        },
    );
    // ... and its org's machines, on this host and across the mesh, on their 6PN addresses.
    for (what, ip) in [("ams", neighbour6), ("iad", remote6)] {
        let (code, text) = http_get(&dev, "web", &attacker, &ip.to_string(), 8080);
        assert_eq!(code, Some(0), "{what}: {text}");
        assert!(
            text.contains("hello from the private network"),
            "{what}: {text}"
        );
    }

    // Link-local metadata, on the host and beyond it (in the control plane's namespace,
    // routed from the ams host as a cloud's metadata service would be).
    in_netns(
        &host_ams,
        &["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
    );
    let beyond = "169.254.170.2";
    in_netns(
        &control_ns,
        &["ip", "addr", "add", &format!("{beyond}/32"), "dev", "lo"],
    );
    in_netns(
        &host_ams,
        &[
            "ip",
            "route",
            "add",
            &format!("{beyond}/32"),
            "via",
            "10.200.0.2",
        ],
    );
    let site = tempfile::tempdir().unwrap();
    let _on_host = Server::start(&host_ams, METADATA, 80, site.path());
    let _beyond = Server::start(&control_ns, beyond, 80, site.path());
    // And a service on every address (IPv6 included) of both hosts, on a port of its own.
    let _ams_any = Server::start(&host_ams, "::", SERVICE_PORT, site.path());
    let _iad_any = Server::start(&host_iad, "::", SERVICE_PORT, site.path());
    let metadata = [target(METADATA, 80), target(beyond, 80)];
    let local = [target("::1", SERVICE_PORT)];
    wait_until("the servers answer their hosts", || {
        probe(&host_ams, &metadata).values().all(|ok| *ok)
            && probe(&host_ams, &local).values().all(|ok| *ok)
            && probe(&host_iad, &local).values().all(|ok| *ok)
    });

    // Every TCP port either host listens on, at every address a machine could try: the
    // backbone addresses, the pool gateway, the 6PN gateways and infrastructure addresses;
    // and the control plane. The hosts themselves reach all of them.
    let mut targets: Vec<String> = metadata.to_vec();
    targets.push(CONTROL.to_string());
    let mut across = Vec::new();
    for (ns_path, backbone, sixpn) in [
        (&host_ams, "10.200.0.10", attacker6),
        (&host_iad, "10.200.0.11", remote6),
    ] {
        for (addr, port) in listeners(ns_path) {
            let addrs: Vec<String> = match addr.as_str() {
                "0.0.0.0" => vec![backbone.into(), gateway.clone()],
                "::" | "*" => vec![
                    backbone.into(),
                    gateway.clone(),
                    sixpn_gateway(sixpn).to_string(),
                    infra_address(sixpn).to_string(),
                ],
                other => match other.parse::<IpAddr>() {
                    Ok(ip) if ip.is_loopback() => vec![],
                    Ok(_) => vec![other.to_string()],
                    Err(_) => vec![],
                },
            };
            for a in addrs {
                if ns_path == &host_iad && a == backbone {
                    across.push(target(&a, port));
                }
                // DNS on the pool gateway of the attacker's own host is offered on purpose.
                if !(port == 53 && a == gateway && ns_path == &host_ams) {
                    targets.push(target(&a, port));
                }
            }
        }
    }
    targets.sort();
    targets.dedup();
    // The 6PN gateways of the attacker's own network: on its host, and over the mesh.
    for gw in [sixpn_gateway(attacker6), sixpn_gateway(remote6)] {
        let want = target(&gw.to_string(), SERVICE_PORT);
        assert!(targets.contains(&want), "{want} in {targets:?}");
    }
    assert!(targets.len() > 6, "{targets:?}");
    let reached = probe(&ns, &targets);
    let open: Vec<_> = reached
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(t, _)| t)
        .collect();
    assert!(open.is_empty(), "the machine reached {open:?}");
    // (The ams host itself reaches the control plane and the iad host's ports.)
    across.push(CONTROL.to_string());
    let host_view = probe(&host_ams, &across);
    assert!(host_view.values().all(|ok| *ok), "{host_view:?}");

    // DNS on the gateway is still open (TCP as well as UDP).
    let dns = target(&gateway, 53);
    assert_eq!(
        probe(&ns, std::slice::from_ref(&dns)).get(&dns),
        Some(&true)
    );

    // Another org's machines, on this host and across the mesh.
    let spies = [
        target(&spy_v4, 8080),
        target(&spy6.to_string(), 8080),
        target(&spy_iad6.to_string(), 8080),
    ];
    let reached = probe(&ns, &spies);
    assert!(reached.values().all(|ok| !ok), "{reached:?}");
    let (code, text) = http_get(&dev, "web", &attacker, &spy6.to_string(), 8080);
    assert!(
        code != Some(0) || !text.contains("hello"),
        "spy from inside: {text}"
    );

    // Spoofing: another source address (IPv4 on this host, 6PN across the mesh), another MAC.
    let own_v4 = target(&neighbour_v4, 8080);
    let own_remote = target(&remote6.to_string(), 8080);
    let baseline = probe(&ns, &[own_v4.clone(), own_remote.clone()]);
    assert!(baseline.values().all(|ok| *ok), "{baseline:?}");
    let len = attacker_v4.split('/').nth(1).unwrap();
    let prefix: Vec<&str> = gateway.split('.').collect();
    let fake_v4 = format!("{}.{}.{}.250/{len}", prefix[0], prefix[1], prefix[2]);
    in_netns(
        &ns,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    );
    in_netns(&ns, &["ip", "addr", "add", &fake_v4, "dev", "eth0"]);
    in_netns(&ns, &["ip", "addr", "del", &attacker_v4, "dev", "eth0"]);
    let fake_v6 = format!("{}/96", other_machine(attacker6, 77));
    let own_v6 = format!("{attacker6}/96");
    in_netns(
        &ns,
        &["ip", "addr", "add", &fake_v6, "dev", "eth0", "nodad"],
    );
    in_netns(&ns, &["ip", "addr", "del", &own_v6, "dev", "eth0"]);
    let spoofed = probe(&ns, &[own_v4.clone(), own_remote.clone()]);
    assert!(
        spoofed.values().all(|ok| !ok),
        "spoofed sources got through: {spoofed:?}"
    );
    in_netns(&ns, &["ip", "addr", "add", &attacker_v4, "dev", "eth0"]);
    in_netns(&ns, &["ip", "addr", "del", &fake_v4, "dev", "eth0"]);
    in_netns(&ns, &["ip", "route", "replace", "default", "via", &gateway]);
    in_netns(&ns, &["ip", "addr", "add", &own_v6, "dev", "eth0", "nodad"]);
    in_netns(&ns, &["ip", "addr", "del", &fake_v6, "dev", "eth0"]);
    let link = in_netns(&ns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    wait_until("the machine's own addresses work again", || {
        probe(&ns, &[own_v4.clone(), own_remote.clone()])
            .values()
            .all(|ok| *ok)
    });
    in_netns(
        &ns,
        &["ip", "link", "set", "eth0", "address", "06:00:00:00:0a:0a"],
    );
    let other_mac = probe(&ns, std::slice::from_ref(&own_v4));
    assert!(
        other_mac.values().all(|ok| !ok),
        "another MAC got through: {other_mac:?}"
    );
    in_netns(&ns, &["ip", "link", "set", "eth0", "address", &mac]);
}
