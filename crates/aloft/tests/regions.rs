//! End-to-end: `aloft dev --regions ams,iad,syd` builds a real multi-region topology on this box
//! (a namespace per host and per city, one anycast address on every edge) and each city is
//! served by its nearest region. Each test brings up its own topology with its own prefix, and
//! removes it even when it fails.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A running `aloft dev`, taken down (and its topology removed) on drop.
struct Dev {
    child: Option<Child>,
    prefix: String,
    data_dir: PathBuf,
    /// Everything it printed so far.
    lines: Vec<String>,
    rx: mpsc::Receiver<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Dev {
    fn start() -> Dev {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        // Short and unique among parallel test runs: namespace names derive from it.
        let prefix = format!("t{:x}{n}", std::process::id() % 0xfffff);
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        let mut dev = Dev::spawn(prefix, data_dir);
        dev._dir = Some(dir);
        dev
    }

    fn spawn(prefix: String, data_dir: PathBuf) -> Dev {
        let mut child = Command::new(bin())
            .args(["dev", "--regions", "ams,iad,syd", "--prefix", &prefix])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            child: Some(child),
            prefix,
            data_dir,
            lines: Vec::new(),
            rx,
            _dir: None,
        };
        dev.wait_line("Try:", Duration::from_secs(240));
        dev
    }

    /// Reads output until a line contains `marker`; panics with the output so far otherwise.
    fn wait_line(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "aloft dev did not print {marker:?}; it printed:\n{}\n--- server log:\n{}",
                    self.lines.join("\n"),
                    std::fs::read_to_string(self.data_dir.join("logs/server.log"))
                        .unwrap_or_default()
                ),
            }
        }
    }

    fn printed(&self) -> String {
        self.lines.join("\n")
    }

    /// The id of the demo machine in `region`, from the `machine … in REGION at …` lines.
    fn machine_in(&self, region: &str) -> String {
        self.lines
            .iter()
            .rev()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 4 && w[0] == "machine" && w[3] == region).then(|| w[1].to_string())
            })
            .unwrap_or_else(|| panic!("no machine in {region}:\n{}", self.printed()))
    }

    /// The control plane URL it printed.
    fn api_url(&self) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("control plane"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let token = std::fs::read_to_string(self.data_dir.join("server/admin-token")).unwrap();
        Command::new(bin())
            .args(args)
            .env("ALOFT_API_URL", self.api_url())
            .env("ALOFT_API_TOKEN", token.trim())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    fn dev_cmd(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("dev")
            .args(args)
            .args(["--prefix", &self.prefix])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .unwrap()
    }

    /// `aloft dev exec --from CITY -- curl …/json`: the region the demo's answer names.
    fn region_from(&self, city: &str) -> String {
        self.region_from_with(city, &[])
    }

    fn region_from_with(&self, city: &str, curl_args: &[&str]) -> String {
        self.region_at(city, "/json", curl_args)
    }

    /// The region that answered `path` of the demo for a client in `city`.
    fn region_at(&self, city: &str, path: &str, curl_args: &[&str]) -> String {
        let out = Command::new(bin())
            .args([
                "dev",
                "exec",
                "--prefix",
                &self.prefix,
                "--from",
                city,
                "--",
            ])
            .args(["curl", "-sS", "-m", "40"])
            .args(curl_args)
            .arg(format!("http://hello.localhost{path}"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl from {city} failed: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(body.trim())
            .unwrap_or_else(|e| panic!("answer from {city} is not JSON ({e}): {body}"));
        v["region"].as_str().unwrap().to_string()
    }

    /// Ctrl-C; returns what it printed until it exited and whether it exited cleanly.
    fn interrupt(&mut self) -> (String, bool) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = child.wait().unwrap();
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.lines.push(line);
        }
        (self.printed(), status.success())
    }

    fn crash(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            for _ in 0..600 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.dev_cmd(&["down"]);
    }
}

#[test]
fn three_regions_come_up_each_city_is_served_by_its_own_and_a_crash_is_cleaned_up() {
    let mut dev = Dev::start();
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
    assert_eq!(dev.region_from_with("ams", &["-H", &force]), "syd");
    // fly-replay: the ams machine asks for syd, and the edge replays the request there.
    assert_eq!(dev.region_at("ams", "/replay/syd", &[]), "syd");
    assert_eq!(dev.region_at("iad", "/replay/iad", &[]), "iad");

    // A crash leaves everything behind; the next start removes it and reuses the data dir.
    dev.crash();
    assert_eq!(dev.namespaces().len(), 8);
    let again = Dev::spawn(dev.prefix.clone(), dev.data_dir.clone());
    assert!(
        again.printed().contains("removed what an earlier run left"),
        "{}",
        again.printed()
    );
    for (r, id) in ["ams", "iad", "syd"].iter().zip(&machines) {
        assert_eq!(&again.machine_in(r), id, "the data dir is reused");
    }
    assert_eq!(again.region_from("syd"), "syd");
    let mut again = again;
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
    let dev = Dev::start();
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
    let dev = Dev::start();
    assert_eq!(dev.region_from("syd"), "syd");
    let out = dev.dev_cmd(&["kill", "--region", "syd"]);
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
    let dev = Dev::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    aloft_testkit::busybox_layout(
        &layout,
        "1",
        "hello from the private network\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let token = std::fs::read_to_string(dev.data_dir.join("server/admin-token")).unwrap();
    // Pushed through the forwarder here; hosts pull from the control plane on the backbone.
    let push_to = dev.api_url().trim_start_matches("http://").to_string();
    aloft_testkit::skopeo_push(
        &layout,
        "1",
        &format!("{push_to}/web/busybox:1"),
        token.trim(),
    )
    .unwrap();
    let image = "10.200.0.2:4280/web/busybox:1";

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
    let (spy, _) = run_machine(&dev, "spy", "iad", image);

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
