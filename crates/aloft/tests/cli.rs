//! Snapshots of what the CLI prints (help, tables, JSON, errors) against a real server, and a
//! real agent where the output needs machines. Ids, times, ports, addresses and temporary
//! paths are filtered, so a snapshot changes only when the output a person reads does.
//! Update them with `INSTA_UPDATE=always cargo test -p aloft --test cli` and review the diff.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Agent, Server};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// What a run printed, the way uv's snapshots show it.
fn shown(out: &Output) -> String {
    format!(
        "success: {}\nexit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.status.success(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Filters for everything that changes from run to run; `dir` is the test's scratch dir.
fn settings(dir: Option<&Path>) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_snapshot_path("snapshots");
    if let Some(dir) = dir {
        s.add_filter(&regex_escape(&dir.display().to_string()), "[TEMP]");
    }
    let filters = [
        // Scratch directories of other runs.
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[TEMP]"),
        (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
        // A pushed blob's line: short digest and size.
        (r"\b[0-9a-f]{12} [0-9.]+ (B|KB|MB|GB):", "[BLOB] [SIZE]:"),
        (r"deployment-[0-9a-f]{12}", "deployment-[SHORT]"),
        (
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
            "[TIME]",
        ),
        (r"\b1\d{12}\b", "[MS]"),
        (r"fdaa(:[0-9a-f]{0,4}){2,7}", "[6PN]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"\b[0-9a-f]{14}\b", "[ID]"),
        (r"\b[0-9A-HJKMNP-TV-Z]{26}\b", "[ULID]"),
        (r"\b[0-9a-f]{32}\b", "[HEX]"),
        (r"\bt[0-9a-f]{8,20}\b", "[HOST]"),
        (r"in \d+m\d+s", "in [DURATION]"),
        (r"\b[0-9a-f]{16}\b", "[HEX]"),
        (r"\b[a-z][a-z0-9-]*-[0-9a-f]{6}\b", "[NAME]"),
        (r"\b(10|172|192)\.\d+\.\d+\.\d+\b", "[IP]"),
        (r"pid \d+", "pid [PID]"),
    ];
    for (re, to) in filters {
        s.add_filter(re, to);
    }
    s
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// Runs the CLI with no server, from `dir`.
fn offline(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("ALOFT_API_URL", "http://127.0.0.1:9")
        .env("ALOFT_API_TOKEN", "not-a-token")
        .env_remove("ALOFT_APP")
        .env_remove("ALOFT_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("the aloft binary runs")
}

/// A snapshot per command line, named `name`. Outside help texts, runs of spaces become two:
/// table columns are as wide as their widest raw value (a 4- or 5-digit port, an address),
/// which the filters hide.
fn snap(s: &insta::Settings, name: &str, out: &Output) {
    let mut s = s.clone();
    if !name.starts_with("help") {
        s.add_filter(r"(\S)  +", "$1  ");
    }
    s.bind(|| insta::assert_snapshot!(name, shown(out)));
}

#[test]
fn help_of_the_main_commands() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path()));
    let commands: &[&[&str]] = &[
        &["--help"],
        &["deploy", "--help"],
        &["launch", "--help"],
        &["machine", "--help"],
        &["machine", "update", "--help"],
        &["machine", "leases", "--help"],
        &["config", "--help"],
        &["checks", "list", "--help"],
        &["apps", "--help"],
        &["doctor", "--help"],
    ];
    for args in commands {
        let name = format!("help_{}", args[..args.len() - 1].join("_"));
        let name = if name == "help_" { "help".into() } else { name };
        snap(&s, &name, &offline(dir.path(), args));
    }
}

#[test]
fn config_validate_show_and_env_read_the_file_here() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path()));
    std::fs::write(
        dir.path().join("fly.toml"),
        "app = \"web\"\nprimary_regoin = \"ams\"\n\n[env]\n  LOG_LEVEL = \"debug\"\n\n\
         [http_service]\n  internal_port = 8080\n  force_https = true\n",
    )
    .unwrap();
    snap(
        &s,
        "config_validate_warnings",
        &offline(dir.path(), &["config", "validate"]),
    );
    snap(&s, "config_show", &offline(dir.path(), &["config", "show"]));
    snap(
        &s,
        "config_env_json",
        &offline(dir.path(), &["config", "env", "--json"]),
    );
    std::fs::write(
        dir.path().join("broken.toml"),
        "app = \"web\"\nkill_timeout = \"forever\"\n\n[http_service]\n  internal_port = 99999\n",
    )
    .unwrap();
    snap(
        &s,
        "config_validate_errors",
        &offline(dir.path(), &["config", "validate", "-c", "broken.toml"]),
    );
}

