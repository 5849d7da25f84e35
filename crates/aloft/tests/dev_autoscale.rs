//! End-to-end: compute follows the traffic in the `aloft dev` topology. With `--autoscale`
//! the demo app may run 1 to 3 machines in each of ams, iad and syd; a burst of requests from
//! syd's clients (wrk in syd's client namespace) makes machines appear in syd, and only there;
//! `aloft dev` prints where the traffic entered and was served; once the burst is over the
//! extra machines are stopped and destroyed, back to one. The topology is removed even when
//! the test fails.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aloft_testkit::dev::{dev_prefix, Dev};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// The demo app's machines that are not destroyed: (id, region, state).
fn machines(dev: &Dev) -> Vec<(String, String, String)> {
    let list = dev.cli_json(&["machine", "list", "--app", "hello", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("region"), s("state"))
        })
        .filter(|(_, _, state)| state != "destroyed")
        .collect()
}

/// A load generator, killed on drop.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `check` returns something, polling; panics with `what` after `limit`.
fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn in_region<'a>(
    list: &'a [(String, String, String)],
    region: &str,
) -> Vec<&'a (String, String, String)> {
    list.iter().filter(|(_, r, _)| r == region).collect()
}

fn started_in(list: &[(String, String, String)], region: &str) -> usize {
    in_region(list, region)
        .iter()
        .filter(|(_, _, s)| s == "started")
        .count()
}

#[test]
fn a_burst_from_syd_makes_machines_appear_in_syd_only_and_they_go_when_it_ends() {
    let mut dev = Dev::start(
        bin(),
        &dev_prefix("s"),
        "ams,iad,syd",
        &[
            "--autoscale",
            "--autoscale-idle",
            "5",
            "--autoscale-destroy-after",
            "5",
            "--summary-every",
            "2",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let printed = dev.printed();
    assert!(
        printed.contains("autoscale      hello in ams, iad, syd: 1..3 machines"),
        "{printed}"
    );
    let show = dev.cli_json(&["scale", "show", "--app", "hello", "--json"]);
    for region in ["ams", "iad", "syd"] {
        let line = show
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["region"] == region)
            .unwrap_or_else(|| panic!("no {region} in {show}"));
        assert_eq!(
            line["autoscale"],
            serde_json::json!({"min": 1, "max": 3, "target_concurrency": 5}),
            "{show}"
        );
    }
    let before = machines(&dev);
    let original: Vec<(String, String, String)> = ["ams", "iad", "syd"]
        .iter()
        .map(|r| {
            let here = in_region(&before, r);
            assert_eq!(here.len(), 1, "one machine in {r}: {before:?}");
            assert_eq!(here[0].2, "started", "{before:?}");
            here[0].clone()
        })
        .collect();

    // 16 connections (one wrk thread) from syd's clients, through the city's localhost to
    // its nearest edge.
    let load = Load(
        dev.in_city(
            "syd",
            &[
                "wrk",
                "-t",
                "1",
                "-c",
                "16",
                "-d",
                "600s",
                "-H",
                "Host: hello.localhost",
                "http://127.0.0.1/",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk runs (scripts/setup.sh installs it)"),
    );
    let grown = wait_until(
        "more than one started machine in syd",
        Duration::from_secs(240),
        || {
            let list = machines(&dev);
            assert!(in_region(&list, "syd").len() <= 3, "max 3 in syd: {list:?}");
            for (id, region, _) in &original[..2] {
                let here = in_region(&list, region);
                assert_eq!(here.len(), 1, "{region} is unchanged: {list:?}");
                assert_eq!(&here[0].0, id, "{list:?}");
            }
            (started_in(&list, "syd") > 1).then_some(list)
        },
    );
    let scaled: Vec<String> = in_region(&grown, "syd")
        .iter()
        .map(|(id, _, _)| id.clone())
        .filter(|id| id != &original[2].0)
        .collect();
    assert!(!scaled.is_empty(), "{grown:?}");
    // Machines started at once on one host get addresses of their own.
    let list = dev.cli_json(&["machine", "list", "--app", "hello", "--json"]);
    let mut ips: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] != "destroyed")
        .filter_map(|m| m["private_ip"].as_str())
        .collect();
    let count = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), count, "{list}");
    // Answers under load still come from syd, and aloft dev says where the traffic went.
    assert_eq!(dev.region_from("syd"), "syd");
    let line = dev.wait_line(
        |l| l.starts_with("traffic syd:") && l.contains("req/s entering"),
        Duration::from_secs(60),
    );
    assert!(line.contains("autoscale 1..3"), "{line}");
    let line = dev.wait_line(
        |l| l.starts_with("traffic syd:") && l.contains("from syd served by syd"),
        Duration::from_secs(60),
    );
    assert!(
        !line.contains("served by ams") && !line.contains("served by iad"),
        "{line}"
    );
    for (id, region, _) in &original[..2] {
        assert_eq!(dev.region_from(region), *region);
        let list = machines(&dev);
        assert_eq!(in_region(&list, region).len(), 1, "{list:?}");
        assert_eq!(&in_region(&list, region)[0].0, id);
    }
    drop(load);

    // The burst is over: after the idle time the extra machines stop, then are destroyed.
    dev.wait_line(
        |l| l.starts_with("traffic syd: no traffic entering; machines 1 started"),
        Duration::from_secs(180),
    );
    let after = wait_until(
        "syd back to its one machine",
        Duration::from_secs(180),
        || {
            let list = machines(&dev);
            (in_region(&list, "syd").len() == 1).then_some(list)
        },
    );
    assert_eq!(after.len(), 3, "{after:?}");
    for m in &original {
        assert!(after.contains(m), "{m:?} is kept, started: {after:?}");
    }
    let events = dev.cli_json(&["machine", "status", &scaled[0], "--app", "hello", "--json"]);
    let by_scaler: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "autoscale")
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in ["launch", "stop", "destroy"] {
        assert!(
            by_scaler.contains(&kind),
            "no {kind} by the autoscaler: {events}"
        );
    }

    let (printed, clean) = dev.interrupt();
    assert!(clean, "{printed}");
    let served = printed
        .lines()
        .find(|l| l.starts_with("served from syd:"))
        .unwrap_or_else(|| panic!("no traffic summary for syd:\n{printed}"));
    assert!(served.starts_with("served from syd: syd "), "{served}");
    assert!(
        !served.contains(','),
        "only syd served syd's clients: {served}"
    );
    assert!(dev.namespaces().is_empty(), "{:?}", dev.namespaces());
}
