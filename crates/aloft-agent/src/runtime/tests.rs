//! Tests against real runc with a busybox rootfs. They need root, runc and busybox-static.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aloft_init::protocol::LogRecord;

use super::*;

const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "id", "hostname", "env", "ls", "nc", "wget", "grep", "touch",
    "mount", "unshare", "true", "false", "kill", "ps", "rm", "mkdir", "insmod", "test", "pidof",
    "dd", "ln",
];

/// The static `aloft-init` binary: `$ALOFT_INIT_BINARY`, or built once for musl (falling
/// back to a static glibc build) in its own target dir so it never waits on this build.
fn init_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("ALOFT_INIT_BINARY") {
            return PathBuf::from(path);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target_dir = workspace.join("target/aloft-init-static");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for (target, rustflags) in [
            ("x86_64-unknown-linux-musl", ""),
            ("x86_64-unknown-linux-gnu", "-C target-feature=+crt-static"),
        ] {
            let status = Command::new(&cargo)
                .current_dir(&workspace)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "aloft-init",
                    "--bin",
                    "aloft-init",
                    "--target",
                    target,
                ])
                .arg("--target-dir")
                .arg(&target_dir)
                .env("RUSTFLAGS", rustflags)
                .status()
                .expect("cargo runs");
            if status.success() {
                return target_dir.join(target).join("debug/aloft-init");
            }
        }
        panic!("cannot build a static aloft-init");
    })
    .clone()
}

/// A one-layer busybox rootfs with an unprivileged `app` user (uid 1000).
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root"] {
        std::fs::create_dir_all(layer.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(layer.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    let mut perms = std::fs::metadata(layer.join("tmp")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o1777);
    std::fs::set_permissions(layer.join("tmp"), perms).unwrap();
    layer
}

/// A driver over a temporary root; on drop, deletes every container and unmounts every
/// rootfs it made, even when the test failed.
struct Fixture {
    driver: SandboxDriver,
    layer: PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layer = busybox_layer(dir.path());
        let driver =
            SandboxDriver::new(SandboxOptions::new(dir.path().join("root"), init_binary()));
        Self { driver, layer, dir }
    }

    fn spec(&self, name: &str, script: &str) -> SandboxSpec {
        let id = format!("t{}-{name}", std::process::id());
        SandboxSpec {
            hostname: id.clone(),
            id,
            layers: vec![self.layer.clone()],
            persist_rootfs: false,
            process: ProcessSpec {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    script.into(),
                    "arg0".into(),
                    "first arg".into(),
                ],
                env: vec![("GREETING".into(), "hello there".into())],
                cwd: "/".into(),
                user: String::new(),
            },
            cpus: 1,
            memory_mb: 64,
            netns_path: None,
            hosts_file: "127.0.0.1 localhost\n".into(),
            resolv_conf: "nameserver 127.0.0.53\n".into(),
            stop_signal: libc::SIGTERM,
            kill_timeout: Duration::from_secs(5),
            mounts: Vec::new(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let runc_root = self.dir.path().join("root/runc");
        for id in self.driver.list() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .output();
            let paths = self.driver.paths(&id);
            let _ = rootfs::unmount(&paths.rootfs);
            userns::unmount_layers(&paths);
            let _ = rootfs::unmount(&paths.disk);
        }
        let _ = std::fs::remove_dir_all(&self.driver.options.secrets_dir);
    }
}

