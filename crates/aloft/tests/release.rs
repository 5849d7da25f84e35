//! End-to-end: `[deploy] release_command` runs once, before the rollout, in a one-off machine
//! (and aborts the deploy when it fails or times out), and `aloft deploy` without an image
//! builds the app's Dockerfile with the local Docker engine. Real server, real agent, runc
//! machines of busybox images.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use aloft_testkit::app::wait_machine_page;
use aloft_testkit::{
    busybox_layout, ok, run, skopeo_push, stderr, stdout, wait_for, Agent, Server,
};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

fn group(m: &Value) -> &str {
    m["config"]["metadata"]["fly_process_group"]
        .as_str()
        .unwrap_or("app")
}

/// Waits until the app's only live machine serves a page containing `text`.
fn wait_page(server: &Server, app: &str, text: &str) {
    wait_machine_page(server, app, text, Duration::from_secs(60));
}

/// (version, status, reason) of the app's releases, newest first.
fn releases(server: &Server, dir: &Path) -> Vec<(u64, String, String)> {
    let list: Value =
        serde_json::from_str(&ok(server.cli_in(dir, &["releases", "--json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A busybox image without entrypoint or cmd: the config's `[processes]` runs httpd, so the
/// release command (which replaces the cmd) runs on its own.
fn layout(dir: &Path, name: &str, page: &str) -> String {
    let path = dir.join(name);
    busybox_layout(&path, "1", page, &[]).unwrap();
    format!("{}:1", path.display())
}

fn write_config(dir: &Path, app: &str, deploy: &str) {
    std::fs::write(
        dir.join("aloft.toml"),
        format!(
            "app = \"{app}\"\nprimary_region = \"ams\"\n[env]\nMODE = \"prod\"\n\
             [processes]\napp = \"/bin/busybox httpd -f -p 8080 -h /www\"\n\
             [http_service]\ninternal_port = 8080\n[deploy]\n{deploy}"
        ),
    )
    .unwrap();
}

#[test]
fn a_release_command_runs_once_before_the_rollout_with_env_and_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let v1 = layout(tmp.path(), "v1", "page one\n");
    let dir = tmp.path().join("rc");
    std::fs::create_dir_all(&dir).unwrap();
    ok(server.cli(&["apps", "create", "rc"]));
    write_config(
        &dir,
        "rc",
        "release_command = \"/bin/sh -c 'echo migrating-7c1e mode=$MODE token=$MIGRATE_TOKEN rc=$RELEASE_COMMAND'\"\n",
    );
    ok(server.cli_in(
        &dir,
        &["secrets", "set", "MIGRATE_TOKEN=tok-9f3a", "--stage"],
    ));
    // A one-off machine an interrupted deploy left behind goes before the command runs.
    let registry = server.url.trim_start_matches("http://").to_string();
    let leftover_ref = format!("{registry}/rc/busybox:1");
    skopeo_push(&tmp.path().join("v1"), "1", &leftover_ref, &server.token).unwrap();
    ok(server.cli(&[
        "machine",
        "run",
        &leftover_ref,
        "--app",
        "rc",
        "--region",
        "ams",
        "--metadata",
        "fly_process_group=fly_app_release_command",
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ]));
    let leftover = server.machine_list("rc", false)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = ok(server.cli_in(&dir, &["deploy", "--image", &v1]));
    assert!(
        out.contains(&format!("removing release command machine {leftover}")),
        "{out}"
    );
    let marker = "migrating-7c1e mode=prod token=tok-9f3a rc=1";
    assert_eq!(out.matches(marker).count(), 1, "{out}");
    let step = out.find("Running release command: /bin/sh").expect(&out);
    let rollout = out.find("app: created machine").expect(&out);
    assert!(
        step < out.find(marker).unwrap() && out.find(marker).unwrap() < rollout,
        "{out}"
    );
    wait_page(&server, "rc", "page one");

    // The rollout made the app's one machine; the one-off machine ran in the primary region,
    // without services, and is destroyed.
    let live = server.machine_list("rc", false);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(group(&live[0]), "app");
    let all = server.machine_list("rc", true);
    let one_offs: Vec<&Value> = all
        .iter()
        .filter(|m| group(m) == "fly_app_release_command")
        .collect();
    assert_eq!(one_offs.len(), 2, "{all:?}");
    assert!(
        one_offs.iter().all(|m| m["state"] == "destroyed"),
        "{all:?}"
    );
    let ran = one_offs
        .iter()
        .find(|m| m["id"] != leftover.as_str())
        .unwrap();
    assert_eq!(ran["region"], "ams");
    assert!(ran["config"]["services"].is_null(), "{all:?}");
    assert_eq!(ran["config"]["metadata"]["fly_release_version"], "1");
    assert_eq!(releases(&server, &dir)[0].1, "succeeded");
}

/// Writes app rcf's config in `dir` with `deploy` as its `[deploy]` section and deploys
/// `image`, which must fail; returns what the CLI said on stderr.
fn deploy_refused(server: &Server, dir: &Path, deploy: &str, image: &str) -> String {
    write_config(dir, "rcf", deploy);
    let out = server.cli_in(dir, &["deploy", "--image", image]);
    assert!(!out.status.success(), "{}", stdout(&out));
    stderr(&out)
}

#[test]
fn a_failing_or_slow_release_command_aborts_the_deploy_and_touches_no_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let v1 = layout(tmp.path(), "v1", "page one\n");
    let v2 = layout(tmp.path(), "v2", "page two\n");
    let dir = tmp.path().join("rcf");
    std::fs::create_dir_all(&dir).unwrap();
    ok(server.cli(&["apps", "create", "rcf"]));
    write_config(&dir, "rcf", "");
    ok(server.cli_in(&dir, &["deploy", "--image", &v1]));
    wait_page(&server, "rcf", "page one");
    let before = server.machine_list("rcf", false);
    assert_eq!(before.len(), 1);
    let id = before[0]["id"].as_str().unwrap().to_owned();
    let image = before[0]["config"]["image"].as_str().unwrap().to_owned();

    let err = deploy_refused(
        &server,
        &dir,
        "release_command = \"/bin/sh -c 'echo schema-check-failed-41d2 >&2; exit 3'\"\n",
        &v2,
    );
    assert!(
        err.contains("release command failed with exit code 3; deploy aborted"),
        "{err}"
    );
    assert!(err.contains("schema-check-failed-41d2"), "{err}");
    let list = releases(&server, &dir);
    assert_eq!((list[0].0, list[0].1.as_str()), (2, "failed"), "{list:?}");
    assert!(list[0].2.contains("exit code 3"), "{list:?}");

    // A command that outlives release_command_timeout is stopped and aborts the deploy too.
    let err = deploy_refused(
        &server,
        &dir,
        "release_command = \"/bin/sleep 600\"\nrelease_command_timeout = \"3s\"\n",
        &v2,
    );
    assert!(
        err.contains("release command timed out after 3s; deploy aborted"),
        "{err}"
    );
    assert_eq!(releases(&server, &dir)[0].1, "failed");

    // The app's machine was never touched: same id, same version of the old image, serving.
    let after = server.machine_list("rcf", false);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["id"], id.as_str());
    assert_eq!(after[0]["config"]["image"], image.as_str());
    assert_eq!(after[0]["version"], before[0]["version"]);
    assert_eq!(after[0]["state"], "started");
    wait_page(&server, "rcf", "page one");
    // Both one-off machines are gone.
    wait_for(
        "the one-off machines are destroyed",
        Duration::from_secs(30),
        || {
            let all = server.machine_list("rcf", true);
            let one_offs: Vec<&Value> = all
                .iter()
                .filter(|m| group(m) == "fly_app_release_command")
                .collect();
            (one_offs.len() == 2 && one_offs.iter().all(|m| m["state"] == "destroyed"))
                .then_some(())
        },
    )
    .unwrap();
}

/// Removes a local Docker image when dropped.
struct DockerTag(String);

impl Drop for DockerTag {
    fn drop(&mut self) {
        let _ = run("docker", &["rmi", "--force", &self.0]);
    }
}

#[test]
fn deploy_without_an_image_builds_the_dockerfile_with_target_and_args() {
    if let Err(e) = run("docker", &["info", "--format", "{{.ServerVersion}}"]) {
        eprintln!("skipping: no Docker engine answers `docker info` ({e})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let app = format!("built{}", std::process::id());
    let _tag = DockerTag(format!("aloft-build/{app}:latest"));
    let dir = tmp.path().join("built");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    // The page comes from a build arg; the last stage cannot build, so only the target works.
    std::fs::write(
        dir.join("Dockerfile.web"),
        "FROM scratch AS base\n\
         COPY bin/ /bin/\n\
         ARG PAGE=unset\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /www && echo \\\"built page $PAGE\\\" > /www/index.html\"]\n\
         FROM base AS runtime\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n\
         FROM scratch AS unused\n\
         COPY no-such-file /\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("aloft.toml"),
        format!(
            "app = \"{app}\"\nprimary_region = \"ams\"\n[build]\ndockerfile = \"Dockerfile.web\"\n\
             build-target = \"runtime\"\n[build.args]\nPAGE = \"from-args-5e2b\"\n\
             [http_service]\ninternal_port = 8080\n"
        ),
    )
    .unwrap();
    ok(server.cli(&["apps", "create", &app]));
    let out = ok(server.cli_in(&dir, &["deploy"]));
    assert!(out.contains(&format!("/{app}:deployment-")), "{out}");
    wait_page(&server, &app, "built page from-args-5e2b");
    // `--build-arg` wins over `[build.args]`, as flyctl's does.
    ok(server.cli_in(&dir, &["deploy", "--build-arg", "PAGE=from-flag-77c1"]));
    wait_page(&server, &app, "built page from-flag-77c1");
    let live = server.machine_list(&app, false);
    assert!(
        live[0]["config"]["image"]
            .as_str()
            .unwrap()
            .contains(&format!("/{app}:deployment-")),
        "{live:?}"
    );

    // `aloft launch` without --image builds the Dockerfile beside it.
    let launched = format!("launched{}", std::process::id());
    let _launched_tag = DockerTag(format!("aloft-build/{launched}:latest"));
    let ldir = tmp.path().join("launched");
    std::fs::create_dir_all(ldir.join("bin")).unwrap();
    std::fs::create_dir_all(ldir.join("www")).unwrap();
    std::fs::copy("/bin/busybox", ldir.join("bin/busybox")).unwrap();
    std::fs::write(ldir.join("www/index.html"), "launched page 93ac\n").unwrap();
    std::fs::write(
        ldir.join("Dockerfile"),
        "FROM scratch\nCOPY bin/ /bin/\nCOPY www/ /www/\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    ok(server.cli_in(&ldir, &["launch", "--name", &launched, "--region", "ams"]));
    wait_page(&server, &launched, "launched page 93ac");

    // A build that fails stops the deploy with the tail of the build output.
    std::fs::write(
        dir.join("Dockerfile.web"),
        "FROM scratch AS runtime\nCOPY missing-4b7d.txt /\n",
    )
    .unwrap();
    let failed = server.cli_in(&dir, &["deploy"]);
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(err.contains("`docker build` of"), "{err}");
    assert!(err.contains("missing-4b7d.txt"), "{err}");
    // The two deploys above, and none for the build that failed.
    assert_eq!(releases(&server, &dir).len(), 2);
}

#[test]
fn deploy_names_a_missing_docker_or_a_stopped_engine_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let dir = tmp.path().join("nodocker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(
        dir.join("aloft.toml"),
        "app = \"nodocker\"\nprimary_region = \"ams\"\n",
    )
    .unwrap();
    ok(server.cli(&["apps", "create", "nodocker"]));
    let deploy_with = |key: &str, value: &str| {
        let mut cmd = Command::new(bin());
        cmd.arg("deploy")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .env("HOME", &dir)
            .env("ALOFT_API_URL", &server.url)
            .env("ALOFT_API_TOKEN", &server.token)
            .env(key, value);
        cmd.output().unwrap()
    };

    let empty_path = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty_path).unwrap();
    let out = deploy_with("PATH", &empty_path.to_string_lossy());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Docker is not installed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let socket = tmp.path().join("no-docker.sock");
    let out = deploy_with("DOCKER_HOST", &format!("unix://{}", socket.display()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("The Docker engine is not running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(releases(&server, &dir).is_empty());
}
