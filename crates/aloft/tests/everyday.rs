//! End-to-end: a Fly user's everyday commands with flyctl's flags, against a real server and
//! real agents running busybox machines with runc: `machine update/clone/kill/suspend/leases/
//! wait`, `deploy --ha/--regions/--env`, `apps restart`, `launch` from a fly.toml.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, stdout, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

const HTTPD: [&str; 7] = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];

/// A busybox httpd image pushed as `web/busybox:TAG`, serving `page`.
fn image(server: &Server, dir: &Path, tag: &str, page: &str) -> String {
    image_of(server, dir, "web", tag, page)
}

/// A busybox httpd image pushed as `APP/busybox:TAG` (a machine runs only its app's images).
fn image_of(server: &Server, dir: &Path, app: &str, tag: &str, page: &str) -> String {
    let layout = dir.join(format!("layout-{app}-{tag}"));
    busybox_layout(&layout, "1", page, &HTTPD).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/{app}/busybox:{tag}");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    image
}

fn machine(server: &Server, app: &str, id: &str) -> Value {
    server.machine_json(app, id)
}

/// Waits until machine `id` of `app` is in `state`.
fn wait_state(server: &Server, app: &str, id: &str, state: &str) -> Value {
    wait_for(
        &format!("machine {id} is {state}"),
        Duration::from_secs(30),
        || {
            let m = machine(server, app, id);
            (m["state"] == state).then_some(m)
        },
    )
    .unwrap()
}

