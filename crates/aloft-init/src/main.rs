//! `aloft-init`: PID 1 inside an Aloft machine.
//!
//! Reads the run configuration, starts the main process in its own process group with the
//! configured user, environment and working directory, captures its stdout/stderr into the
//! bounded app log, forwards the signals it receives to that process group, reaps every
//! zombie, serves exec and signal requests on a unix socket, and when the main process ends
//! records its exit, terminates what is left and exits with the same code.
//!
//! Usage: `aloft-init [RUN_CONFIG]` (default `/.aloft/run.json`); `aloft-init ps` prints the
//! machine's processes as JSON and exits (the Machines API's `ps` runs it through exec). It must stay synchronous and
//! statically linkable; it knows nothing of the host. The only `unsafe` is the pre-exec hook
//! that clears the inherited signal mask in children (`children.rs`).
#![deny(unsafe_code)]

mod children;
mod exec;
mod logs;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aloft_init::protocol::{ExitRecord, RunConfig, EXIT_FILE, RUN_CONFIG_PATH, SOCKET_NAME};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::{getpid, Pid};

use children::{Children, Ended};
use logs::LogSink;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long init waits for the main process's output pipes to drain before exiting.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Signals init handles itself: SIGCHLD to reap, the rest forwarded to the main process.
const HANDLED: [Signal; 11] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGPWR,
];

fn main() {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("ps") {
        // Not PID 1: run through exec to list the machine's processes, then exit.
        let list = aloft_init::ps::processes(Path::new("/proc"));
        match serde_json::to_string(&list) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("aloft-init ps: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let config_path = arg.unwrap_or_else(|| RUN_CONFIG_PATH.to_owned());
    let config = match load_config(&config_path) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("aloft-init: {message}");
            std::process::exit(1);
        }
    };
    std::process::exit(run(config));
}

fn load_config(path: &str) -> Result<RunConfig, String> {
    let text = std::fs::read(path).map_err(|e| format!("Cannot read run config {path}: {e}"))?;
    let config: RunConfig =
        serde_json::from_slice(&text).map_err(|e| format!("Run config {path} is invalid: {e}"))?;
    if config.args.is_empty() {
        return Err(format!("Run config {path} has no args"));
    }
    Ok(config)
}

fn run(mut config: RunConfig) -> i32 {
    let mut signals = SigSet::empty();
    for sig in HANDLED {
        signals.add(sig);
    }
    // Blocked in every thread from here on (threads inherit the mask); the main loop takes
    // them with sigwait. Children get an empty mask back from std's spawn.
    if let Err(e) = signals.thread_block() {
        eprintln!("aloft-init: cannot block signals: {e}");
        return 1;
    }
    // Outside a PID namespace (tests, or under another init) adopt our orphans like PID 1
    // would, so they are reaped and terminated with the app.
    if getpid().as_raw() != 1 {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    if !config.env.iter().any(|(k, _)| k == "PATH") {
        config.env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let config = Arc::new(config);
    let log = Arc::new(LogSink::open(&config.log_dir, config.log_max_bytes));
    let children = Arc::new(Children::default());
    let panic_log = Arc::clone(&log);
    std::panic::set_hook(Box::new(move |info| {
        panic_log.init(&format!("panic: {info}"))
    }));

    let mut cmd = Command::new(&config.args[0]);
    cmd.args(&config.args[1..])
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.cwd)
        .uid(config.uid)
        .gid(config.gid)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match children.spawn(&mut cmd, true) {
        Ok(child) => child,
        Err(e) => {
            log.init(&format!("cannot start {}: {e}", config.args[0]));
            let ended = Ended {
                code: 127,
                signal: None,
            };
            write_exit(&config, ended);
            return ended.code;
        }
    };
    let main_pid = child.id() as i32;
    log.init(&format!("started {} as pid {main_pid}", config.args[0]));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for (name, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let (log, done) = (Arc::clone(&log), done_tx.clone());
        std::thread::spawn(move || {
            if let Some(pipe) = pipe {
                log.pump(name, pipe);
            }
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let server = Arc::new(exec::Server {
        config: Arc::clone(&config),
        children: Arc::clone(&children),
        log: Arc::clone(&log),
    });
    let socket = Path::new(&config.run_dir).join(SOCKET_NAME);
    if let Err(e) = server.serve(&socket) {
        log.init(&format!("cannot serve exec on {}: {e}", socket.display()));
    }

    let ended = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                children.reap();
                if let Some(ended) = children.main_ended() {
                    break ended;
                }
            }
            Ok(sig) => {
                let _ = killpg(Pid::from_raw(main_pid), sig);
            }
            Err(_) => {}
        }
    };
    log.init(&match ended.signal {
        Some(sig) => format!("main process killed by signal {sig}"),
        None => format!("main process exited with code {}", ended.code),
    });
    terminate_rest(
        &children,
        main_pid,
        Duration::from_millis(config.shutdown_grace_ms),
    );
    let drain_deadline = Instant::now() + DRAIN_GRACE;
    while done_rx
        .recv_timeout(drain_deadline.saturating_duration_since(Instant::now()))
        .is_ok()
    {}
    write_exit(&config, ended);
    ended.code
}

/// SIGTERM everything left (the whole namespace when we are PID 1, else the main process
/// group), SIGKILL after `grace`, reaping until no child remains.
fn terminate_rest(children: &Children, main_pid: i32, grace: Duration) {
    let everyone = getpid().as_raw() == 1;
    let send = |sig: Signal| {
        let _ = if everyone {
            kill(Pid::from_raw(-1), sig)
        } else {
            killpg(Pid::from_raw(main_pid), sig)
        };
    };
    send(Signal::SIGTERM);
    let term_deadline = Instant::now() + grace;
    let give_up = term_deadline + Duration::from_secs(2);
    let mut killed = false;
    while children.reap() {
        let now = Instant::now();
        if now >= give_up {
            break;
        }
        if now >= term_deadline && !killed {
            send(Signal::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_exit(config: &RunConfig, ended: Ended) {
    let record = ExitRecord {
        exit_code: ended.code,
        signal: ended.signal,
        ts: logs::now_ms(),
    };
    let dir = Path::new(&config.log_dir);
    let tmp = dir.join(".exit.json.tmp");
    if let Ok(bytes) = serde_json::to_vec(&record) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(EXIT_FILE));
        }
    }
}
