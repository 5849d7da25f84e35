//! The exec socket: one JSON request line in, one JSON response line out per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aloft_init::protocol::{
    ExecRequest, ExecResponse, InitRequest, RunConfig, SignalResponse, EXEC_OUTPUT_MAX_BYTES,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::children::Children;
use crate::logs::LogSink;

/// Largest request line accepted (stdin travels inside it, base64).
const MAX_REQUEST: u64 = 64 * 1024 * 1024;
/// How long output readers may lag behind the command's exit (background children holding
/// the pipes) before the answer is sent with what was read.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

pub struct Server {
    pub config: Arc<RunConfig>,
    pub children: Arc<Children>,
    pub log: Arc<LogSink>,
}

impl Server {
    /// Bind the socket (replacing a stale one) and serve connections on their own threads.
    pub fn serve(self: Arc<Self>, path: &Path) -> std::io::Result<()> {
        // Bind under a temporary name and rename into place, so the socket only appears
        // once it is listening (a client never sees it refuse connections).
        let staging = path.with_extension("sock.tmp");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging)?;
        std::fs::rename(&staging, path)?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let server = Arc::clone(&self);
                std::thread::spawn(move || server.handle(stream));
            }
        });
        Ok(())
    }

    fn handle(&self, stream: UnixStream) {
        let mut line = String::new();
        let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let answer = match serde_json::from_str::<InitRequest>(&line) {
            Ok(InitRequest::Signal(req)) => serde_json::to_vec(&self.signal(req.signal)),
            Ok(InitRequest::Exec(req)) => serde_json::to_vec(&self.exec(req)),
            Err(e) => serde_json::to_vec(&SignalResponse {
                delivered: false,
                error: Some(format!("Bad request: {e}")),
            }),
        };
        if let Ok(mut bytes) = answer {
            bytes.push(b'\n');
            let _ = (&stream).write_all(&bytes);
        }
    }

    fn signal(&self, signal: i32) -> SignalResponse {
        let sig = match Signal::try_from(signal) {
            Ok(sig) => sig,
            Err(_) => {
                return SignalResponse {
                    delivered: false,
                    error: Some(format!("Unknown signal {signal}")),
                }
            }
        };
        let Some(pid) = self.children.main_pid() else {
            return SignalResponse {
                delivered: false,
                error: Some("Main process has exited".into()),
            };
        };
        self.log
            .init(&format!("delivering {sig} to the main process"));
        match killpg(Pid::from_raw(pid), sig) {
            Ok(()) => SignalResponse {
                delivered: true,
                error: None,
            },
            Err(e) => SignalResponse {
                delivered: false,
                error: Some(format!("Signal {sig} to process group {pid} failed: {e}")),
            },
        }
    }

    fn exec(&self, req: ExecRequest) -> ExecResponse {
        let failed = |msg: String| ExecResponse {
            exit_code: 127,
            stdout: Vec::new(),
            stderr: msg.into_bytes(),
            timed_out: false,
        };
        let Some(program) = req.cmd.first() else {
            return failed("aloft-init: empty command\n".into());
        };
        if !program_exists(program, &self.config.env) {
            return failed(format!("aloft-init: {program}: not found\n"));
        }
        let mut cmd = Command::new(program);
        cmd.args(&req.cmd[1..])
            .env_clear()
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .envs(&req.env)
            .current_dir(&self.config.cwd)
            .uid(self.config.uid)
            .gid(self.config.gid)
            .process_group(0)
            .stdin(if req.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match self.children.spawn(&mut cmd, false) {
            Ok(child) => child,
            Err(e) => return failed(format!("aloft-init: cannot run {program}: {e}\n")),
        };
        let pid = child.id() as i32;
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), req.stdin) {
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let (done_tx, done_rx) = mpsc::channel();
        let stdout = collect(child.stdout.take(), done_tx.clone());
        let stderr = collect(child.stderr.take(), done_tx);

        let deadline = Instant::now() + Duration::from_millis(req.timeout_ms);
        let mut timed_out = false;
        let ended = match self.children.wait_tracked(pid, Some(deadline)) {
            Some(ended) => ended,
            None => {
                timed_out = true;
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                self.children
                    .wait_tracked(pid, None)
                    .unwrap_or(crate::children::Ended {
                        code: 137,
                        signal: Some(9),
                    })
            }
        };
        if timed_out {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let drain_deadline = Instant::now() + DRAIN_GRACE;
        for _ in 0..2 {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        let take = |buf: Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner()))
        };
        ExecResponse {
            exit_code: ended.code,
            stdout: take(stdout),
            stderr: take(stderr),
            timed_out,
        }
    }
}

/// Read a pipe into a bounded buffer on its own thread (draining past the bound), and say
/// on `done` when it reaches EOF.
fn collect(
    pipe: Option<impl Read + Send + 'static>,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&buf);
    std::thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut buf = out.lock().unwrap_or_else(|e| e.into_inner());
                        let room = EXEC_OUTPUT_MAX_BYTES.saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        let _ = done.send(());
    });
    buf
}

/// Whether `program` names an existing file, directly or through the machine's `PATH`
/// (checked up front because a failed exec races with the reaper inside std's spawn).
fn program_exists(program: &str, env: &[(String, String)]) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .any(|dir| !dir.is_empty() && Path::new(dir).join(program).is_file())
}
