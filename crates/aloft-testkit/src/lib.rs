//! Test harness for end-to-end tests: starts the real `aloft` binary in its roles on port 0,
//! reads the address it bound from its output, and waits on conditions with deadlines.
//!
//! It never imitates an Aloft component: every process it starts is the real binary.
//! It must not be used by production code.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub mod app;
pub mod debian;
pub mod dev;
pub mod dns;
pub mod edge;

/// How long a role may take to print its ready line.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// What went wrong while driving a process under test.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{role} exited before it was ready; its output:\n{output}")]
    ExitedEarly { role: String, output: String },
    #[error(
        "{role} printed no line containing {marker:?} within {deadline:?}; its output:\n{output}"
    )]
    NotReady {
        role: String,
        marker: String,
        deadline: Duration,
        output: String,
    },
    #[error("aloft dev did not come up: {reason}\n--- its logs:\n{logs}")]
    DevNotReady { reason: String, logs: String },
    #[error("condition {what:?} did not hold within {deadline:?}")]
    Timeout { what: String, deadline: Duration },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running process of the `aloft` binary, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    role: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Spawns `bin args…` and waits until a line of its stdout or stderr contains `marker`.
    /// Returns the process and that line.
    pub fn spawn_until(
        role: &str,
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        marker: &str,
    ) -> Result<(Proc, String), HarnessError> {
        Proc::spawn(role, bin, args, envs, marker, true)
    }

    /// [`Proc::spawn_until`], reading only stdout (stderr is discarded): for commands whose
    /// stdout is their report and whose stderr is a log.
    pub fn spawn_stdout_until(
        role: &str,
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        marker: &str,
    ) -> Result<(Proc, String), HarnessError> {
        Proc::spawn(role, bin, args, envs, marker, false)
    }

    fn spawn(
        role: &str,
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        marker: &str,
        with_stderr: bool,
    ) -> Result<(Proc, String), HarnessError> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if with_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: bin.display().to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        forward(BufReader::new(stdout), tx.clone());
        if let Some(stderr) = child.stderr.take() {
            forward(BufReader::new(stderr), tx);
        }
        let mut proc = Proc {
            role: role.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
        };
        let line = proc.wait_line(marker, START_DEADLINE)?;
        Ok((proc, line))
    }

    /// Waits for a line containing `marker`, remembering everything printed on the way.
    pub fn wait_line(&mut self, marker: &str, deadline: Duration) -> Result<String, HarnessError> {
        self.wait_line_matching(marker, |line| line.contains(marker), deadline)
    }

    /// Waits for a line for which `want` holds (`what` names it in the error), remembering
    /// everything printed on the way.
    pub fn wait_line_matching(
        &mut self,
        what: &str,
        want: impl Fn(&str) -> bool,
        deadline: Duration,
    ) -> Result<String, HarnessError> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        self.drain();
                        return Err(HarnessError::ExitedEarly {
                            role: self.role.clone(),
                            output: self.output(),
                        });
                    }
                    if Instant::now() >= end {
                        return Err(HarnessError::NotReady {
                            role: self.role.clone(),
                            marker: what.to_string(),
                            deadline,
                            output: self.output(),
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return Err(HarnessError::ExitedEarly {
                        role: self.role.clone(),
                        output: self.output(),
                    });
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Everything the process printed so far.
    pub fn output(&mut self) -> String {
        self.drain();
        self.seen.join("\n")
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT (Ctrl-C), waits for the exit, and collects what it printed until its
    /// output closed (or stayed silent for 5 s). Returns everything it printed and whether
    /// it exited successfully.
    pub fn interrupt(&mut self) -> (String, bool) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
            .expect("the process under test can be signalled");
        let status = self
            .child
            .wait()
            .expect("the process under test is a child");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (self.seen.join("\n"), status.success())
    }

    /// Sends SIGTERM and waits up to `deadline` for a clean exit; returns whether it exited.
    pub fn terminate(&mut self, deadline: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn forward<R: BufRead + Send + 'static>(reader: R, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("ALOFT_TEST_ECHO").is_some() {
                eprintln!("{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// A control plane (`aloft server`) on 127.0.0.1:0 with its own data dir.
#[derive(Debug)]
pub struct Server {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub token: String,
    pub data_dir: PathBuf,
    bin: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on an empty data dir.
    pub fn start(bin: &Path) -> Result<Server, HarnessError> {
        Server::start_with(bin, &[])
    }

    /// Starts a server on an empty data dir with extra arguments.
    pub fn start_with(bin: &Path, extra: &[&str]) -> Result<Server, HarnessError> {
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Read {
            path: std::env::temp_dir(),
            source,
        })?;
        let data_dir = dir.path().join("server");
        let mut server = Server::start_in(bin, &data_dir, None, extra)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a server on `data_dir`, on `listen` or a fresh port.
    pub fn start_in(
        bin: &Path,
        data_dir: &Path,
        listen: Option<&str>,
        extra: &[&str],
    ) -> Result<Server, HarnessError> {
        let listen = listen.unwrap_or("127.0.0.1:0");
        let dir = data_dir.to_string_lossy().to_string();
        let mut args = vec!["server", "--listen", listen, "--data-dir", &dir];
        args.extend_from_slice(extra);
        let (proc, line) =
            Proc::spawn_until("aloft server", bin, &args, &[], "listening on http://")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_default()
            .to_string();
        let token_path = data_dir.join("admin-token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(|source| HarnessError::Read {
                path: token_path,
                source,
            })?
            .trim()
            .to_string();
        Ok(Server {
            proc,
            url,
            token,
            data_dir: data_dir.to_path_buf(),
            bin: bin.to_path_buf(),
            _dir: None,
        })
    }

    /// Kills the server with SIGKILL and starts it again on the same data dir and port.
    pub fn crash_and_restart(&mut self) -> Result<(), HarnessError> {
        self.proc.kill9();
        let listen = self.url.trim_start_matches("http://").to_string();
        let fresh = Server::start_in(&self.bin, &self.data_dir, Some(&listen), &[])?;
        self.proc = fresh.proc;
        self.token = fresh.token;
        Ok(())
    }

    /// Runs the CLI against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(
            &self.bin,
            args,
            &[
                ("ALOFT_API_URL", &self.url),
                ("ALOFT_API_TOKEN", &self.token),
            ],
        )
    }

    /// `aloft machine status ID --app APP --json`, parsed.
    pub fn machine_json(&self, app: &str, id: &str) -> serde_json::Value {
        let out = ok(self.cli(&["machine", "status", id, "--app", app, "--json"]));
        serde_json::from_str(&out).expect("machine status --json prints JSON")
    }

    /// Runs the CLI with another token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        cli(
            &self.bin,
            args,
            &[("ALOFT_API_URL", &self.url), ("ALOFT_API_TOKEN", token)],
        )
    }
}