fn log_lines(driver: &SandboxDriver, id: &str) -> Vec<LogRecord> {
    std::fs::read_to_string(driver.logs(id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exec(driver: &SandboxDriver, id: &str, cmd: &[&str]) -> ExecOutput {
    driver
        .exec(
            id,
            &ExecRequest {
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                stdin: None,
                timeout: Duration::from_secs(10),
                env: Vec::new(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", log_lines(driver, id)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An app that handles SIGUSR1 by exiting 0; it logs `ready` once the trap is set.
const IDLE: &str =
    "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 1 & wait $!; done";

async fn wait_ready(driver: &SandboxDriver, id: &str) {
    wait_for("the app to log ready", || {
        log_lines(driver, id).iter().any(|r| r.line == "ready")
    })
    .await;
}

#[tokio::test]
async fn output_env_args_and_exit_code_reach_the_host() {
    let fx = Fixture::new();
    let spec = fx.spec(
        "exit",
        r#"echo "args=$0|$1"; echo "greeting=$GREETING"; echo oops >&2; exit 3"#,
    );
    fx.driver.start(&spec).await.unwrap();
    let exit = fx.driver.wait_exit(&spec.id).await.unwrap();
    assert_eq!(
        exit,
        ExitStatus {
            exit_code: Some(3),
            signal: None
        }
    );
    let lines: Vec<(String, String)> = log_lines(&fx.driver, &spec.id)
        .into_iter()
        .filter(|r| r.stream != "init")
        .map(|r| (r.stream, r.line))
        .collect();
    assert!(
        lines.contains(&("stdout".into(), "args=arg0|first arg".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "greeting=hello there".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "oops".into())),
        "{lines:?}"
    );
    let state = fx.driver.state(&spec.id).await.unwrap().unwrap();
    assert_eq!(
        (state.status, state.exit_code),
        (RuntimeStatus::Stopped, Some(3))
    );
    // A machine that ended on its own can be started again.
    fx.driver.start(&spec).await.unwrap();
    assert_eq!(
        fx.driver.wait_exit(&spec.id).await.unwrap().exit_code,
        Some(3)
    );
    fx.driver.destroy(&spec.id).await.unwrap();
    assert!(fx.driver.state(&spec.id).await.unwrap().is_none());
}

#[tokio::test]
async fn stop_delivers_the_configured_signal() {
    let fx = Fixture::new();
    let spec = fx.spec("stopsig", IDLE);
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    let exit = fx
        .driver
        .stop(&spec.id, libc::SIGUSR1, Duration::from_secs(10))
        .await
        .unwrap();
    let lines = log_lines(&fx.driver, &spec.id);
    assert_eq!(
        exit,
        ExitStatus {
            exit_code: Some(0),
            signal: None
        },
        "{lines:?}"
    );
    assert!(lines.iter().any(|r| r.line == "got-usr1"), "{lines:?}");
    assert!(!rootfs::is_mounted(&fx.driver.paths(&spec.id).rootfs));
    assert_eq!(
        fx.driver.state(&spec.id).await.unwrap().unwrap().status,
        RuntimeStatus::Stopped
    );
}

#[tokio::test]
async fn stop_kills_a_machine_that_ignores_its_signal() {
    let fx = Fixture::new();
    let spec = fx.spec(
        "stopkill",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    );
    fx.driver.start(&spec).await.unwrap();
    // The signal must not arrive before the app ignores it.
    wait_ready(&fx.driver, &spec.id).await;
    let exit = fx
        .driver
        .stop(&spec.id, libc::SIGTERM, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert_eq!(
        fx.driver.state(&spec.id).await.unwrap().unwrap().status,
        RuntimeStatus::Stopped
    );
}

/// Host pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == format!("PPid:\t{pid}"))
        })
        .collect()
}

#[tokio::test]
async fn orphans_are_reaped_by_init() {
    let fx = Fixture::new();
    let spec = fx.spec("reap", IDLE);
    let started = fx.driver.start(&spec).await.unwrap();
    wait_for("the main process", || children_of(started.pid).len() == 1).await;
    let out = exec(
        &fx.driver,
        &spec.id,
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do (sleep 2 >/dev/null 2>&1 &); done",
        ],
    )
    .await;
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    // The orphans are re-parented to init, then must disappear entirely (not linger as
    // zombies) once they exit.
    wait_for("orphans under init", || children_of(started.pid).len() >= 6).await;
    wait_for("orphans reaped", || children_of(started.pid).len() == 1).await;
    fx.driver.destroy(&spec.id).await.unwrap();
}

#[tokio::test]
async fn exec_returns_output_feeds_stdin_and_times_out() {
    let fx = Fixture::new();
    let spec = fx.spec("exec", IDLE);
    fx.driver.start(&spec).await.unwrap();
    let out = exec(
        &fx.driver,
        &spec.id,
        &["sh", "-c", "echo out; echo err >&2; exit 4"],
    )
    .await;
    assert_eq!(
        (out.exit_code, text(&out.stdout), text(&out.stderr)),
        (4, "out\n".into(), "err\n".into())
    );
    assert!(!out.timed_out);

    let req = ExecRequest {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "cat; echo \"$EXTRA $GREETING\"".into(),
        ],
        stdin: Some(b"from stdin\n".to_vec()),
        timeout: Duration::from_secs(10),
        env: vec![("EXTRA".into(), "extra".into())],
    };
    let out = fx.driver.exec(&spec.id, &req).await.unwrap();
    assert_eq!(text(&out.stdout), "from stdin\nextra hello there\n");

    let req = ExecRequest {
        cmd: vec!["sleep".into(), "30".into()],
        stdin: None,
        timeout: Duration::from_millis(200),
        env: Vec::new(),
    };
    let out = fx.driver.exec(&spec.id, &req).await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 128 + libc::SIGKILL);

    let out = exec(&fx.driver, &spec.id, &["/no/such/program"]).await;
    assert_eq!(out.exit_code, 127);
    fx.driver.destroy(&spec.id).await.unwrap();
}

#[tokio::test]
async fn machine_is_confined() {
    let fx = Fixture::new();
    let spec = fx.spec("confined", IDLE);
    fx.driver.start(&spec).await.unwrap();
    let id = spec.id.as_str();

    assert_eq!(
        text(&exec(&fx.driver, id, &["hostname"]).await.stdout).trim(),
        id
    );
    let mount = exec(&fx.driver, id, &["mount", "-t", "tmpfs", "x", "/mnt"]).await;
    assert_ne!(mount.exit_code, 0, "mount succeeded");
    let userns = exec(&fx.driver, id, &["unshare", "-U", "true"]).await;
    assert_ne!(userns.exit_code, 0, "user namespace created");
    let insmod = exec(&fx.driver, id, &["insmod", "/bin/busybox"]).await;
    assert_ne!(insmod.exit_code, 0, "module load accepted");

    let status = text(
        &exec(&fx.driver, id, &["cat", "/proc/self/status"])
            .await
            .stdout,
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    // Docker's default capability set without NET_RAW and MKNOD, nothing more.
    assert!(
        status.lines().any(|l| l == "CapEff:\t00000000a00405fb"),
        "{status}"
    );

    assert_eq!(
        text(
            &exec(&fx.driver, id, &["cat", "/etc/resolv.conf"])
                .await
                .stdout
        ),
        spec.resolv_conf
    );
    assert_eq!(
        text(&exec(&fx.driver, id, &["cat", "/etc/hosts"]).await.stdout),
        spec.hosts_file
    );
    let ro = exec(&fx.driver, id, &["touch", "/etc/hosts"]).await;
    assert_ne!(ro.exit_code, 0, "/etc/hosts is writable");
    // A fresh network namespace has only loopback.
    let links = text(&exec(&fx.driver, id, &["cat", "/proc/net/dev"]).await.stdout);
    assert_eq!(links.lines().skip(2).count(), 1, "{links}");

    let cgroup = |controller: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/aloft/{id}/{file}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        cgroup("memory", "memory.limit_in_bytes"),
        (spec.memory_mb * 1024 * 1024).to_string()
    );
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "100000");
    assert_eq!(cgroup("pids", "pids.max"), "4096");
    // The limit is enforced: a 128 MiB buffer in a 64 MiB machine is OOM-killed.
    let hog = exec(
        &fx.driver,
        id,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
    )
    .await;
    assert_eq!(hog.exit_code, 128 + libc::SIGKILL, "{}", text(&hog.stderr));
    let small = exec(
        &fx.driver,
        id,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"],
    )
    .await;
    assert_eq!(small.exit_code, 0, "{}", text(&small.stderr));
    fx.driver.destroy(&spec.id).await.unwrap();
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/aloft/{id}")).exists());
}

#[tokio::test]
async fn image_user_is_resolved_and_used() {
    let fx = Fixture::new();
    let mut spec = fx.spec("user", "echo \"uid=$(id -u) gid=$(id -g) home=$HOME\"");
    spec.process.user = "app".into();
    fx.driver.start(&spec).await.unwrap();
    assert_eq!(
        fx.driver.wait_exit(&spec.id).await.unwrap().exit_code,
        Some(0)
    );
    let lines = log_lines(&fx.driver, &spec.id);
    assert!(
        lines
            .iter()
            .any(|r| r.line == "uid=1000 gid=1000 home=/tmp"),
        "{lines:?}"
    );

    spec.process.user = "ghost".into();
    let err = fx.driver.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::User { .. }), "{err}");
    assert!(!rootfs::is_mounted(&fx.driver.paths(&spec.id).rootfs));
}

