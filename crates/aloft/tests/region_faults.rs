//! End-to-end: faults between regions in `aloft dev --regions ams,lhr,iad` (lhr is ams's
//! nearest region, iad is far from both). A host whose agent is killed with SIGKILL: its
//! city's clients are answered by the nearest other region, and the control plane shows the
//! host down. A partition between the hosts of ams and lhr: ams's traffic that lhr served goes
//! to iad without failed requests once the edge noticed, and comes back to lhr after healing.
//! Each test brings up its own topology with its own prefix and removes it even when it fails.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::dev::{dev_prefix, Dev};
use aloft_testkit::{ok, stderr, stdout, wait_for};

const REGIONS: &str = "ams,lhr,iad";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `aloft dev` of [`REGIONS`] under a prefix starting with `name`.
fn start(name: &str) -> Dev {
    Dev::start(bin(), &dev_prefix(name), REGIONS, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// `n` requests in a row from `city`: every one answered, and by `region`.
fn all_served(dev: &Dev, city: &str, region: &str, n: usize) {
    for i in 0..n {
        match dev.ask(city, &[]) {
            Ok(r) => assert_eq!(r, region, "request {i} of {n} from {city}"),
            Err(e) => panic!("request {i} of {n} from {city} failed: {e}"),
        }
    }
}

/// The line of `aloft regions list` for `region`.
fn regions_line(dev: &Dev, region: &str) -> Option<String> {
    stdout(&dev.cli(&["regions", "list"]))
        .lines()
        .find(|l| l.starts_with(region))
        .map(str::to_string)
}

#[test]
fn a_host_whose_agent_is_killed_hands_its_city_to_the_nearest_region_and_shows_down() {
    let mut dev = start("rk");
    dev.wait_answered_by("lhr", "lhr", Duration::from_secs(60));
    let lhr_machine = dev.machine_in("lhr");

    let pids = dev.agent_pids("lhr");
    assert!(!pids.is_empty(), "no agent of lhr found");
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // aloft dev notices by itself and withdraws lhr's anycast route: ams is lhr's nearest.
    let line = dev
        .proc()
        .wait_line("host of lhr is down", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line, "host of lhr is down; city lhr now reaches ams");
    dev.wait_answered_by("lhr", "ams", Duration::from_secs(60));
    all_served(&dev, "lhr", "ams", 5);
    all_served(&dev, "iad", "iad", 3);

    // The control plane counts the host down once its heartbeats stop for long enough.
    let line = wait_for("lhr shown down", Duration::from_secs(120), || {
        regions_line(&dev, "lhr").filter(|l| l.contains("(1 down)"))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", regions_line(&dev, "lhr")));
    assert!(
        line.contains(" 0 (1 down)"),
        "{line}\n{}\n{}",
        stdout(&dev.cli(&["regions", "list", "--json"])),
        dev.proc().output()
    );
    assert!(
        regions_line(&dev, "ams").is_some_and(|l| !l.contains("down")),
        "{:?}",
        regions_line(&dev, "ams")
    );
    let status = ok(dev.cli(&["status", "--app", "hello"]));
    let row = status
        .lines()
        .find(|l| l.contains(&lhr_machine))
        .unwrap_or_else(|| panic!("no row for {lhr_machine}: {status}"));
    assert!(row.contains("(host down)"), "{status}");
    // Its machine left the route table: not even a request forced onto it reaches it.
    let forced = format!("fly-force-instance-id: {lhr_machine}");
    wait_for("lhr's machine unroutable", Duration::from_secs(60), || {
        dev.ask("iad", &["-H", &forced]).is_err().then_some(())
    })
    .unwrap();
}

#[test]
fn a_partition_between_two_regions_sends_traffic_to_the_next_nearest_until_healed() {
    let mut dev = start("rp");
    // Traffic entering at ams is served in lhr (its nearest region) once ams has no machine.
    let ams_machine = dev.machine_in("ams");
    let iad_machine = dev.machine_in("iad");
    let lhr_machine = dev.machine_in("lhr");
    ok(dev.cli(&[
        "machine",
        "destroy",
        &ams_machine,
        "--app",
        "hello",
        "--force",
    ]));
    // (Only the first answer is checked: under load, a spike in the measured RTT to lhr can
    // make iad look nearer for a moment.)
    dev.wait_answered_by("ams", "lhr", Duration::from_secs(60));

    let out = dev.dev_cmd(&["partition", "ams", "lhr"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("partitioned ams and lhr"));
    let again = dev.dev_cmd(&["partition", "lhr", "ams"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already partitioned"),
        "{}",
        stderr(&again)
    );
    let state = std::fs::read_to_string(dev.data_dir.join("dev.json")).unwrap();
    assert!(state.contains(r#"["ams","lhr"]"#), "{state}");

    // Once ams's edge noticed, every request goes to iad and none fails.
    dev.wait_answered_by("ams", "iad", Duration::from_secs(60));
    all_served(&dev, "ams", "iad", 20);
    // The cut is real: ams cannot reach lhr's machine even when asked for it...
    let forced_lhr = format!("fly-force-instance-id: {lhr_machine}");
    assert!(dev.ask("ams", &["-H", &forced_lhr]).is_err());
    // ...while lhr still reaches iad over the mesh, and its own clients.
    let forced_iad = format!("fly-force-instance-id: {iad_machine}");
    assert_eq!(dev.ask("lhr", &["-H", &forced_iad]).unwrap(), "iad");
    all_served(&dev, "lhr", "lhr", 3);
    // The control plane, reachable from both, sees every host up.
    for region in ["ams", "lhr", "iad"] {
        let line = regions_line(&dev, region);
        assert!(
            line.as_ref().is_some_and(|l| !l.contains("down")),
            "{region}: {line:?}"
        );
    }
    ok(dev.cli(&["machine", "list", "--app", "hello"]));

    let out = dev.dev_cmd(&["heal", "ams", "lhr"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = std::fs::read_to_string(dev.data_dir.join("dev.json")).unwrap();
    assert!(!state.contains(r#"["ams","lhr"]"#), "{state}");
    dev.wait_answered_by("ams", "lhr", Duration::from_secs(90));
    assert_eq!(dev.ask("ams", &["-H", &forced_lhr]).unwrap(), "lhr");
    for i in 0..10 {
        if let Err(e) = dev.ask("ams", &[]) {
            panic!("request {i} from ams after healing failed: {e}");
        }
    }
}
