//! End-to-end: `aloft dev --single` brings up the whole platform in one process and the demo
//! app answers at the URL it prints. (The multi-region topology is tested in `regions.rs`.)

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn aloft_dev_prints_a_url_that_answers_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_aloft"));
    let http = free_port();
    let run = || {
        Command::new(bin)
            .args(["dev", "--single", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--http"])
            .arg(format!("127.0.0.1:{http}"))
            .args(["--https", "127.0.0.1:0"])
            .arg("--exit-when-ready")
            .stdin(Stdio::null())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let url = format!("http://hello.localhost:{http}");
    assert!(stdout.contains(&url), "{stdout}");
    assert!(stdout.trim_end().ends_with("stopped"), "{stdout}");

    // The data dir is reused: the same machine comes back, and while it runs it answers.
    let machine_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("machine"))
            .map(str::to_string)
    };
    let first = machine_line(&stdout).unwrap();
    let again = run();
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{stdout2}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        machine_line(&stdout2).unwrap().split_whitespace().nth(1),
        first.split_whitespace().nth(1)
    );
}

#[test]
fn the_demo_answers_through_the_edge_with_platform_headers() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_aloft"));
    let http = free_port();
    let mut child = Command::new(bin)
        .args(["dev", "--single", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http"])
        .arg(format!("127.0.0.1:{http}"))
        .args(["--https", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Try:") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "aloft dev ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(
        s,
        "GET /json HTTP/1.1\r\nhost: hello.localhost:{http}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("fly-request-id:"),
        "{answer}"
    );
    assert!(
        answer.contains("\"app\":\"hello\"") && answer.contains("\"region\":\"ams\""),
        "{answer}"
    );
    assert!(status.success(), "Ctrl-C ends aloft dev cleanly");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