#[test]
fn machine_update_clone_kill_suspend_leases_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();
    let v1 = image(&server, dir.path(), "1", "one\n");
    let v2 = image(&server, dir.path(), "2", "two\n");
    ok(server.cli(&["apps", "create", "web"]));
    let run = ok(server.cli(&[
        "machine",
        "run",
        &v1,
        "--app",
        "web",
        "--region",
        "ams",
        "--restart",
        "no",
        "--json",
    ]));
    let m: Value = serde_json::from_str(&run).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let version = m["version"].as_str().unwrap().to_owned();

    // update: the flags change the config as a new version; the rest of it stays.
    let out = ok(server.cli(&[
        "machine",
        "update",
        &id,
        "--app",
        "web",
        "--image",
        &v2,
        "--memory",
        "512",
        "--env",
        "GREETING=hi",
        "--port",
        "80:8080/tcp:http",
        "--json",
    ]));
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    assert_ne!(m["version"], version.as_str());
    // The control plane pins the tag to the digest it named.
    let digest = m["image_ref"]["digest"].as_str().unwrap();
    assert_eq!(m["config"]["image"], format!("{v2}@{digest}"));
    assert_eq!(m["config"]["guest"]["memory_mb"], 512);
    assert_eq!(m["config"]["env"]["GREETING"], "hi");
    assert_eq!(m["config"]["restart"]["policy"], "no", "kept: {m}");
    assert_eq!(m["config"]["services"][0]["ports"][0]["port"], 80);
    let env = ok(server.cli(&["machine", "exec", &id, "--app", "web", "--", "env"]));
    assert!(env.contains("GREETING=hi"), "{env}");
    // An update that changes nothing is refused before anything is sent. (Naming the image's
    // tag again is a change: the control plane resolves the tag anew.)
    let same = server.cli(&[
        "machine",
        "update",
        &id,
        "--app",
        "web",
        "--env",
        "GREETING=hi",
    ]);
    assert_eq!(same.status.code(), Some(2), "{}", stderr(&same));

    // clone: same config, a new machine, in the region asked for.
    let out = ok(server.cli(&[
        "machine", "clone", &id, "--app", "web", "--region", "ams", "--json",
    ]));
    let copy: Value = serde_json::from_str(&out).unwrap();
    let copy_id = copy["id"].as_str().unwrap().to_owned();
    assert_ne!(copy_id, id);
    assert_eq!(copy["state"], "started");
    assert_eq!(
        copy["config"]["image"], m["config"]["image"],
        "the same pinned image"
    );
    assert_eq!(copy["config"]["env"]["GREETING"], "hi");
    assert_eq!(server.machine_list("web", false).len(), 2);

    // leases: one taken through the API is shown with its owner, then cleared.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = aloft_api::Client::new(&server.url, server.token.clone()).unwrap();
    let req = aloft_api::CreateLeaseRequest {
        ttl: Some(600),
        description: Some("held by a test".into()),
    };
    rt.block_on(api.acquire_lease("web", &id, &req)).unwrap();
    let view: Value = serde_json::from_str(&ok(
        server.cli(&["machine", "leases", "view", "--app", "web", "--json"])
    ))
    .unwrap();
    let held: Vec<&Value> = view
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !l["lease"].is_null())
        .collect();
    assert_eq!(held.len(), 1, "{view}");
    assert_eq!(held[0]["machine"], id.as_str());
    assert_eq!(held[0]["lease"]["description"], "held by a test");
    let out = ok(server.cli(&["machine", "leases", "clear", &id, "--app", "web"]));
    assert!(
        out.contains(&format!("Cleared the lease on machine {id}")),
        "{out}"
    );
    let gone = rt.block_on(api.get_lease("web", &id)).unwrap_err();
    assert_eq!(gone.status(), Some(404));

    // kill: SIGKILL to the main process; with restart policy `no` it is not started again.
    ok(server.cli(&["machine", "kill", &id, "--app", "web"]));
    let killed = wait_for(
        "the killed machine is down",
        Duration::from_secs(30),
        || {
            let m = machine(&server, "web", &id);
            matches!(m["state"].as_str(), Some("stopped" | "failed")).then_some(m)
        },
    )
    .unwrap();
    let events = killed["events"].to_string();
    assert!(
        events.contains("SIGKILL") && events.contains("137"),
        "{events}"
    );
    // machine status shows the events with their reasons.
    let status = ok(server.cli(&["machine", "status", &id, "--app", "web"]));
    assert!(status.contains("exit code 137"), "{status}");
    // update --skip-start changes a machine that is down without starting it.
    ok(server.cli(&[
        "machine",
        "update",
        &id,
        "--app",
        "web",
        "--env",
        "AFTER=1",
        "--skip-start",
    ]));
    let m = machine(&server, "web", &id);
    assert_eq!(m["config"]["env"]["AFTER"], "1", "{m}");
    assert!(
        matches!(m["state"].as_str(), Some("stopped" | "failed")),
        "{m}"
    );

    // suspend: the copy is no longer started (suspended where the runtime can keep its memory).
    ok(server.cli(&["machine", "suspend", &copy_id, "--app", "web"]));
    wait_for(
        "the copy is suspended or stopped",
        Duration::from_secs(30),
        || {
            let m = machine(&server, "web", &copy_id);
            matches!(m["state"].as_str(), Some("suspended" | "stopped")).then_some(())
        },
    )
    .unwrap();

    // wait: returns once the state is reached, and exits 1 when it does not come in time.
    ok(server.cli(&["machine", "start", &copy_id, "--app", "web"]));
    let out = ok(server.cli(&[
        "machine",
        "wait",
        &copy_id,
        "--app",
        "web",
        "--state",
        "started",
        "--wait-timeout",
        "30s",
    ]));
    assert!(out.contains("is started"), "{out}");
    let late = server.cli(&[
        "machine",
        "wait",
        &copy_id,
        "--app",
        "web",
        "--state",
        "destroyed",
        "--wait-timeout",
        "1s",
    ]);
    assert_eq!(late.status.code(), Some(1), "{}", stdout(&late));
    assert!(
        stderr(&late).contains("did not reach destroyed within 1s"),
        "{}",
        stderr(&late)
    );
}

