//! `aloft-init` run as an ordinary process (not PID 1): signal forwarding, exit codes, log
//! capture and the exec socket, against real shell programs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aloft_init::protocol::{
    ExecResponse, ExitRecord, LogRecord, RunConfig, EXIT_FILE, LOG_FILE, SOCKET_NAME,
};

struct Init {
    child: Child,
    dir: tempfile::TempDir,
}

impl Init {
    fn start(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["log", "run"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let mut config = RunConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
        config.env = vec![("NAME".into(), "world".into())];
        config.log_dir = dir.path().join("log").to_string_lossy().into_owned();
        config.run_dir = dir.path().join("run").to_string_lossy().into_owned();
        config.shutdown_grace_ms = 200;
        let config_path = dir.path().join("run.json");
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aloft-init"))
            .arg(&config_path)
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn log(&self) -> Vec<LogRecord> {
        std::fs::read_to_string(self.path("log").join(LOG_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_for_line(&self, line: &str) {
        wait_for(|| self.log().iter().any(|r| r.line == line));
    }

    fn request(&self, body: &str) -> String {
        let socket = self.path("run").join(SOCKET_NAME);
        wait_for(|| socket.exists());
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        answer
    }

    fn wait(mut self) -> (i32, ExitRecord, Vec<LogRecord>) {
        let code = self.child.wait().unwrap().code().unwrap();
        let record = serde_json::from_slice(
            &std::fs::read(Path::new(&self.path("log")).join(EXIT_FILE)).unwrap(),
        )
        .unwrap();
        let log = self.log();
        (code, record, log)
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn signals_sent_to_init_reach_the_app_and_its_exit_code_is_init_s() {
    let init = Init::start(
        "trap 'echo bye $NAME; exit 42' TERM; echo ready; while :; do sleep 1 & wait $!; done",
    );
    init.wait_for_line("ready");
    Command::new("kill")
        .args(["-TERM", &init.child.id().to_string()])
        .status()
        .unwrap();
    let (code, record, log) = init.wait();
    assert_eq!(code, 42);
    assert_eq!(record.exit_code, 42);
    assert_eq!(record.signal, None);
    assert!(
        log.iter()
            .any(|r| r.stream == "stdout" && r.line == "bye world"),
        "{log:?}"
    );
}

#[test]
fn an_app_killed_by_a_signal_is_reported_as_such() {
    let init = Init::start("echo ready; kill -KILL $$");
    let (code, record, _) = init.wait();
    assert_eq!(code, 128 + 9);
    assert_eq!(record.signal, Some(9));
}

#[test]
fn a_missing_program_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RunConfig::new(vec!["/no/such/app".into()]);
    config.log_dir = dir.path().to_string_lossy().into_owned();
    config.run_dir = dir.path().to_string_lossy().into_owned();
    let path = dir.path().join("run.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_aloft-init"))
        .arg(&path)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(127));
    let record: ExitRecord =
        serde_json::from_slice(&std::fs::read(dir.path().join(EXIT_FILE)).unwrap()).unwrap();
    assert_eq!(record.exit_code, 127);
}

#[test]
fn exec_and_signal_requests_are_served() {
    let init = Init::start("trap 'exit 0' USR2; echo ready; while :; do sleep 1 & wait $!; done");
    init.wait_for_line("ready");
    let answer = init.request(r#"{"cmd":["sh","-c","cat; echo $NAME $X >&2; exit 5"],"env":{"X":"y"},"stdin":"aGk=","timeout_ms":5000}"#);
    let resp: ExecResponse = serde_json::from_str(&answer).unwrap();
    assert_eq!(resp.exit_code, 5);
    assert_eq!(resp.stdout, b"hi");
    assert_eq!(resp.stderr, b"world y\n");
    assert!(!resp.timed_out);

    let bad = init.request("not json");
    assert!(bad.contains("Bad request"), "{bad}");

    let answer = init.request(r#"{"signal":12}"#);
    assert!(answer.contains(r#""delivered":true"#), "{answer}");
    let (code, _, _) = init.wait();
    assert_eq!(code, 0);
}

#[test]
fn leftover_processes_are_terminated_when_the_app_exits() {
    // The background process writes its pid where the test can find it.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut config = RunConfig::new(vec![
        "/bin/sh".into(),
        "-c".into(),
        "sleep 300 & echo $! > \"$PIDFILE\"; exit 0".into(),
    ]);
    config.env = vec![("PIDFILE".into(), pidfile.to_string_lossy().into_owned())];
    config.log_dir = dir.path().to_string_lossy().into_owned();
    config.run_dir = dir.path().to_string_lossy().into_owned();
    config.shutdown_grace_ms = 200;
    let path = dir.path().join("run.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_aloft-init"))
        .arg(&path)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived"
    );
}