/// Runs `bin args…` to completion with `envs` and a scratch HOME, and returns its output.
pub fn cli(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the aloft binary runs")
}

/// Asserts the CLI succeeded (showing both streams if not) and returns its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Text of a process's stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Text of a process's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `cond` every 20 ms until it returns `Some`, or fails after `deadline`.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T, HarnessError> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                deadline,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a program to completion, failing with its output when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::ExitedEarly {
            role: format!("{program} {}", args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds an OCI image layout at `layout` tagged `tag` with umoci: Debian's static busybox
/// as `/bin/busybox` plus applet links, a web root `/www/index.html` holding `page`, and
/// `entrypoint` as its entrypoint.
pub fn busybox_layout(
    layout: &Path,
    tag: &str,
    page: &str,
    entrypoint: &[&str],
) -> Result<(), HarnessError> {
    let work = layout.with_extension("rootfs");
    let _ = std::fs::remove_dir_all(&work);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Read { path, source }
    };
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    std::fs::create_dir_all(work.join("www")).map_err(io(&work))?;
    std::fs::create_dir_all(work.join("tmp")).map_err(io(&work))?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(io(Path::new("/bin/busybox")))?;
    for applet in [
        "sh", "sleep", "cat", "echo", "env", "id", "hostname", "httpd", "ls", "wget", "nc", "true",
        "false", "kill", "ps", "touch",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    std::fs::write(work.join("www/index.html"), page).map_err(io(&work))?;
    let image = format!("{}:{tag}", layout.display());
    let work_s = work.to_string_lossy().to_string();
    if !layout.join("index.json").exists() {
        run("umoci", &["init", "--layout", &layout.to_string_lossy()])?;
    }
    run("umoci", &["new", "--image", &image])?;
    run("umoci", &["insert", "--image", &image, &work_s, "/"])?;
    let mut args = vec![
        "config",
        "--image",
        &image,
        "--clear=config.entrypoint",
        "--clear=config.cmd",
    ];
    let entry: Vec<String> = entrypoint
        .iter()
        .map(|e| format!("--config.entrypoint={e}"))
        .collect();
    args.extend(entry.iter().map(String::as_str));
    run("umoci", &args)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Pushes an OCI layout tag to `dest` (`host:port/repo:tag`) over plain HTTP with skopeo,
/// authenticating with an Aloft token.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, token: &str) -> Result<(), HarnessError> {
    skopeo_copy(&format!("oci:{}:{tag}", layout.display()), dest, token)
}

/// `skopeo copy` of transport reference `src` into `dest` (`host:port/repo:tag`, plain HTTP),
/// authenticating with an Aloft token.
fn skopeo_copy(src: &str, dest: &str, token: &str) -> Result<(), HarnessError> {
    let dst = format!("docker://{dest}");
    let creds = format!("aloft:{token}");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            src,
            &dst,
        ],
    )
    .map(drop)
}