#[tokio::test]
async fn writable_layer_is_reset_on_stop_unless_persisted() {
    let fx = Fixture::new();
    for persist in [false, true] {
        let mut spec = fx.spec(&format!("upper-{persist}"), IDLE);
        spec.persist_rootfs = persist;
        fx.driver.start(&spec).await.unwrap();
        assert_eq!(
            exec(&fx.driver, &spec.id, &["touch", "/marker"])
                .await
                .exit_code,
            0
        );
        fx.driver
            .stop(&spec.id, libc::SIGUSR1, Duration::from_secs(10))
            .await
            .unwrap();
        fx.driver.start(&spec).await.unwrap();
        let found = exec(&fx.driver, &spec.id, &["ls", "/marker"])
            .await
            .exit_code
            == 0;
        assert_eq!(found, persist, "persist_rootfs={persist}");
        fx.driver.destroy(&spec.id).await.unwrap();
    }
    // The image layer itself is never written.
    assert!(!fx.layer.join("marker").exists());
}

#[tokio::test]
async fn a_killed_app_reports_its_signal_and_a_running_machine_refuses_a_second_start() {
    let fx = Fixture::new();
    let spec = fx.spec("signalled", "echo ready; sleep 30 & wait $!; kill -9 $$");
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    let err = fx.driver.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::AlreadyRunning(_)), "{err}");
    // The first machine is untouched by the refused start.
    assert_eq!(
        text(
            &exec(&fx.driver, &spec.id, &["echo", "still here"])
                .await
                .stdout
        ),
        "still here\n"
    );
    // This ends the machine, so the exec may lose its answer: only its effect matters.
    let ends = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), "kill $(pidof sleep)".into()],
        stdin: None,
        timeout: Duration::from_secs(10),
        env: Vec::new(),
    };
    let _ = fx.driver.exec(&spec.id, &ends).await;
    let exit = fx.driver.wait_exit(&spec.id).await.unwrap();
    assert_eq!(
        exit,
        ExitStatus {
            exit_code: Some(128 + libc::SIGKILL),
            signal: Some(libc::SIGKILL)
        }
    );
    // Stopping a machine that already ended returns the recorded status.
    let again = fx
        .driver
        .stop(&spec.id, libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again, exit);
}