#[test]
fn deploy_ha_regions_env_and_a_rolling_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _ams = Agent::start(bin(), &server, "ams", &dir.path().join("ams")).unwrap();
    let _syd = Agent::start(bin(), &server, "syd", &dir.path().join("syd")).unwrap();
    let v1 = image(&server, dir.path(), "1", "one\n");
    let v2 = image(&server, dir.path(), "2", "two\n");
    let app_dir = dir.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("web.toml"),
        "app = \"web\"\nprimary_region = \"ams\"\n\n[http_service]\n  internal_port = 8080\n",
    )
    .unwrap();
    let run = |args: &[&str]| server.cli_in(&app_dir, args);
    ok(run(&["apps", "create", "web"]));

    // --ha: a new app's group gets two machines in the primary region; --env reaches them.
    let out = ok(run(&[
        "deploy",
        "-c",
        "web.toml",
        "--image",
        &v1,
        "--ha",
        "--env",
        "GREETING=hi",
    ]));
    assert!(out.contains("Release v1 succeeded"), "{out}");
    let list = server.machine_list("web", false);
    assert_eq!(list.len(), 2, "{list:?}");
    for m in &list {
        assert_eq!(m["region"], "ams");
        assert_eq!(m["state"], "started");
        assert_eq!(m["config"]["env"]["GREETING"], "hi");
    }

    // --regions: a region without machines gets one; the others are not touched.
    let out = ok(run(&[
        "deploy",
        "-c",
        "web.toml",
        "--image",
        &v2,
        "--regions",
        "syd",
    ]));
    assert!(out.contains("created machine"), "{out}");
    let list = server.machine_list("web", false);
    let images = |region: &str| -> Vec<String> {
        list.iter()
            .filter(|m| m["region"] == region)
            // As deployed, without the digest the control plane pinned the tag to.
            .map(|m| {
                let image = m["config"]["image"].as_str().unwrap();
                image.split('@').next().unwrap_or_default().to_owned()
            })
            .collect()
    };
    assert_eq!(images("syd"), std::slice::from_ref(&v2), "{list:?}");
    assert_eq!(images("ams"), [v1.clone(), v1.clone()], "{list:?}");

    // apps restart: every started machine starts again, one after the other.
    let before: Vec<(String, usize)> = list
        .iter()
        .map(|m| {
            let starts = m["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "start")
                .count();
            (m["id"].as_str().unwrap().to_owned(), starts)
        })
        .collect();
    let out = ok(run(&["apps", "restart", "web"]));
    assert!(out.contains("Restarted 3 machine(s) of web"), "{out}");
    for (id, starts) in before {
        let m = wait_state(&server, "web", &id, "started");
        let now = m["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "start")
            .count();
        assert!(now > starts, "machine {id} did not start again: {m}");
    }
}

#[test]
fn launch_adopts_a_fly_toml_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();
    let v1 = image_of(&server, dir.path(), "flyweb", "1", "one\n");
    let app_dir = dir.path().join("flyapp");
    std::fs::create_dir_all(&app_dir).unwrap();
    let fly = format!(
        "# deployed on Fly until today\napp = \"flyweb\"\nprimary_region = \"ams\"\n\n\
         [build]\n  image = \"{v1}\"\n\n[env]\n  MODE = \"fly\"\n\n[http_service]\n  \
         internal_port = 8080\n  force_https = true\n  auto_stop_machines = \"stop\"\n"
    );
    std::fs::write(app_dir.join("fly.toml"), &fly).unwrap();
    let out = ok(server.cli_in(&app_dir, &["launch"]));
    assert!(out.contains("Created app flyweb"), "{out}");
    assert!(out.contains("Using fly.toml as it is"), "{out}");
    assert_eq!(
        std::fs::read_to_string(app_dir.join("fly.toml")).unwrap(),
        fly
    );
    assert!(!app_dir.join("aloft.toml").exists());
    let list = server.machine_list("flyweb", false);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["config"]["env"]["MODE"], "fly");
    // With a host, the app and its name under localhost, doctor finds nothing to fix.
    let doctor = ok(server.cli_in(&app_dir, &["doctor"]));
    assert!(doctor.contains("Everything checked is fine"), "{doctor}");
    assert!(!doctor.contains("FAIL"), "{doctor}");
    // A second launch here would create a second app from the same file: it names the app
    // that exists instead.
    let again = server.cli_in(&app_dir, &["launch"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("aloft deploy"),
        "{}",
        stderr(&again)
    );
}
