//! End-to-end: `aloft dev --regions ams,iad,syd` builds a real multi-region topology on this box
//! (a namespace per host and per city, one anycast address on every edge) and each city is
//! served by its nearest region. Each test brings up its own topology with its own prefix, and
//! removes it even when it fails.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aloft_testkit::dev::{dev_prefix, Dev};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A fresh topology prefix for each test of this file.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}{}", dev_prefix("t"), N.fetch_add(1, Ordering::SeqCst))
}

/// `aloft dev` of ams, iad and syd under `prefix` on `data_dir`, or on a fresh one.
fn start(prefix: &str, data_dir: Option<&Path>) -> Dev {
    let started = match data_dir {
        Some(dir) => Dev::start_in(bin(), prefix, "ams,iad,syd", dir, &[]),
        None => Dev::start(bin(), prefix, "ams,iad,syd", &[]),
    };
    started.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn three_regions_come_up_each_city_is_served_by_its_own_and_a_crash_is_cleaned_up() {
    let mut dev = start(&prefix(), None);
    let printed = dev.printed();
    for city in ["ams", "iad", "syd"] {
        assert!(
            printed.contains(&format!("from {city:<5} answered by {city}")),
            "{printed}"
        );
        assert_eq!(dev.region_from(city), city);
    }
    assert_eq!(dev.namespaces().len(), 8, "{:?}", dev.namespaces());
    let machines: Vec<String> = ["ams", "iad", "syd"]
        .iter()
        .map(|r| dev.machine_in(r))
        .collect();
    // Backhaul: ams's edge reaches syd's machine over the mesh when asked for it.
    let force = format!("fly-force-instance-id: {}", machines[2]);
    assert_eq!(dev.region_at("ams", "/json", &["-H", &force]), "syd");
    // fly-replay: the ams machine asks for syd, and the edge replays the request there.
    assert_eq!(dev.region_at("ams", "/replay/syd", &[]), "syd");
    assert_eq!(dev.region_at("iad", "/replay/iad", &[]), "iad");

    // A crash leaves everything behind; the next start removes it and reuses the data dir.
    dev.crash();
    assert_eq!(dev.namespaces().len(), 8);
    let mut again = start(&dev.prefix, Some(&dev.data_dir));
    let printed = again.printed();
    assert!(
        printed.contains("removed what an earlier run left"),
        "{printed}"
    );
    for (r, id) in ["ams", "iad", "syd"].iter().zip(&machines) {
        assert_eq!(&again.machine_in(r), id, "the data dir is reused");
    }
    assert_eq!(again.region_from("syd"), "syd");
    let (printed, clean) = again.interrupt();
    assert!(clean, "{printed}");
    assert!(printed.trim_end().ends_with("stopped"), "{printed}");
    assert!(printed.contains("served from syd: syd"), "{printed}");
    assert!(
        again.namespaces().is_empty(),
        "Ctrl-C removes the topology: {:?}",
        again.namespaces()
    );
}

#[test]
fn a_request_from_a_city_whose_machine_is_stopped_starts_it_there() {
    let mut dev = start(&prefix(), None);
    let syd = dev.machine_in("syd");
    let out = dev.cli(&["machine", "stop", &syd, "--app", "hello"]);
    assert!(out.status.success(), "{out:?}");
    let state = || {
        let out = dev.cli(&["machine", "status", &syd, "--app", "hello", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["state"].as_str().unwrap_or_default().to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while state() != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "syd's machine did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(dev.region_from("syd"), "syd");
    assert_eq!(state(), "started");
}

#[test]
fn a_dead_region_is_replaced_by_the_nearest_live_one() {
    let dev = start(&prefix(), None);
    assert_eq!(dev.region_from("syd"), "syd");
    let out = dev.dev_cmd(&["kill", "syd"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("clients in syd now reach iad"), "{said}");
    assert!(!dev.namespaces().contains(&format!("{}-h-syd", dev.prefix)));
    // Sydney's nearest live region, by the latency table: iad (200 ms) before ams (280 ms).
    assert_eq!(dev.region_from("syd"), "iad");
    assert_eq!(dev.region_from("ams"), "ams");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(bin()).arg("dev").args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--regions", "ams,AMS"]).contains("Region \"AMS\""));
    assert!(run(&["--regions", "ams,ams"]).contains("listed twice"));
    assert!(run(&["--prefix", "Bad-Prefix"]).contains("Prefix"));
    assert!(run(&["--regions", "ams,iad", "--from", "syd"]).contains("--from syd"));
    assert!(run(&[
        "exec",
        "--prefix",
        "nosuchdev",
        "--from",
        "syd",
        "--",
        "true"
    ])
    .contains("No city syd"));
}

/// `aloft machine run IMAGE` in `app` and `region`; returns (id, 6PN address).
fn run_machine(dev: &Dev, app: &str, region: &str, image: &str) -> (String, String) {
    let out = dev.cli(&[
        "machine", "run", image, "--app", app, "--region", region, "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    (
        m["id"].as_str().unwrap().to_string(),
        m["private_ip"].as_str().unwrap().to_string(),
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

/// `GET /` on `[ip]:8080` from inside machine `id` with busybox nc (busybox's wget cannot
/// parse IPv6 literals in URLs): (exit code, answer).
fn http_get(dev: &Dev, app: &str, id: &str, ip: &str, timeout_secs: u32) -> (Option<i32>, String) {
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w {timeout_secs} {ip} 8080"
    );
    exec(dev, app, id, &["sh", "-c", &script])
}

#[test]
fn machines_reach_their_org_across_regions_by_internal_name_and_other_orgs_cannot() {
    let dev = start(&prefix(), None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    aloft_testkit::busybox_layout(
        &layout,
        "1",
        "hello from the private network\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    // Pushed through the forwarder here; hosts pull from the control plane on the backbone.
    let push_to = dev.api_url.trim_start_matches("http://").to_string();
    // Each app runs its own copy: a host pulls only the repositories of its machines' apps.
    for app in ["web", "spy"] {
        aloft_testkit::skopeo_push(
            &layout,
            "1",
            &format!("{push_to}/{app}/busybox:1"),
            &dev.token(),
        )
        .unwrap();
    }
    let image = "10.200.0.2:4280/web/busybox:1";
    let spy_image = "10.200.0.2:4280/spy/busybox:1";

    // A second organization (the API has no call to create one yet: add it to the store).
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
    let (ams, _) = run_machine(&dev, "web", "ams", image);
    let (_syd, syd_ip) = run_machine(&dev, "web", "syd", image);
    let (spy, _) = run_machine(&dev, "spy", "iad", spy_image);

    // ams resolves syd's machine by name (once the routes reach its host's DNS) ...
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, text) = exec(
            &dev,
            "web",
            &ams,
            &["nslookup", "-type=AAAA", "syd.web.internal"],
        );
        if code == Some(0) && text.contains(&syd_ip) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "syd.web.internal does not resolve to {syd_ip} in ams: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // ... and reaches it over the mesh at that address.
    let (code, text) = http_get(&dev, "web", &ams, &syd_ip, 20);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("hello from the private network"), "{text}");

    // Another org's machine neither resolves the name nor reaches the address.
    let (code, text) = exec(
        &dev,
        "spy",
        &spy,
        &["nslookup", "-type=AAAA", "syd.web.internal"],
    );
    assert!(code != Some(0) || !text.contains(&syd_ip), "{text}");
    let url = format!("http://[{syd_ip}]:8080/");
    let (code, text) = http_get(&dev, "spy", &spy, &syd_ip, 5);
    assert_ne!(code, Some(0), "another org reached {url}: {text}");
    assert!(!text.contains("hello from the private network"), "{text}");
}