/// A network namespace made with `ip netns`, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn machine_joins_the_given_netns_and_sees_its_volume() {
    let fx = Fixture::new();
    let netns = Netns(format!("aloft-rt-{}", std::process::id()));
    let made = Command::new("ip")
        .args(["netns", "add", &netns.0])
        .status()
        .unwrap();
    assert!(made.success());
    let veth = Command::new("ip")
        .args([
            "-n", &netns.0, "link", "add", "mach0", "type", "veth", "peer", "name", "peer0",
        ])
        .status()
        .unwrap();
    assert!(veth.success());
    let volume = fx.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("seed"), "from host").unwrap();

    let mut spec = fx.spec("netns", IDLE);
    spec.netns_path = Some(PathBuf::from(format!("/run/netns/{}", netns.0)));
    spec.mounts.push(BindMount {
        source: volume.clone(),
        destination: "/data".into(),
        read_only: false,
    });
    fx.driver.start(&spec).await.unwrap();
    let links = text(
        &exec(&fx.driver, &spec.id, &["cat", "/proc/net/dev"])
            .await
            .stdout,
    );
    assert!(links.contains("mach0:"), "{links}");
    let seen = exec(
        &fx.driver,
        &spec.id,
        &["sh", "-c", "cat /data/seed; echo hi > /data/out"],
    )
    .await;
    assert_eq!(text(&seen.stdout), "from host");
    assert_eq!(std::fs::read_to_string(volume.join("out")).unwrap(), "hi\n");
    fx.driver.destroy(&spec.id).await.unwrap();
    // The volume is the caller's: destroy leaves it alone.
    assert!(volume.join("out").exists());
}

#[tokio::test]
async fn a_paused_machine_still_stops() {
    let fx = Fixture::new();
    let spec = fx.spec("paused", IDLE);
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    fx.driver.runc.pause(&spec.id).await.unwrap();
    assert_eq!(
        fx.driver.state(&spec.id).await.unwrap().unwrap().status,
        RuntimeStatus::Paused
    );
    let exit = fx
        .driver
        .stop(&spec.id, libc::SIGUSR1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit.exit_code, Some(0));
}

const HELPER_ROOT: &str = "ALOFT_TEST_HELPER_ROOT";

/// Run by `machine_outlives_its_supervisor` in a child process: start a machine, say so,
/// then wait to be killed.
#[tokio::test]
#[ignore = "helper process for machine_outlives_its_supervisor"]
async fn helper_start_machine() {
    let Ok(root) = std::env::var(HELPER_ROOT) else {
        return;
    };
    let root = PathBuf::from(root);
    let layer = PathBuf::from(std::env::var("ALOFT_TEST_HELPER_LAYER").unwrap());
    let id = std::env::var("ALOFT_TEST_HELPER_ID").unwrap();
    let driver = SandboxDriver::new(SandboxOptions::new(&root, init_binary()));
    let fx_spec = SandboxSpec {
        hostname: id.clone(),
        id: id.clone(),
        layers: vec![layer],
        persist_rootfs: false,
        process: ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), IDLE.into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
        },
        cpus: 1,
        memory_mb: 64,
        netns_path: None,
        hosts_file: String::new(),
        resolv_conf: String::new(),
        stop_signal: libc::SIGTERM,
        kill_timeout: Duration::from_secs(5),
        mounts: Vec::new(),
    };
    driver.start(&fx_spec).await.unwrap();
    std::fs::write(root.join("helper-started"), b"").unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test]
async fn machine_outlives_its_supervisor_and_is_adopted() {
    let fx = Fixture::new();
    let root = fx.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let id = fx.spec("adopt", IDLE).id;
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "runtime::tests::helper_start_machine",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ROOT, &root)
        .env("ALOFT_TEST_HELPER_LAYER", &fx.layer)
        .env("ALOFT_TEST_HELPER_ID", &id)
        .env("ALOFT_INIT_BINARY", init_binary())
        .spawn()
        .unwrap();
    let started = root.join("helper-started");
    wait_for("the helper to start a machine", || started.exists()).await;
    let helper_pid = helper.id();
    helper.kill().unwrap();
    helper.wait().unwrap();

    // A new driver over the same root adopts the machine.
    let driver = SandboxDriver::new(SandboxOptions::new(&root, init_binary()));
    assert_eq!(driver.list(), vec![id.clone()]);
    let state = driver.state(&id).await.unwrap().unwrap();
    assert_eq!(state.status, RuntimeStatus::Running);
    let pid = state.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(!status.lines().any(|l| l == format!("PPid:\t{helper_pid}")));
    assert_eq!(
        text(&exec(&driver, &id, &["echo", "alive"]).await.stdout),
        "alive\n"
    );
    let exit = driver
        .stop(&id, libc::SIGUSR1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit.exit_code, Some(0));
}

