//! Anycast over BGP: the agent announces the edge's anycast prefixes to its routers through
//! its own bird2 process, and only while the edge is healthy.
//!
//! The agent writes bird's configuration (a `static` protocol per address family holding the
//! anycast prefixes, a `bgp` protocol per neighbor, and an export filter that lets only those
//! prefixes out), runs `bird` in the foreground as its child (its own socket, in the agent's
//! network namespace) and changes what it announces by rewriting the configuration and asking
//! bird to reload it over its control socket. A self-check runs every second: the edge must
//! answer an HTTP request on its own listener, and the host must not be draining (a `drain`
//! file in the BGP directory). The prefixes are withdrawn after two failed checks, when the
//! drain file appears, and when the agent stops (before the edge stops accepting); they are
//! announced again once the edge answers. bird stops with the agent.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// How often the self-check runs.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Failed self-checks in a row before the prefixes are withdrawn.
const FAILS_TO_WITHDRAW: u32 = 2;
/// How long the edge keeps accepting after the withdrawal on shutdown, for routers to move.
const WITHDRAW_GRACE: Duration = Duration::from_secs(1);
/// How long bird has to open its control socket.
const BIRD_START: Duration = Duration::from_secs(10);
/// The default BGP hold time in seconds (keepalives every third of it).
pub const DEFAULT_HOLD_TIME: u16 = 9;

/// What can go wrong running bird.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("I/O failed while {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bird did not start: {0}")]
    Start(String),
    #[error("bird refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
    #[error("{0}")]
    Invalid(String),
}

/// An anycast prefix, `ADDR/LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = BgpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            BgpError::Invalid(format!(
                "{s:?} is not a prefix: use ADDR/LEN, e.g. 192.0.2.1/32 or 2001:db8::1/128"
            ))
        };
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A BGP neighbor: `ADDR` or `ADDR:ASN` (`[V6]:ASN` for IPv6 with an ASN). Without an ASN the
/// session is internal (the agent's own ASN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub addr: IpAddr,
    pub asn: Option<u32>,
}

impl FromStr for Neighbor {
    type Err = BgpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            BgpError::Invalid(format!(
                "{s:?} is not a BGP neighbor: use ADDR, ADDR:ASN or [IPV6]:ASN, e.g. 192.0.2.254:64500"
            ))
        };
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Neighbor { addr, asn: None });
        }
        let (addr, asn) = if let Some(rest) = s.strip_prefix('[') {
            let (addr, rest) = rest.split_once(']').ok_or_else(bad)?;
            (addr, rest.strip_prefix(':'))
        } else {
            let (addr, asn) = s.rsplit_once(':').ok_or_else(bad)?;
            (addr, Some(asn))
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let asn = match asn {
            Some(a) => Some(a.parse::<u32>().map_err(|_| bad())?),
            None => None,
        };
        Ok(Neighbor { addr, asn })
    }
}

/// How the agent speaks BGP.
#[derive(Debug, Clone)]
pub struct BgpOptions {
    /// The agent's autonomous system number.
    pub asn: u32,
    /// bird's router id (usually the host's IPv4 address).
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<Neighbor>,
    /// The prefixes announced while the edge is healthy.
    pub anycast: Vec<Prefix>,
    /// Where the configuration, log, pid file and drain file live.
    pub dir: PathBuf,
    /// bird's control socket; `None`: `bird.ctl` in `dir`.
    pub socket: Option<PathBuf>,
    /// BGP hold time in seconds; keepalives go every third of it.
    pub hold_time: u16,
    /// The bird binary.
    pub bird: PathBuf,
}

