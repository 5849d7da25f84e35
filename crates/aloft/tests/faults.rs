//! End-to-end faults: machines that cannot run end in `failed` with a reason a person can
//! act on, an app killed for exceeding its memory limit is reported as out of memory, a
//! destroyed machine's image leaves the host, and the agent keeps serving its other machines.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `GET /` on the machine's private address, port 8080.
fn get_page(ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().ok()?;
    let addr = SocketAddr::new(ip, 8080);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nhost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Runs a machine detached and returns its id (`args`: options, image, then its command).
fn run(server: &Server, args: &[&str]) -> String {
    let mut all = vec![
        "machine", "run", "--app", "faults", "--region", "ams", "--detach", "--json",
    ];
    all.extend_from_slice(args);
    let m: Value = serde_json::from_str(&ok(server.cli(&all))).unwrap();
    m["id"].as_str().unwrap().to_string()
}

/// Waits for the machine to reach `failed` (or `stopped`), and returns the message of its
/// exit or launch event.
fn wait_failed(server: &Server, id: &str, state: &str) -> String {
    let m = wait_for(
        &format!("machine {id} {state}"),
        Duration::from_secs(30),
        || {
            let m = server.machine_json("faults", id);
            (m["state"] == state).then_some(m)
        },
    )
    .unwrap();
    let events = m["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .find(|e| e["type"] == "exit" || e["type"] == "launch")
        .and_then(|e| e["request"]["message"].as_str())
        .unwrap_or_else(|| panic!("no exit event with a message: {m}"))
        .to_string()
}

#[test]
fn failing_machines_say_why_and_the_host_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let agent_dir = dir.path().join("agent");
    let _agent = Agent::start(bin(), &server, "ams", &agent_dir).unwrap();
    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "still here\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    busybox_layout(&layout, "2", "other\n", &["/bin/busybox"]).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let web = format!("{registry}/faults/web:1");
    let tool = format!("{registry}/faults/tool:2");
    skopeo_push(&layout, "1", &web, &server.token).unwrap();
    skopeo_push(&layout, "2", &tool, &server.token).unwrap();
    ok(server.cli(&["apps", "create", "faults"]));

    // A healthy neighbour that must keep answering throughout.
    let healthy = run(&server, &[&web]);
    let ip = wait_for("neighbour started", Duration::from_secs(30), || {
        let m = server.machine_json("faults", &healthy);
        (m["state"] == "started")
            .then(|| m["private_ip"].as_str().map(str::to_string))
            .flatten()
    })
    .unwrap();
    wait_for("neighbour serves", Duration::from_secs(20), || {
        get_page(&ip)
    })
    .unwrap();

    // An entrypoint that is not executable.
    let noexec = run(
        &server,
        &["--entrypoint", "/www/index.html", "--restart", "no", &tool],
    );
    let message = wait_failed(&server, &noexec, "failed");
    assert!(message.contains("exit code 127"), "{message}");
    assert!(
        message.contains("cannot start /www/index.html") && message.contains("denied"),
        "{message}"
    );
    let records = agent_dir.join("images/images");
    assert_eq!(walk_count(&records, ".json"), 2, "two images cached");
    // Failed machines hold their capacity until destroyed (the test host is small).
    destroy(&server, &noexec);

    // An app that exits at once with an error: its last log lines are the reason.
    let quits = run(
        &server,
        &[
            "--restart",
            "no",
            &tool,
            "sh",
            "-c",
            "echo config file missing >&2; exit 3",
        ],
    );
    let message = wait_failed(&server, &quits, "failed");
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.contains("config file missing"), "{message}");
    destroy(&server, &quits);

    // An app that allocates past its memory limit is killed and reported as out of memory.
    let hungry = run(
        &server,
        &[
            "--restart",
            "no",
            "--memory",
            "128",
            &tool,
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    let message = wait_failed(&server, &hungry, "failed");
    assert!(message.contains("out of memory"), "{message}");

    // The neighbour never stopped answering.
    let page = get_page(&ip).expect("the healthy machine still answers");
    assert!(page.contains("still here"), "{page}");
    assert_eq!(server.machine_json("faults", &healthy)["state"], "started");

    // Destroying the only machines that use an image removes it from the host's store.
    let records = agent_dir.join("images/images");
    let count = || walk_count(&records, ".json");
    assert_eq!(count(), 2, "two images cached");
    for id in [&noexec, &quits, &hungry] {
        ok(server.cli(&["machine", "destroy", id, "--app", "faults", "--force"]));
    }
    wait_for(
        "the unused image collected",
        Duration::from_secs(30),
        || (count() == 1).then_some(()),
    )
    .unwrap();
    assert!(get_page(&ip).is_some(), "the neighbour still answers");
}

/// Destroys a machine and waits until its host has let it go (and its capacity with it).
fn destroy(server: &Server, id: &str) {
    ok(server.cli(&["machine", "destroy", id, "--app", "faults", "--force"]));
    wait_for(
        &format!("machine {id} destroyed"),
        Duration::from_secs(30),
        || {
            let out = server.cli(&["machine", "status", id, "--app", "faults", "--json"]);
            let m: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            (!out.status.success() || m["state"] == "destroyed").then_some(())
        },
    )
    .unwrap();
}

/// Files under `dir` (two levels, as the image store shards them) whose name ends in `suffix`.
fn walk_count(dir: &Path, suffix: &str) -> usize {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return 0;
    };
    shards
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(suffix))
        .count()
}