#[tokio::test]
async fn bad_input_is_refused_before_touching_the_host() {
    let fx = Fixture::new();
    let mut spec = fx.spec("bad", IDLE);
    spec.id = "../escape".into();
    assert!(matches!(
        fx.driver.start(&spec).await,
        Err(RuntimeError::InvalidId(_))
    ));
    let mut spec = fx.spec("nolayers", IDLE);
    spec.layers.clear();
    assert!(matches!(
        fx.driver.start(&spec).await,
        Err(RuntimeError::NoLayers)
    ));
    assert!(matches!(
        fx.driver.stop("missing", 15, Duration::ZERO).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(fx.driver.state("missing").await.unwrap().is_none());
}

/// Benchmark run by `bench/sandbox-start.sh`: start and stop `ALOFT_BENCH_MACHINES` machines
/// (default 20) running `/bin/true` with the driver, then `runc run` the same bundle as many
/// times, and print both totals and their ratio.
/// A small tmpfs mounted over the driver's root of `fx`; on drop it first deletes the
/// machines on it and unmounts their rootfs, then unmounts itself, even when the test failed.
struct FullDisk<'a> {
    fx: &'a Fixture,
    mount: PathBuf,
}

impl<'a> FullDisk<'a> {
    fn mount(fx: &'a Fixture, size: &str) -> Self {
        let mount = fx.dir.path().join("root");
        std::fs::create_dir_all(&mount).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", mount.display());
        Self { fx, mount }
    }

    /// Writes a file until the filesystem refuses more.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.mount.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Whatever a partial chunk left: nothing more fits.
        while f.write(&chunk[..1]).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for FullDisk<'_> {
    fn drop(&mut self) {
        let runc_root = self.mount.join("runc");
        for id in self.fx.driver.list() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .output();
            let _ = rootfs::unmount(&self.fx.driver.paths(&id).rootfs);
        }
        let _ = rootfs::unmount(&self.mount);
    }
}

