//! End-to-end: `.internal` DNS on a host, asked from inside machines with busybox `nslookup`
//! (through the nameserver in their /etc/resolv.conf), with a real server and a real agent
//! running busybox machines under runc.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::{
    busybox_layout, ok, run, skopeo_push, stderr, stdout, wait_for, Agent, Server,
};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `nslookup NAME` inside the machine: (exit code, stdout + stderr).
fn nslookup(server: &Server, app: &str, id: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = vec![
        "machine",
        "exec",
        id,
        "--app",
        app,
        "--",
        "/bin/busybox",
        "nslookup",
    ];
    cmd.extend_from_slice(args);
    let out = server.cli(&cmd);
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// `aloft machine run` of `image` in `app`; returns (id, 6PN address).
fn run_machine(server: &Server, app: &str, image: &str) -> (String, String) {
    let out = ok(server.cli(&[
        "machine", "run", image, "--app", app, "--region", "ams", "--json",
    ]));
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    (
        m["id"].as_str().unwrap().to_string(),
        m["private_ip"].as_str().unwrap().to_string(),
    )
}

/// A /32 on `lo` that only this test uses, removed when dropped.
struct DnsAddress(String);

impl DnsAddress {
    fn add() -> DnsAddress {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let seed = std::process::id() ^ nanos;
        // 198.18.0.0/15 is set aside for benchmarks: nothing real lives there.
        let ip = format!(
            "198.{}.{}.{}",
            18 + (seed >> 16) % 2,
            (seed >> 8) % 256,
            1 + seed % 254
        );
        run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]).unwrap();
        DnsAddress(ip)
    }
}

impl Drop for DnsAddress {
    fn drop(&mut self) {
        let _ = run(
            "ip",
            &["addr", "del", &format!("{}/32", self.0), "dev", "lo"],
        );
    }
}

#[test]
fn machines_resolve_their_orgs_apps_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    // The default listen address (the pool gateway) is shared by every agent on this box
    // with the same host index, so this test's agent listens on an address of its own, which
    // machines then get as their nameserver.
    let dns_ip = DnsAddress::add();
    let listen = format!("{}:53", dns_ip.0);
    let mut agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &["--cpus", "8", "--dns-listen", &listen],
    )
    .unwrap();

    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hello\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    // Each app runs its own copy: a machine runs only its app's images of the registry.
    let spy_image = format!("{registry}/spy/busybox:1");
    skopeo_push(&layout, "1", &spy_image, &server.token).unwrap();

    // A second organization (the API has no call to create one yet: add it to the store).
    {
        let db = rusqlite::Connection::open(server.data_dir.join("aloft.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.execute(
            "INSERT INTO orgs (slug, name) VALUES ('rival', 'rival')",
            [],
        )
        .unwrap();
    }
    ok(server.cli(&["apps", "create", "web"]));
    ok(server.cli(&["apps", "create", "spy", "--org", "rival"]));

    let (client, client_ip) = run_machine(&server, "web", &image);
    let (target, target_ip) = run_machine(&server, "web", &image);
    let (spy, _) = run_machine(&server, "spy", &spy_image);

    // The app's name lists both started machines (once the edge's routes reach DNS).
    let answer = wait_for(
        "web.internal lists both machines",
        Duration::from_secs(30),
        || {
            let (code, text) = nslookup(&server, "web", &client, &["-type=AAAA", "web.internal"]);
            (code == Some(0) && text.contains(&target_ip) && text.contains(&client_ip))
                .then_some(text)
        },
    )
    .unwrap_or_else(|e| {
        let (_, text) = nslookup(&server, "web", &client, &["-type=AAAA", "web.internal"]);
        let conf = ok(server.cli(&[
            "machine",
            "exec",
            &client,
            "--app",
            "web",
            "--",
            "cat",
            "/etc/resolv.conf",
        ]));
        panic!(
            "{e}; last answer:\n{text}\nresolv.conf:\n{conf}\nagent:\n{}",
            agent.proc.output()
        )
    });
    assert!(answer.contains("web.internal"), "{answer}");

    // A machine by id, and the TXT listings.
    let (code, text) = nslookup(
        &server,
        "web",
        &client,
        &["-type=AAAA", &format!("{target}.vm.web.internal")],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&target_ip) && !text.contains(&client_ip),
        "{text}"
    );
    let (code, text) = nslookup(&server, "web", &client, &["-type=TXT", "vms.web.internal"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("{target} ams")), "{text}");

    // The other org's machine cannot see the app at all.
    let (code, text) = nslookup(&server, "spy", &spy, &["-type=AAAA", "web.internal"]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("NXDOMAIN"), "{text}");
    assert!(!text.contains(&target_ip), "{text}");
    // ...and sees its own.
    let (_, text) = nslookup(&server, "spy", &spy, &["-type=TXT", "_apps.internal"]);
    assert!(text.contains("spy") && !text.contains("web"), "{text}");

    // A stopped machine's name disappears.
    ok(server.cli(&["machine", "stop", &target, "--app", "web"]));
    wait_for(
        "the stopped machine's name disappears",
        Duration::from_secs(30),
        || {
            let (_, text) = nslookup(
                &server,
                "web",
                &client,
                &["-type=AAAA", &format!("{target}.vm.web.internal")],
            );
            text.contains("NXDOMAIN").then_some(())
        },
    )
    .unwrap();
    let (_, text) = nslookup(&server, "web", &client, &["-type=AAAA", "web.internal"]);
    assert!(
        text.contains(&client_ip) && !text.contains(&target_ip),
        "{text}"
    );
}