impl BgpOptions {
    /// Checks what flags cannot: something to announce, someone to announce it to, and
    /// neighbors and prefixes of matching families.
    pub fn validate(&self) -> Result<(), BgpError> {
        if self.anycast.is_empty() {
            return Err(BgpError::Invalid(
                "BGP needs at least one --anycast prefix to announce".into(),
            ));
        }
        if self.neighbors.is_empty() {
            return Err(BgpError::Invalid(
                "BGP needs at least one --bgp-neighbor".into(),
            ));
        }
        for family_v4 in [true, false] {
            let has_prefix = self.anycast.iter().any(|p| p.addr.is_ipv4() == family_v4);
            let has_neighbor = self.neighbors.iter().any(|n| n.addr.is_ipv4() == family_v4);
            if has_prefix && !has_neighbor {
                return Err(BgpError::Invalid(format!(
                    "The {} anycast prefixes need an {} --bgp-neighbor to be announced to",
                    if family_v4 { "IPv4" } else { "IPv6" },
                    if family_v4 { "IPv4" } else { "IPv6" },
                )));
            }
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err(BgpError::Invalid(
                "--bgp-hold-time must be 0 or at least 3 seconds".into(),
            ));
        }
        Ok(())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.dir.join("bird.ctl"))
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }
    /// While this file exists the host is draining: nothing is announced.
    pub fn drain_path(&self) -> PathBuf {
        self.dir.join("drain")
    }
    fn pid_path(&self) -> PathBuf {
        self.dir.join("bird.pid")
    }
}

/// bird's configuration: announce the anycast prefixes to every neighbor when `announce`,
/// keep the sessions up but announce nothing otherwise.
pub fn bird_config(opts: &BgpOptions, announce: bool) -> String {
    let mut c = String::new();
    c.push_str("# Written by aloft agent; rewritten whenever what it announces changes.\n");
    c.push_str(&format!("router id {};\n", opts.router_id));
    c.push_str(&format!(
        "log \"{}\" {{ info, remote, warning, error, auth, fatal, bug }};\n\n",
        opts.dir.join("bird.log").display()
    ));
    c.push_str("protocol device {\n  scan time 10;\n}\n\n");
    c.push_str("filter aloft_anycast {\n");
    for p in &opts.anycast {
        c.push_str(&format!("  if net = {p} then accept;\n"));
    }
    c.push_str("  reject;\n}\n\n");
    for (v4, name, channel) in [
        (true, "aloft_anycast4", "ipv4"),
        (false, "aloft_anycast6", "ipv6"),
    ] {
        let prefixes: Vec<&Prefix> = opts
            .anycast
            .iter()
            .filter(|p| p.addr.is_ipv4() == v4)
            .collect();
        if prefixes.is_empty() {
            continue;
        }
        c.push_str(&format!("protocol static {name} {{\n  {channel};\n"));
        if announce {
            for p in prefixes {
                c.push_str(&format!("  route {p} blackhole;\n"));
            }
        }
        c.push_str("}\n\n");
    }
    let keepalive = (opts.hold_time / 3).max(1);
    for (i, n) in opts.neighbors.iter().enumerate() {
        let channel = if n.addr.is_ipv4() { "ipv4" } else { "ipv6" };
        c.push_str(&format!("protocol bgp aloft_peer{i} {{\n"));
        c.push_str(&format!("  local as {};\n", opts.asn));
        c.push_str(&format!(
            "  neighbor {} as {};\n",
            n.addr,
            n.asn.unwrap_or(opts.asn)
        ));
        if opts.hold_time == 0 {
            c.push_str("  hold time 0;\n");
        } else {
            c.push_str(&format!(
                "  hold time {};\n  keepalive time {keepalive};\n",
                opts.hold_time
            ));
        }
        c.push_str("  connect retry time 5;\n  error wait time 1, 10;\n");
        c.push_str(&format!(
            "  {channel} {{\n    import none;\n    export filter aloft_anycast;\n    next hop self;\n  }};\n"
        ));
        c.push_str("}\n\n");
    }
    c
}

/// Writes `text` to `path` through a temporary file, so bird never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BgpError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| BgpError::Io {
            what: format!("writing {}", path.display()),
            source,
        })
}