/// A host agent (`aloft agent`) joined to a server, with its own data dir.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub host_id: String,
    args: Vec<String>,
    bin: PathBuf,
}

impl Agent {
    /// Starts an agent for `region` with a fresh host id, and waits until it has joined.
    pub fn start(
        bin: &Path,
        server: &Server,
        region: &str,
        data_dir: &Path,
    ) -> Result<Agent, HarnessError> {
        Agent::start_with(bin, server, region, data_dir, &[])
    }

    /// [`Agent::start`] with more arguments, e.g. `["--cpus", "8"]`.
    pub fn start_with(
        bin: &Path,
        server: &Server,
        region: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent, HarnessError> {
        let host_id = format!(
            "t{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
        );
        Agent::spawn_joined(bin, server, &server.token, region, data_dir, host_id, extra)
    }

    /// Starts an agent for `region` that joins with a fresh join token (as real hosts do),
    /// as host `HOST_NAME<pid>` (host networks are named after it, so make `host_name` unique
    /// per test), and waits until it has joined. Its edge listens for HTTP on a free
    /// loopback port unless `extra` has an `--http` of its own.
    pub fn start_joining(
        bin: &Path,
        server: &Server,
        region: &str,
        data_dir: &Path,
        host_name: &str,
        extra: &[&str],
    ) -> Result<Agent, HarnessError> {
        let join = ok(server.cli(&["tokens", "create", "--join"]));
        let host_id = format!("{host_name}{}", std::process::id());
        Agent::spawn_joined(bin, server, join.trim(), region, data_dir, host_id, extra)
    }

    /// Starts an agent for `region` as host `host_id` that enrols with `token` (a join token
    /// from `aloft hosts join-token create`, say), and waits until it has joined. The agent
    /// keeps the credential it gets in `data_dir/host-credential`.
    pub fn start_with_token(
        bin: &Path,
        server: &Server,
        token: &str,
        region: &str,
        data_dir: &Path,
        host_id: &str,
        extra: &[&str],
    ) -> Result<Agent, HarnessError> {
        Agent::spawn_joined(
            bin,
            server,
            token,
            region,
            data_dir,
            host_id.to_owned(),
            extra,
        )
    }

    /// The credential the control plane handed this host when it enrolled.
    pub fn credential(&self) -> Result<String, HarnessError> {
        let path = self.data_dir.join("host-credential");
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| HarnessError::Read { path, source })
    }