#[tokio::test]
async fn a_full_disk_fails_a_start_cleanly_and_spares_running_machines() {
    let fx = Fixture::new();
    let disk = FullDisk::mount(&fx, "16m");
    let neighbour = fx.spec("disk-neighbour", IDLE);
    fx.driver.start(&neighbour).await.unwrap();
    wait_ready(&fx.driver, &neighbour.id).await;

    let filler = disk.fill();
    let spec = fx.spec("disk-full", IDLE);
    let err = fx.driver.start(&spec).await.unwrap_err();
    let RuntimeError::DiskFull { path, .. } = &err else {
        panic!("not reported as a full disk: {err}");
    };
    assert!(path.starts_with(&disk.mount), "{err}");
    assert!(err.to_string().starts_with("Disk full"), "{err}");

    // Nothing of the failed start is left: no container, no mount, no generated files.
    let paths = fx.driver.paths(&spec.id);
    assert!(!rootfs::is_mounted(&paths.rootfs));
    assert_eq!(
        fx.driver
            .runc
            .state(&spec.id)
            .await
            .unwrap()
            .map(|s| s.status),
        None
    );
    for file in bundle_files(&paths) {
        assert!(!file.exists(), "{} left behind", file.display());
    }
    assert!(is_empty_dir(&paths.upper));

    // The running neighbour is untouched and still serves exec.
    let out = exec(&fx.driver, &neighbour.id, &["echo", "still here"]).await;
    assert_eq!(text(&out.stdout), "still here\n");

    // With space again the same machine starts.
    std::fs::remove_file(filler).unwrap();
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    for id in [&spec.id, &neighbour.id] {
        fx.driver
            .stop(id, libc::SIGUSR1, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "benchmark, run by bench/sandbox-start.sh"]
async fn bench_start_stop() {
    let n: usize = std::env::var("ALOFT_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let fx = Fixture::new();
    let specs: Vec<SandboxSpec> = (0..n)
        .map(|i| {
            let mut spec = fx.spec(&format!("bench{i}"), "");
            spec.process.args = vec!["/bin/true".into()];
            spec
        })
        .collect();
    let began = Instant::now();
    let mut phases = [Duration::ZERO; 3];
    for spec in &specs {
        let t = Instant::now();
        fx.driver.start(spec).await.unwrap();
        phases[0] += t.elapsed();
        let t = Instant::now();
        let exit = fx.driver.wait_exit(&spec.id).await.unwrap();
        assert_eq!(exit.exit_code, Some(0));
        phases[1] += t.elapsed();
        let t = Instant::now();
        fx.driver
            .stop(&spec.id, libc::SIGTERM, Duration::from_secs(5))
            .await
            .unwrap();
        phases[2] += t.elapsed();
    }
    let driver_total = began.elapsed();

    // The same bundle (machine 0's, rootfs mounted again) under plain `runc run`.
    let paths = fx.driver.paths(&specs[0].id);
    give_to_machine_root(&fx, &specs[0], &paths);
    rootfs::mount_overlay(
        &machine_layers(&paths, &specs[0]),
        &paths.upper,
        &paths.work,
        &paths.rootfs,
    )
    .unwrap();
    let runc_root = fx.dir.path().join("bench-runc");
    let began = Instant::now();
    for i in 0..n {
        let status = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["run", "--bundle"])
            .arg(&paths.bundle)
            .arg(format!("bench-run-{}-{i}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let runc_total = began.elapsed();
    rootfs::unmount(&paths.rootfs).unwrap();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    println!("machines: {n}");
    println!(
        "aloft sandbox driver (start + wait exit + stop): {:.0} ms total, {:.1} ms per machine",
        driver_total.as_secs_f64() * 1000.0,
        per(driver_total)
    );
    println!(
        "  of which start {:.1} ms, wait exit {:.1} ms, stop {:.1} ms per machine",
        per(phases[0]),
        per(phases[1]),
        per(phases[2])
    );
    println!(
        "runc run (same bundle):                         {:.0} ms total, {:.1} ms per machine",
        runc_total.as_secs_f64() * 1000.0,
        per(runc_total)
    );
    println!(
        "ratio driver / runc run: {:.2}",
        driver_total.as_secs_f64() / runc_total.as_secs_f64()
    );
}

/// Hands the stopped machine's writable layer (emptied by its stop) to its root, as a start
/// does, so that its bundle runs under plain runc.
fn give_to_machine_root(fx: &Fixture, spec: &SandboxSpec, paths: &MachinePaths) {
    let root = fx.dir.path().join("root");
    let opts = userns::UsernsOptions::default();
    let range = userns::range(&opts, &root, &spec.id, paths).unwrap();
    userns::give(paths, range, &[]).unwrap();
}

/// The lower layers a started machine's overlay uses: its idmapped views when it has them.
fn machine_layers(paths: &MachinePaths, spec: &SandboxSpec) -> Vec<PathBuf> {
    let idmapped: Vec<PathBuf> = (0..spec.layers.len())
        .map(|i| paths.dir.join("layers").join(i.to_string()))
        .collect();
    if rootfs::all_mounted(&idmapped) {
        idmapped
    } else {
        spec.layers.clone()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Stopped → started of one machine by `driver`, `n` times; the start latencies, sorted.
async fn stopped_to_started(driver: &SandboxDriver, spec: &SandboxSpec, n: usize) -> Vec<Duration> {
    driver.start(spec).await.unwrap();
    driver
        .stop(&spec.id, libc::SIGKILL, Duration::from_secs(5))
        .await
        .unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        driver.start(spec).await.unwrap();
        times.push(t.elapsed());
        driver
            .stop(&spec.id, libc::SIGKILL, Duration::from_secs(5))
            .await
            .unwrap();
    }
    times.sort();
    times
}

#[tokio::test]
#[ignore = "benchmark, run by bench/sandbox/start.sh"]
async fn bench_stopped_to_started() {
    let n: usize = std::env::var("ALOFT_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let fx = Fixture::new();
    let netns = Netns(format!("aloft-bench-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &netns.0])
        .status()
        .unwrap()
        .success());
    let netns_path = PathBuf::from(format!("/run/netns/{}", netns.0));

    let mut hardened_spec = fx.spec("bench-hardened", IDLE);
    hardened_spec.netns_path = Some(netns_path.clone());
    let hardened = stopped_to_started(&fx.driver, &hardened_spec, n).await;

    // The same machine without a user namespace (seccomp, capabilities and mounts as above).
    let mut plain_opts = SandboxOptions::new(fx.dir.path().join("root-plain"), init_binary());
    plain_opts.userns = None;
    let plain_driver = SandboxDriver::new(plain_opts);
    let mut plain_spec = fx.spec("bench-plain", IDLE);
    plain_spec.netns_path = Some(netns_path.clone());
    let plain = stopped_to_started(&plain_driver, &plain_spec, n).await;
    plain_driver.destroy(&plain_spec.id).await.unwrap();

    // Raw `runc run --detach` of the hardened machine's own bundle and rootfs.
    let paths = fx.driver.paths(&hardened_spec.id);
    give_to_machine_root(&fx, &hardened_spec, &paths);
    rootfs::mount_overlay(
        &machine_layers(&paths, &hardened_spec),
        &paths.upper,
        &paths.work,
        &paths.rootfs,
    )
    .unwrap();
    userns::prepare_netns(&paths, &netns_path).unwrap();
    let runc_root = fx.dir.path().join("bench-runc");
    let mut raw = Vec::with_capacity(n);
    let mut raw_ready = Vec::with_capacity(n);
    let _ = std::fs::remove_file(paths.socket());
    for i in 0..n {
        let name = format!("bench-raw-{}-{i}", std::process::id());
        let t = Instant::now();
        let status = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["run", "--detach", "--bundle"])
            .arg(&paths.bundle)
            .arg(&name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        raw.push(t.elapsed());
        assert!(status.success());
        while !paths.socket().exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        raw_ready.push(t.elapsed());
        let _ = std::fs::remove_file(paths.socket());
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", &name])
            .status();
    }
    raw.sort();
    raw_ready.sort();
    userns::unmount_sys(&paths);
    rootfs::unmount(&paths.rootfs).unwrap();
    fx.driver.destroy(&hardened_spec.id).await.unwrap();

    println!("stopped -> started, {n} starts each (busybox rootfs, joined network namespace)");
    for (name, t) in [
        ("hardened sandbox (userns, seccomp allowlist)", &hardened),
        ("same without a user namespace", &plain),
        ("raw runc run --detach, same bundle", &raw),
        ("  the same until init serves its socket", &raw_ready),
    ] {
        println!(
            "{name:<46} p50 {:>6.1} ms   p99 {:>6.1} ms",
            percentile(t, 0.5),
            percentile(t, 0.99)
        );
    }
    println!(
        "ratio hardened / raw runc: p50 {:.2}  p99 {:.2}",
        percentile(&hardened, 0.5) / percentile(&raw, 0.5),
        percentile(&hardened, 0.99) / percentile(&raw, 0.99)
    );
    println!(
        "ratio hardened / raw runc until init serves: p50 {:.2}  p99 {:.2}",
        percentile(&hardened, 0.5) / percentile(&raw_ready, 0.5),
        percentile(&hardened, 0.99) / percentile(&raw_ready, 0.99)
    );
}

/// Root in a machine owns `/.aloft/run` and `/.aloft/log`: a link planted there must not
/// send the agent to another machine's socket or make it read a device.
#[tokio::test]
async fn a_machine_cannot_redirect_its_socket_or_log() {
    let fx = Fixture::new();
    let a = fx.spec("redir-a", IDLE);
    let b = fx.spec("redir-b", IDLE);
    fx.driver.start(&a).await.unwrap();
    fx.driver.start(&b).await.unwrap();
    wait_ready(&fx.driver, &a.id).await;
    wait_ready(&fx.driver, &b.id).await;
    let b_socket = fx.driver.paths(&b.id).socket();
    let plant = format!(
        "ln -sf {} /.aloft/run/init.sock && ln -sf /dev/zero /.aloft/log/app.log",
        b_socket.display()
    );
    let out = exec(&fx.driver, &a.id, &["sh", "-c", &plant]).await;
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));

    let req = ExecRequest {
        cmd: vec!["hostname".into()],
        stdin: None,
        timeout: Duration::from_secs(5),
        env: Vec::new(),
    };
    let err = fx.driver.exec(&a.id, &req).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Confined { .. }), "{err}");
    assert!(!fx
        .driver
        .signal(&a.id, libc::SIGUSR1)
        .await
        .is_ok_and(|d| d));
    let err = fx.driver.open_log(&a.id, false).unwrap_err();
    assert!(matches!(err, RuntimeError::Confined { .. }), "{err}");
    // B was never reached: still running, its log has no trace of a signal.
    assert_eq!(
        fx.driver.state(&b.id).await.unwrap().unwrap().status,
        RuntimeStatus::Running
    );
    assert!(!log_lines(&fx.driver, &b.id)
        .iter()
        .any(|r| r.line.contains("got-usr1")));

    // A socket of A's own making (not served by init) is refused by its peer's pid.
    let a_socket = fx.driver.paths(&a.id).socket();
    std::fs::remove_file(&a_socket).unwrap();
    let _fake = std::os::unix::net::UnixListener::bind(&a_socket).unwrap();
    let err = fx.driver.exec(&a.id, &req).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ForeignSocket { .. }), "{err}");

    fx.driver.destroy(&a.id).await.unwrap();
    fx.driver.destroy(&b.id).await.unwrap();
}

/// A machine's environment (its app's secrets) reaches the machine but no file under the
/// driver's data directory; the copy init reads is 0600 on tmpfs.
#[tokio::test]
async fn the_environment_is_never_written_to_disk() {
    use std::os::unix::fs::PermissionsExt as _;
    let fx = Fixture::new();
    let mut spec = fx.spec("noenv", IDLE);
    let secret = format!("s3cret-{}", std::process::id());
    spec.process.env.push(("TOKEN".into(), secret.clone()));
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    let paths = fx.driver.paths(&spec.id);
    let run = std::fs::metadata(&paths.run_config).unwrap();
    assert_eq!(run.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&paths.run_config)
        .unwrap()
        .contains(&secret));
    let mut stack = vec![fx.dir.path().join("root")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let ty = entry.file_type().unwrap();
            if ty.is_dir() && entry.path() != paths.rootfs {
                stack.push(entry.path());
            } else if ty.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{} holds the secret", entry.path().display());
            }
        }
    }
    fx.driver.destroy(&spec.id).await.unwrap();
    assert!(!paths.secrets.exists());
}