/// Sends one command over bird's control socket; returns the reply's text, or the refusal.
pub async fn bird_command(socket: &Path, command: &str) -> Result<String, BgpError> {
    let io = |source| BgpError::Io {
        what: format!("talking to bird at {}", socket.display()),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting: `0001 BIRD <version> ready.`
    lines.next_line().await.map_err(io)?;
    write
        .write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut reply = Vec::new();
    let mut failed = false;
    while let Some(line) = lines.next_line().await.map_err(io)? {
        // `DDDD-text` continues, `DDDD text` ends the reply, ` text` continues the last code.
        let code = line.get(..4).and_then(|c| c.parse::<u16>().ok());
        let text = match code {
            Some(code) => {
                failed |= code >= 8000;
                line.get(5..).unwrap_or_default()
            }
            None => line.trim_start(),
        };
        reply.push(text.to_string());
        if code.is_some() && line.as_bytes().get(4) == Some(&b' ') {
            break;
        }
    }
    let reply = reply.join("\n");
    if failed {
        return Err(BgpError::Refused {
            command: command.to_string(),
            reply,
        });
    }
    Ok(reply)
}

/// The running bird and the self-check that drives what it announces.
pub struct BgpRole {
    task: tokio::task::JoinHandle<()>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl BgpRole {
    /// Writes the configuration (announcing nothing yet), starts bird and the self-check
    /// against the edge's HTTP listener at `edge` (`None`: no edge, never announce).
    pub async fn start(opts: BgpOptions, edge: Option<SocketAddr>) -> Result<BgpRole, BgpError> {
        opts.validate()?;
        std::fs::create_dir_all(&opts.dir).map_err(|source| BgpError::Io {
            what: format!("creating {}", opts.dir.display()),
            source,
        })?;
        let bird = Bird::start(&opts).await?;
        info!(
            neighbors = opts.neighbors.len(),
            prefixes = %opts.anycast.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "bird started; anycast prefixes are announced once the edge answers"
        );
        let (stop_tx, stop_rx) = oneshot::channel();
        let probe = edge.map(probe_address);
        let task = tokio::spawn(self_check(opts, bird, probe, stop_rx));
        Ok(BgpRole {
            task,
            stop: Some(stop_tx),
        })
    }

    /// [`BgpRole::start`], logging a failure instead (the host still runs its machines).
    pub async fn start_or_log(opts: BgpOptions, edge: Option<SocketAddr>) -> Option<BgpRole> {
        match BgpRole::start(opts, edge).await {
            Ok(role) => Some(role),
            Err(e) => {
                let chain = aloft_api::error::error_chain(&e);
                tracing::error!(error = %chain, "this host does not announce its anycast prefixes");
                None
            }
        }
    }

    /// Withdraws the prefixes, gives routers a moment to move traffic away, and stops bird.
    /// Call it before the edge stops accepting.
    pub async fn withdraw_and_stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
            }
        }
        self.task.abort();
    }
}

impl Drop for BgpRole {
    fn drop(&mut self) {
        // Dropping the task drops bird's child handle, which kills it: its sessions close
        // and the routers withdraw what it announced.
        self.task.abort();
    }
}

/// The edge's listener as seen from this host (a wildcard address is probed on loopback).
fn probe_address(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Whether the edge answers HTTP on `addr` (any status: the listener and its HTTP engine work).
async fn edge_answers(addr: SocketAddr) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            b"GET /.aloft/edge-check HTTP/1.1\r\nhost: edge-check.invalid\r\nconnection: close\r\n\r\n",
        )
        .await?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1."))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Ok(true))
    )
}