    fn spawn_joined(
        bin: &Path,
        server: &Server,
        token: &str,
        region: &str,
        data_dir: &Path,
        host_id: String,
        extra: &[&str],
    ) -> Result<Agent, HarnessError> {
        let token_file = write_token_file(data_dir, token)?;
        let mut args: Vec<String> = [
            "agent",
            "--control",
            &server.url,
            "--token-file",
            &token_file.to_string_lossy(),
            "--region",
            region,
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--host-id",
            &host_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"--http") {
            args.extend(["--http".to_string(), "127.0.0.1:0".to_string()]);
        }
        if !extra.contains(&"--https") && !extra.contains(&"--no-https") {
            args.extend(["--https".to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, _) = Proc::spawn_until("aloft agent", bin, &refs, &[], " joined ")?;
        Ok(Agent {
            proc,
            data_dir: data_dir.to_path_buf(),
            host_id,
            args,
            bin: bin.to_path_buf(),
        })
    }

    /// Removes every machine this agent left on the host: containers, rootfs mounts,
    /// network namespaces. Machines outlive their agent by design, so tests clean up here.
    pub fn remove_machines(&mut self) {
        self.proc.kill9();
        remove_agent_machines(&self.data_dir);
    }

    /// Kills the agent with SIGKILL and starts it again with the same arguments.
    pub fn crash_and_restart(&mut self) -> Result<(), HarnessError> {
        self.proc.kill9();
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (proc, _) = Proc::spawn_until("aloft agent", &self.bin, &refs, &[], " joined ")?;
        self.proc = proc;
        Ok(())
    }
}

/// Writes a host's join token to `DATA_DIR/join-token` (mode 0600), created if needed, for
/// `aloft agent --token-file` (tokens are never passed on the command line).
pub fn write_token_file(data_dir: &Path, token: &str) -> Result<PathBuf, HarnessError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("join-token");
    let io = |source| HarnessError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    Ok(path)
}

/// Removes every machine an agent with data dir `data_dir` left on the host (stop the agent
/// first): containers, rootfs mounts, network namespaces, stopped machines' included. For
/// tests that start agents of their own; [`Agent`] does it when dropped.
pub fn remove_agent_machines(data_dir: &Path) {
    let runc_root = data_dir.join("machines/runc");
    let ids: Vec<String> = std::fs::read_dir(&runc_root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let root = runc_root.to_string_lossy().into_owned();
    for id in &ids {
        let _ = run("runc", &["--root", &root, "delete", "--force", id]);
    }
    // A stopped machine has no container but keeps its namespace: every machine the agent
    // has a directory for may have one, and so may one whose destroy the agent's end cut
    // short (its directory gone, its record still in the agent's store).
    let mut known: Vec<String> = std::fs::read_dir(data_dir.join("machines/machines"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    known.extend(agent_store_machines(&data_dir.join("agent.db")));
    for id in ids.iter().chain(&known) {
        if Path::new("/run/netns").join(format!("aloft-{id}")).exists() {
            let _ = run("ip", &["netns", "delete", &format!("aloft-{id}")]);
        }
    }
    let prefix = data_dir.to_string_lossy().into_owned();
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = run("umount", &["-l", p]);
        }
    }
}

/// The machine ids in an agent's store (none if it cannot be read).
fn agent_store_machines(db: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let Ok(mut stmt) = conn.prepare("SELECT id FROM machines") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.remove_machines();
    }
}

/// A real multi-layer image built by the local Docker engine `FROM scratch`, saved as a
/// `docker save` archive. The Docker image is removed when this is dropped.
#[derive(Debug)]
pub struct DockerImage {
    /// `name:tag` in the local Docker engine.
    pub name: String,
    /// The `docker save` archive.
    pub archive: PathBuf,
    /// How many filesystem layers the image has.
    pub layers: usize,
}

impl DockerImage {
    /// Copies the image into a registry (`host:port/repo:tag`, plain HTTP) with skopeo,
    /// authenticating with an Aloft token.
    pub fn push(&self, dest: &str, token: &str) -> Result<(), HarnessError> {
        skopeo_copy(
            &format!("docker-archive:{}", self.archive.display()),
            dest,
            token,
        )
    }
}

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = run("docker", &["rmi", "--force", &self.name]);
    }
}