/// With a disk per machine, a machine that writes past it gets ENOSPC inside and the
/// host's filesystem is untouched; destroying the machine releases the disk.
#[tokio::test]
async fn a_machine_disk_is_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path());
    let mut opts = SandboxOptions::new(dir.path().join("root"), init_binary());
    opts.disk_mb = Some(32);
    let fx = Fixture {
        driver: SandboxDriver::new(opts),
        layer,
        dir,
    };
    let spec = fx.spec("disk", IDLE);
    fx.driver.start(&spec).await.unwrap();
    wait_ready(&fx.driver, &spec.id).await;
    let paths = fx.driver.paths(&spec.id);
    assert!(rootfs::is_mounted(&paths.disk));
    let host_free = |p: &Path| nix::sys::statvfs::statvfs(p).unwrap().blocks_available();
    let before = host_free(fx.dir.path());
    let out = exec(
        &fx.driver,
        &spec.id,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=64; echo rc=$?",
        ],
    )
    .await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("No space left on device"), "{all}");
    assert!(!all.contains("rc=0"), "{all}");
    // The log directory is on the machine's disk too.
    let out = exec(
        &fx.driver,
        &spec.id,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/.aloft/log/fill bs=1M count=64; echo rc=$?",
        ],
    )
    .await;
    assert!(!text(&out.stdout).contains("rc=0"), "{}", text(&out.stderr));
    // The sparse image took what was written, not 64 MiB of host disk twice over.
    let spent = before.saturating_sub(host_free(fx.dir.path()));
    let block = nix::sys::statvfs::statvfs(fx.dir.path())
        .unwrap()
        .fragment_size();
    assert!(
        spent * block < 40 << 20,
        "host lost {} bytes",
        spent * block
    );
    // Stop and start again: the disk stays, the writable layer is reset.
    fx.driver
        .stop(&spec.id, libc::SIGTERM, Duration::from_secs(5))
        .await
        .unwrap();
    fx.driver.start(&spec).await.unwrap();
    let out = exec(
        &fx.driver,
        &spec.id,
        &["sh", "-c", "test -e /big && echo kept"],
    )
    .await;
    assert!(!text(&out.stdout).contains("kept"));
    fx.driver.destroy(&spec.id).await.unwrap();
    assert!(!rootfs::is_mounted(&paths.disk));
    assert!(!paths.dir.exists());
}