async fn self_check(
    opts: BgpOptions,
    mut bird: Bird,
    probe: Option<SocketAddr>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut announced = false;
    let mut fails = 0u32;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut stop => {
                if announced {
                    match bird.apply(&opts, false).await {
                        Ok(()) => {
                            info!("anycast prefixes withdrawn: the agent is stopping");
                            tokio::time::sleep(WITHDRAW_GRACE).await;
                        }
                        Err(e) => warn!(error = %e, "cannot withdraw the anycast prefixes; stopping bird"),
                    }
                }
                bird.stop().await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            _ = tick.tick() => {}
        }
        if let Some(status) = bird.exited() {
            warn!(%status, "bird exited; starting it again");
            match Bird::start(&opts).await {
                Ok(b) => {
                    bird = b;
                    announced = false;
                }
                Err(e) => {
                    warn!(error = %e, "cannot start bird again");
                    continue;
                }
            }
        }
        let draining = opts.drain_path().exists();
        let answers = match probe {
            Some(addr) if !draining => edge_answers(addr).await,
            _ => false,
        };
        fails = if answers { 0 } else { fails + 1 };
        let want = if draining {
            false
        } else if answers {
            true
        } else {
            announced && fails < FAILS_TO_WITHDRAW
        };
        if want == announced {
            continue;
        }
        match bird.apply(&opts, want).await {
            Ok(()) => {
                announced = want;
                if want {
                    info!("anycast prefixes announced: the edge answers");
                } else if draining {
                    info!("anycast prefixes withdrawn: the host is draining");
                } else {
                    warn!("anycast prefixes withdrawn: the edge does not answer its self-check");
                }
            }
            Err(e) => warn!(error = %e, "cannot change what bird announces"),
        }
    }
}

/// The bird child process.
struct Bird {
    child: tokio::process::Child,
    socket: PathBuf,
}