#[test]
fn errors_say_what_to_do_next() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path()));
    let server = Server::start(bin()).unwrap();
    let run = |args: &[&str]| server.cli_in(dir.path(), args);
    snap(
        &s,
        "error_missing_app",
        &run(&["machine", "list", "--app", "nope"]),
    );
    snap(&s, "error_no_app_given", &run(&["status"]));
    snap(&s, "error_deploy_without_config", &run(&["deploy"]));
    snap(
        &s,
        "error_bad_wait_state",
        &run(&[
            "machine",
            "wait",
            "0123456789abcd",
            "--app",
            "x",
            "--state",
            "gone",
        ]),
    );
    snap(
        &s,
        "error_config_file_missing",
        &run(&["deploy", "-c", "none.toml"]),
    );
    std::fs::write(
        dir.path().join("web.toml"),
        "app = \"web\"\nprimary_region = \"ams\"\n",
    )
    .unwrap();
    snap(
        &s,
        "error_bad_env_flag",
        &run(&["deploy", "-c", "web.toml", "--env", "JUSTNAME"]),
    );
    snap(
        &s,
        "error_refused_token",
        &server.cli_as("wrong", &["apps", "list"]),
    );
    // A port nothing listens on: bound, then freed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = std::process::Command::new(bin())
        .args(["apps", "list"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .env("ALOFT_API_URL", &url)
        .env("ALOFT_API_TOKEN", &server.token)
        .output()
        .unwrap();
    snap(&s, "error_no_control_plane", &out);
}

#[test]
fn lists_and_doctor_without_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path()));
    let server = Server::start(bin()).unwrap();
    let run = |args: &[&str]| server.cli_in(dir.path(), args);
    ok(run(&["apps", "create", "web"]));
    ok(run(&["apps", "create", "api"]));
    ok(run(&[
        "secrets",
        "set",
        "DB_URL=postgres://x",
        "--app",
        "web",
        "--stage",
    ]));
    snap(&s, "apps_list", &run(&["apps", "list"]));
    snap(&s, "apps_list_json", &run(&["apps", "list", "--json"]));
    snap(
        &s,
        "secrets_list",
        &run(&["secrets", "list", "--app", "web"]),
    );
    snap(
        &s,
        "secrets_list_json",
        &run(&["secrets", "list", "--app", "web", "--json"]),
    );
    snap(&s, "releases_none", &run(&["releases", "--app", "web"]));
    snap(&s, "regions_none", &run(&["regions", "list"]));
    snap(
        &s,
        "machine_list_none",
        &run(&["machine", "list", "--app", "web"]),
    );
    snap(&s, "doctor_no_hosts", &run(&["doctor", "--app", "web"]));
}

/// A busybox image serving a page on 8080, pushed as `web/busybox:1`.
fn pushed_image(server: &Server, dir: &Path) -> String {
    let layout = dir.join("layout");
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
    image
}

#[test]
fn machine_lists_checks_leases_and_a_failed_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(Some(dir.path()));
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();
    let image = pushed_image(&server, dir.path());
    let app_dir = dir.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let run = |args: &[&str]| server.cli_in(&app_dir, args);
    ok(run(&["apps", "create", "web"]));
    // A top-level check that passes once httpd answers.
    std::fs::write(
        app_dir.join("aloft.toml"),
        format!(
            "app = \"web\"\nprimary_region = \"ams\"\n\n[build]\n  image = \"{image}\"\n\n\
             [http_service]\n  internal_port = 8080\n\n\
             [checks.alive]\n  type = \"tcp\"\n  port = 8080\n  interval = \"1s\"\n  \
             timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let out = run(&["deploy"]);
    assert!(out.status.success(), "{}", shown(&out));
    snap(&s, "deploy_first", &out);
    let id = wait_for(
        "the machine's check passes",
        Duration::from_secs(30),
        || {
            let list = server.machine_list("web", false);
            let m = list.first()?;
            let passing = m["checks"]
                .as_array()?
                .iter()
                .any(|c| c["status"] == "passing");
            passing.then(|| m["id"].as_str().unwrap().to_owned())
        },
    )
    .unwrap();
    snap(&s, "machine_list", &run(&["machine", "list"]));
    snap(&s, "machine_list_quiet", &run(&["machine", "list", "-q"]));
    snap(&s, "checks_list", &run(&["checks", "list"]));
    snap(&s, "checks_list_json", &run(&["checks", "list", "--json"]));
    snap(&s, "leases_none", &run(&["machine", "leases", "view"]));
    snap(&s, "machine_cordon", &run(&["machine", "cordon", &id]));
    snap(&s, "machine_uncordon", &run(&["machine", "uncordon", &id]));
    snap(
        &s,
        "machine_update_nothing",
        &run(&["machine", "update", &id]),
    );
    snap(&s, "releases", &run(&["releases"]));
    snap(&s, "status", &run(&["status"]));

    // An image whose entrypoint says why it gives up, then exits 1.
    let bad = dir.path().join("bad");
    busybox_layout(
        &bad,
        "1",
        "never served\n",
        &["/bin/sh", "-c", "echo cannot open the database; exit 1"],
    )
    .unwrap();
    let out = run(&["deploy", "--image", &format!("{}:1", bad.display())]);
    assert!(!out.status.success(), "{}", shown(&out));
    // How far the rollout's own lines get depends on when the machine exits, and how many
    // runs its logs hold on whether its restart policy started it again meanwhile; the error
    // around them does not.
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("\n    cannot open the database\n"), "{err}");
    let mut s = s.clone();
    s.add_filter(r"(?m)(^    [^\n]*\n)+", "    [LOG LINES]\n");
    s.bind(|| {
        insta::assert_snapshot!(
            "deploy_failed_machine",
            String::from_utf8_lossy(&out.stderr)
        )
    });
}