/// Run by `bench/machine-disk.sh`: the start cost of a machine disk (`--machine-disk-mb`):
/// first starts (mkfs + loop mount), later starts (disk already mounted), and starts
/// without a disk, in one run.
#[tokio::test]
#[ignore = "benchmark, run by bench/machine-disk.sh"]
async fn bench_disk_starts() {
    let n: usize = std::env::var("ALOFT_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut results = Vec::new();
    for disk in [None, Some(1024)] {
        let dir = tempfile::tempdir().unwrap();
        let layer = busybox_layer(dir.path());
        let mut opts = SandboxOptions::new(dir.path().join("root"), init_binary());
        opts.disk_mb = disk;
        let fx = Fixture {
            driver: SandboxDriver::new(opts),
            layer,
            dir,
        };
        let specs: Vec<SandboxSpec> = (0..n)
            .map(|i| {
                let mut spec = fx.spec(&format!("disk{i}"), "");
                spec.process.args = vec!["/bin/true".into()];
                spec
            })
            .collect();
        for round in ["first", "again"] {
            let mut took = Vec::new();
            for spec in &specs {
                let t = Instant::now();
                fx.driver.start(spec).await.unwrap();
                took.push(t.elapsed());
                fx.driver.wait_exit(&spec.id).await.unwrap();
                fx.driver
                    .stop(&spec.id, libc::SIGTERM, Duration::from_secs(5))
                    .await
                    .unwrap();
            }
            took.sort();
            let p50 = took[took.len() / 2];
            let max = took[took.len() - 1];
            results.push(format!(
                "{:<9} {:<6} start p50 {:>7.1} ms  max {:>7.1} ms",
                disk.map_or("no disk".to_string(), |mb| format!("{mb} MB")),
                round,
                p50.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            ));
        }
        for spec in &specs {
            fx.driver.destroy(&spec.id).await.unwrap();
        }
    }
    for line in results {
        println!("{line}");
    }
}