impl Bird {
    /// Stops a bird an earlier agent left, writes a configuration announcing nothing, starts
    /// bird and waits for its control socket.
    async fn start(opts: &BgpOptions) -> Result<Bird, BgpError> {
        let socket = opts.socket_path();
        stop_leftover(&opts.pid_path());
        let _ = std::fs::remove_file(&socket);
        write_atomically(&opts.config_path(), &bird_config(opts, false))?;
        let err_path = opts.dir.join("bird.stderr");
        let err = std::fs::File::create(&err_path).map_err(|source| BgpError::Io {
            what: format!("creating {}", err_path.display()),
            source,
        })?;
        // setpriv makes the kernel kill bird if the agent dies without stopping it, so a
        // crashed agent's routes do not outlive it.
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&opts.bird)
            .arg("-f")
            .arg("-c")
            .arg(opts.config_path())
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(opts.pid_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| BgpError::Io {
            what: format!(
                "starting {} (install bird2 and util-linux)",
                opts.bird.display()
            ),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + BIRD_START;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let why = std::fs::read_to_string(&err_path).unwrap_or_default();
                return Err(BgpError::Start(format!("{status}: {}", why.trim())));
            }
            if bird_command(&socket, "show status").await.is_ok() {
                return Ok(Bird { child, socket });
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(BgpError::Start(format!(
                    "no control socket at {} after {} s",
                    socket.display(),
                    BIRD_START.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rewrites the configuration and has bird load it.
    async fn apply(&mut self, opts: &BgpOptions, announce: bool) -> Result<(), BgpError> {
        write_atomically(&opts.config_path(), &bird_config(opts, announce))?;
        bird_command(&self.socket, "configure").await.map(|_| ())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks bird to shut down (it closes its sessions with a notification), then kills it if
    /// it lingers.
    async fn stop(mut self) {
        let _ = bird_command(&self.socket, "down").await;
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Kills the bird whose pid an earlier run recorded, if it is still a bird.
fn stop_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_bird =
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bird");
    if is_bird {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..100 {
            if nix::sys::signal::kill(pid, None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BgpOptions {
        BgpOptions {
            asn: 65100,
            router_id: Ipv4Addr::new(10, 200, 0, 10),
            neighbors: vec![
                "10.201.0.2:65200".parse().unwrap(),
                "[fd00:201::2]:65200".parse().unwrap(),
                "10.200.0.1".parse().unwrap(),
            ],
            anycast: vec![
                "10.250.0.1/32".parse().unwrap(),
                "fd00:250::1/128".parse().unwrap(),
            ],
            dir: PathBuf::from("/var/lib/aloft/agent/bgp"),
            socket: None,
            hold_time: 3,
            bird: PathBuf::from("bird"),
        }
    }

    #[test]
    fn flags_parse() {
        assert_eq!(
            "192.0.2.1:64500".parse::<Neighbor>().unwrap(),
            Neighbor {
                addr: "192.0.2.1".parse().unwrap(),
                asn: Some(64500)
            }
        );
        assert_eq!(
            "2001:db8::1".parse::<Neighbor>().unwrap().asn,
            None,
            "a bare IPv6 address has no ASN"
        );
        assert_eq!(
            "[2001:db8::1]:64500".parse::<Neighbor>().unwrap().asn,
            Some(64500)
        );
        assert!("192.0.2.1:x".parse::<Neighbor>().is_err());
        assert!("nobody".parse::<Neighbor>().is_err());
        assert_eq!(
            "10.250.0.0/24".parse::<Prefix>().unwrap().to_string(),
            "10.250.0.0/24"
        );
        assert!("10.250.0.1/33".parse::<Prefix>().is_err());
        assert!("10.250.0.1".parse::<Prefix>().is_err());
        assert!("fd00::1/128".parse::<Prefix>().is_ok());
    }

    #[test]
    fn announcing_config_has_routes_sessions_and_a_filter() {
        let c = bird_config(&opts(), true);
        assert!(c.contains("router id 10.200.0.10;"));
        assert!(c.contains(
            "protocol static aloft_anycast4 {\n  ipv4;\n  route 10.250.0.1/32 blackhole;\n}"
        ));
        assert!(c.contains(
            "protocol static aloft_anycast6 {\n  ipv6;\n  route fd00:250::1/128 blackhole;\n}"
        ));
        assert!(c.contains("  if net = 10.250.0.1/32 then accept;\n  if net = fd00:250::1/128 then accept;\n  reject;"));
        // One session per neighbor, in the neighbor's family, exporting only the filter.
        assert!(c.contains("protocol bgp aloft_peer0 {\n  local as 65100;\n  neighbor 10.201.0.2 as 65200;\n  hold time 3;\n  keepalive time 1;"));
        assert!(c.contains(
            "protocol bgp aloft_peer1 {\n  local as 65100;\n  neighbor fd00:201::2 as 65200;"
        ));
        // Without an ASN the neighbor is internal.
        assert!(c.contains("neighbor 10.200.0.1 as 65100;"));
        assert_eq!(c.matches("export filter aloft_anycast;").count(), 3);
        assert_eq!(c.matches("import none;").count(), 3);
        let peer1 = c.split("protocol bgp aloft_peer1").nth(1).unwrap();
        assert!(peer1
            .split("protocol bgp")
            .next()
            .unwrap()
            .contains("  ipv6 {"));
    }

    #[test]
    fn withdrawn_config_keeps_sessions_but_no_routes() {
        let announced = bird_config(&opts(), true);
        let withdrawn = bird_config(&opts(), false);
        assert!(!withdrawn.contains("route "));
        assert!(withdrawn.contains("protocol static aloft_anycast4 {\n  ipv4;\n}"));
        assert_eq!(
            announced.matches("protocol bgp").count(),
            withdrawn.matches("protocol bgp").count()
        );
    }

    #[test]
    fn only_present_families_get_a_static_protocol() {
        let mut o = opts();
        o.anycast.truncate(1);
        let c = bird_config(&o, true);
        assert!(c.contains("aloft_anycast4"));
        assert!(!c.contains("aloft_anycast6"));
        o.hold_time = 0;
        assert!(bird_config(&o, true).contains("hold time 0;"));
    }

    #[test]
    fn validation_names_what_is_missing() {
        assert!(opts().validate().is_ok());
        let mut o = opts();
        o.anycast.clear();
        assert!(o.validate().unwrap_err().to_string().contains("--anycast"));
        let mut o = opts();
        o.neighbors.retain(|n| n.addr.is_ipv4());
        assert!(o.validate().unwrap_err().to_string().contains("IPv6"));
        let mut o = opts();
        o.hold_time = 2;
        assert!(o.validate().is_err());
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            probe_address("[::]:80".parse().unwrap()),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            probe_address("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            probe_address("10.0.0.1:80".parse().unwrap()),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
    }
}