/// Builds a multi-layer busybox web server image with `docker build` `FROM scratch`, without
/// any registry: Debian's static busybox as `/bin/busybox` (one layer), its applet links in
/// `/bin` (another), `/etc/passwd` and `/etc/group` (another) and the document root `/www`
/// with `index.html` holding `page` (another); its `CMD` runs
/// `/bin/busybox httpd -f -v -p 8080 -h /www` (`-v` logs each answer to stderr). The image is
/// saved as `dir/<name>.tar`.
///
/// Returns `Ok(None)`, after printing why, only when no Docker engine answers.
pub fn multilayer_image(
    dir: &Path,
    name: &str,
    page: &str,
) -> Result<Option<DockerImage>, HarnessError> {
    if let Err(e) = run("docker", &["info", "--format", "{{.ServerVersion}}"]) {
        eprintln!("skipping: no Docker engine answers `docker info` ({e})");
        return Ok(None);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Read { path, source }
    };
    let ctx = dir.join(format!("{name}.docker"));
    let _ = std::fs::remove_dir_all(&ctx);
    for sub in ["bin", "applets/bin", "etc", "www"] {
        std::fs::create_dir_all(ctx.join(sub)).map_err(io(&ctx))?;
    }
    std::fs::copy("/bin/busybox", ctx.join("bin/busybox"))
        .map_err(io(Path::new("/bin/busybox")))?;
    for applet in [
        "sh", "sleep", "cat", "echo", "env", "id", "hostname", "httpd", "ls", "wget", "nc", "true",
        "false", "kill", "ps", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", ctx.join("applets/bin").join(applet))
            .map_err(io(&ctx))?;
    }
    std::fs::write(
        ctx.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/www:/bin/false\n",
    )
    .map_err(io(&ctx))?;
    std::fs::write(ctx.join("etc/group"), "root:x:0:\nwww-data:x:33:\n").map_err(io(&ctx))?;
    std::fs::write(ctx.join("www/index.html"), page).map_err(io(&ctx))?;
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\n\
         COPY bin/ /bin/\n\
         COPY applets/ /\n\
         COPY etc/ /etc/\n\
         COPY www/ /www/\n\
         ENV PATH=/bin\n\
         EXPOSE 8080\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-v\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .map_err(io(&ctx))?;
    let tag = format!(
        "aloft-test-{name}-{}-{}:1",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    run(
        "docker",
        &["build", "--quiet", "--tag", &tag, &ctx.to_string_lossy()],
    )?;
    // From here on the image exists: dropping `image` removes it.
    let mut image = DockerImage {
        name: tag,
        archive: dir.join(format!("{name}.tar")),
        layers: 0,
    };
    let layers = run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &image.name,
        ],
    )?;
    image.layers = layers.trim().parse().unwrap_or(0);
    run(
        "docker",
        &[
            "save",
            "--output",
            &image.archive.to_string_lossy(),
            &image.name,
        ],
    )?;
    let _ = std::fs::remove_dir_all(&ctx);
    Ok(Some(image))
}

impl Agent {
    /// The address of this agent's edge (`edge listening on http://ADDR`, printed at start).
    pub fn edge_addr(&mut self) -> Option<std::net::SocketAddr> {
        self.edge_listen_addr("http")
    }
}
