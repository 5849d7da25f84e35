//! End-to-end attacks on the files the agent keeps for machines, played by root inside a
//! machine against a real server and agent (runc, busybox): a socket or log replaced by a
//! link to another machine's or to a device, secrets looked for on the host's disk, a
//! machine filling its disk, and an image that unpacks to more than the host allows.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use aloft_testkit::{
    busybox_layout, ok, run, skopeo_push, stderr, stdout, wait_for, Agent, Server,
};
use serde_json::Value;

const SECRET: &str = "hostfiles-s3cret-7c1e9a";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

struct World {
    dir: tempfile::TempDir,
    server: Server,
    _agent: Agent,
    image: String,
}

impl World {
    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// The host directory of a machine's files shared with its init.
    fn machine_dir(&self, id: &str) -> PathBuf {
        self.agent_dir().join("machines/machines").join(id)
    }

    fn exec(&self, id: &str, script: &str) -> Output {
        self.server.cli(&[
            "machine", "exec", id, "--app", "web", "--", "sh", "-c", script,
        ])
    }

    fn run_machine(&self) -> String {
        let out = ok(self.server.cli(&[
            "machine",
            "run",
            &self.image,
            "--app",
            "web",
            "--region",
            "ams",
            "--json",
        ]));
        let m: Value = serde_json::from_str(&out).unwrap();
        let id = m["id"].as_str().unwrap().to_string();
        wait_for("machine started", Duration::from_secs(60), || {
            (self.server.machine_json("web", &id)["state"] == "started").then_some(())
        })
        .unwrap();
        id
    }
}

/// Runs `f` on a thread and fails if it has not returned within `limit`.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// Every regular file under `dir` holding `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[test]
fn root_in_a_machine_cannot_use_the_agents_host_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &[
            "--machine-disk-mb",
            "64",
            "--max-image-mb",
            "100",
            "--cpus",
            "16",
            "--memory-mb",
            "8192",
        ],
    )
    .unwrap();
    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hi\n",
        &[
            "/bin/sh",
            "-c",
            "echo log-of-$(hostname); while :; do sleep 1; done",
        ],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", "web"]));
    ok(server.cli(&[
        "secrets",
        "set",
        &format!("HOSTFILES_SECRET={SECRET}"),
        "--app",
        "web",
        "--stage",
    ]));
    let w = World {
        dir,
        server,
        _agent: agent,
        image,
    };
    let a = w.run_machine();
    let b = w.run_machine();

    secrets_reach_the_machine_but_not_the_host_disk(&w, &a);
    a_full_disk_fails_inside_the_machine_only(&w, &b);
    a_planted_socket_or_log_link_is_refused(&w, &a, &b);
    a_layer_bomb_is_refused(&w, &layout);
}

fn secrets_reach_the_machine_but_not_the_host_disk(w: &World, a: &str) {
    let out = ok(w.exec(a, "echo $HOSTFILES_SECRET"));
    assert_eq!(out.trim(), SECRET);
    let found = files_containing(&w.agent_dir(), SECRET.as_bytes());
    assert!(found.is_empty(), "the secret is on disk in {found:?}");
}

fn a_full_disk_fails_inside_the_machine_only(w: &World, b: &str) {
    let out = w.exec(b, "dd if=/dev/zero of=/big bs=1M count=200; echo rc=$?");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("No space left on device"), "{all}");
    assert!(!all.contains("rc=0"), "{all}");
    // The machine and the agent carry on: removing the file frees the machine's disk.
    ok(w.exec(b, "rm /big && echo x > /after"));
}

fn a_planted_socket_or_log_link_is_refused(w: &World, a: &str, b: &str) {
    ok(w.exec(b, "echo i-am-b > /tmp/who"));
    wait_for("b's log", Duration::from_secs(30), || {
        ok(w.server.cli(&["logs", "--app", "web", "--machine", b]))
            .contains("log-of-")
            .then_some(())
    })
    .unwrap();
    let b_dir = w.machine_dir(b);
    let b_socket = b_dir.join("disk/run/init.sock");
    let b_log = b_dir.join("disk/log/app.log");
    assert!(b_socket.exists() && b_log.exists(), "{}", b_dir.display());
    let plant = format!(
        "ln -sf {} /.aloft/run/init.sock && ln -sf {} /.aloft/log/app.log && ln -sf /dev/zero /.aloft/log/app.log.1",
        b_socket.display(),
        b_log.display()
    );
    ok(w.exec(a, &plant));

    // Exec into A does not reach B.
    let out = w.exec(a, "cat /tmp/who");
    assert!(!stdout(&out).contains("i-am-b"), "exec into A ran in B");
    assert!(!out.status.success(), "{}", stdout(&out));

    // A's logs are not B's, and a log linked to /dev/zero neither hangs nor floods.
    let server_url = w.server.url.clone();
    let token = w.server.token.clone();
    let a_id = a.to_string();
    let logs = within("logs of A", Duration::from_secs(60), move || {
        aloft_testkit::cli(
            bin(),
            &["logs", "--app", "web", "--machine", &a_id, "--json"],
            &[("ALOFT_API_URL", &server_url), ("ALOFT_API_TOKEN", &token)],
        )
    });
    let text = stdout(&logs);
    assert!(
        !text.contains(&format!("log-of-{b}")),
        "A's logs show B's: {text}"
    );
    assert!(text.len() < 1 << 20, "{} bytes of logs", text.len());

    // Stopping A does not stop B.
    ok(w.server.cli(&["machine", "stop", a, "--app", "web"]));
    wait_for("A stopped", Duration::from_secs(60), || {
        (w.server.machine_json("web", a)["state"] == "stopped").then_some(())
    })
    .unwrap();
    assert_eq!(w.server.machine_json("web", b)["state"], "started");
    assert_eq!(ok(w.exec(b, "cat /tmp/who")).trim(), "i-am-b");
}

fn a_layer_bomb_is_refused(w: &World, layout: &Path) {
    // 200 MiB of zeros: a few hundred KiB compressed, over the host's 100 MB limit.
    busybox_layout(layout, "bomb", "hi\n", &["/bin/sh", "-c", "sleep 1000"]).unwrap();
    let zeros = layout.with_extension("zeros");
    let file = std::fs::File::create(&zeros).unwrap();
    file.set_len(200 << 20).unwrap();
    drop(file);
    let image_ref = format!("{}:bomb", layout.display());
    run(
        "umoci",
        &[
            "insert",
            "--image",
            &image_ref,
            &zeros.to_string_lossy(),
            "/zeros",
        ],
    )
    .unwrap();
    let registry = w.server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/bomb:1");
    skopeo_push(layout, "bomb", &image, &w.server.token).unwrap();
    let free = |p: &Path| nix_free(p);
    let before = free(&w.agent_dir());
    let out = w
        .server
        .cli(&["machine", "run", &image, "--app", "web", "--region", "ams"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("too large"), "{err}");
    let lost = before.saturating_sub(free(&w.agent_dir()));
    assert!(
        lost < 150 << 20,
        "the bomb took {lost} bytes of the host's disk"
    );
}

/// Bytes available on the filesystem of `p`.
fn nix_free(p: &Path) -> u64 {
    let out = run("df", &["--output=avail", "-B1", &p.to_string_lossy()]).unwrap();
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
