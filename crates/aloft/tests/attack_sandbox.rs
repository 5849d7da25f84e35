//! End-to-end attacks from root inside a machine against its sandbox, with a real server, a
//! real agent running an ordinary Debian image (Python 3) under runc, and `aloft machine exec`.
//!
//! Root in a machine must be an unprivileged host uid of its own range, and must not open raw
//! sockets, make device nodes, mount, trace processes, use io_uring, or gain privileges
//! through a setuid binary.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aloft_testkit::{debian, ok, skopeo_push, stderr, stdout, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// Tries one thing as root in the machine and prints `allowed` or the errno's name.
const PROBE: &str = r#"
import ctypes, errno, os, shutil, socket, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

def mknod():
    os.mknod("/tmp/null-again", 0o600 | stat.S_IFCHR, os.makedev(1, 3))

def mount():
    if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def fsopen():
    call(430, b"tmpfs", 0)

def open_tree():
    call(428, -100, b"/", 0)  # AT_FDCWD, no flags: needs no capability

def ptrace():
    pid = os.fork()
    if pid == 0:
        try:
            call(101, 0, 0, 0, 0)  # PTRACE_TRACEME
            os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, os.strerror(code))

def process_vm_readv():
    call(310, os.getpid(), None, 0, None, 0, 0)

def io_uring():
    params = ctypes.create_string_buffer(120)
    call(425, 1, params)

def low_port():
    socket.socket().bind(("0.0.0.0", 80))

tests = dict(raw=raw, mknod=mknod, mount=mount, fsopen=fsopen, open_tree=open_tree, ptrace=ptrace,
             process_vm_readv=process_vm_readv, io_uring=io_uring, low_port=low_port)
try:
    tests[sys.argv[1]]()
    print("allowed")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// As root, makes a setuid-root copy of Python; as `nobody`, runs it and prints its euid.
const SETUID: &str = r#"
import os, shutil
shutil.copy("/usr/bin/python3", "/tmp/suid-python")
os.chown("/tmp/suid-python", 0, 0)
os.chmod("/tmp/suid-python", 0o4755)
pid = os.fork()
if pid == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    os.execv("/tmp/suid-python", ["python3", "-c", "import os; print(os.geteuid())"])
os.waitpid(pid, 0)
"#;

struct Topology {
    _dir: tempfile::TempDir,
    agent_dir: PathBuf,
    server: Server,
    agent: Agent,
}

impl Topology {
    fn start() -> Self {
        let layout = debian::layout().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(bin()).unwrap();
        let agent_dir = dir.path().join("agent");
        let agent = Agent::start(bin(), &server, "ams", &agent_dir).unwrap();
        let registry = server.url.trim_start_matches("http://").to_string();
        ok(server.cli(&["apps", "create", "tenant"]));
        let image = format!("{registry}/tenant/debian:{}", debian::TAG);
        skopeo_push(&layout, debian::TAG, &image, &server.token).unwrap();
        Self {
            _dir: dir,
            agent_dir,
            server,
            agent,
        }
    }

    fn machine(&self) -> String {
        let registry = self.server.url.trim_start_matches("http://");
        let image = format!("{registry}/tenant/debian:{}", debian::TAG);
        let out = ok(self.server.cli(&[
            "machine", "run", &image, "--app", "tenant", "--region", "ams", "--json",
        ]));
        let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        self.wait_started(&id);
        id
    }

    fn wait_started(&self, id: &str) {
        wait_for("machine started", Duration::from_secs(60), || {
            (self.server.machine_json("tenant", id)["state"] == "started").then_some(())
        })
        .unwrap();
        // Started means init serves exec.
        wait_for("exec answers", Duration::from_secs(30), || {
            self.try_exec(id, &["true"]).ok()
        })
        .unwrap();
    }

    fn try_exec(&self, id: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["machine", "exec", id, "--app", "tenant", "--"];
        args.extend_from_slice(cmd);
        let out = self.server.cli(&args);
        if out.status.success() {
            Ok(stdout(&out))
        } else {
            Err(format!("{}{}", stdout(&out), stderr(&out)))
        }
    }

    fn exec(&self, id: &str, cmd: &[&str]) -> String {
        self.try_exec(id, cmd)
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {id} failed: {e}"))
    }

    fn probe(&self, id: &str, what: &str) -> String {
        self.exec(id, &["python3", "-c", PROBE, what])
            .trim()
            .to_string()
    }

    /// The host id machine `id`'s root maps to, from its `/proc/self/uid_map`.
    fn host_root(&self, id: &str) -> u32 {
        let map = self.exec(id, &["cat", "/proc/self/uid_map"]);
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "one mapping: {map}");
        assert_eq!(fields[0], "0", "{map}");
        assert_eq!(fields[2], "65536", "a range of 65536 ids: {map}");
        fields[1].parse().unwrap()
    }

    fn upper(&self, id: &str) -> PathBuf {
        self.agent_dir
            .join("machines/machines")
            .join(id)
            .join("upper")
    }
}

#[test]
fn root_in_a_machine_is_confined() {
    let mut t = Topology::start();
    let a = t.machine();
    let b = t.machine();

    // Root is an unprivileged host id, distinct per machine.
    let base_a = t.host_root(&a);
    let base_b = t.host_root(&b);
    assert!(base_a >= 65536, "machine root is host id {base_a}");
    assert!(base_b >= 65536, "machine root is host id {base_b}");
    assert!(
        base_a.abs_diff(base_b) >= 65536,
        "ranges overlap: {base_a} and {base_b}"
    );
    assert_eq!(t.exec(&a, &["id", "-u"]).trim(), "0");

    // What root writes lands on the host owned by its mapped id, not by host root.
    t.exec(&a, &["touch", "/tmp/written-by-root"]);
    let meta = std::fs::metadata(t.upper(&a).join("tmp/written-by-root")).unwrap();
    assert_ne!(meta.uid(), 0, "written as host root");
    assert_eq!((meta.uid(), meta.gid()), (base_a, base_a));

    // No raw sockets (no CAP_NET_RAW), no device nodes (no CAP_MKNOD).
    assert_eq!(t.probe(&a, "raw"), "EPERM", "raw socket");
    assert_eq!(t.probe(&a, "mknod"), "EPERM", "mknod");
    // No mounts, old API or new (even the new API's calls that need no capability).
    assert_eq!(t.probe(&a, "mount"), "EPERM", "mount");
    assert_eq!(t.probe(&a, "fsopen"), "EPERM", "fsopen");
    assert_eq!(t.probe(&a, "open_tree"), "EPERM", "open_tree");
    // No tracing or reading other processes' memory, no io_uring.
    assert_eq!(t.probe(&a, "ptrace"), "EPERM", "ptrace");
    assert_eq!(t.probe(&a, "process_vm_readv"), "EPERM", "process_vm_readv");
    assert_eq!(t.probe(&a, "io_uring"), "EPERM", "io_uring_setup");

    // A setuid-root binary gives nobody nothing: the rootfs is nosuid.
    assert_eq!(t.exec(&a, &["python3", "-c", SETUID]).trim(), "65534");
    let mountinfo = t.exec(&a, &["cat", "/proc/self/mountinfo"]);
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in {mountinfo}"));
    let options = root.split(' ').nth(5).unwrap_or_default();
    assert!(
        options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"),
        "/ is mounted {options}"
    );

    // What apps need still works: root binds low ports, the image's web server answers.
    assert_eq!(t.probe(&a, "low_port"), "allowed", "binding port 80");
    let page = t.exec(
        &a,
        &[
            "python3",
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://[::1]:8080/').read().decode(), end='')",
        ],
    );
    assert_eq!(page, debian::PAGE);

    // The range is durable: the same after a stop and start across an agent restart.
    ok(t.server.cli(&["machine", "stop", &a, "--app", "tenant"]));
    wait_for("machine stopped", Duration::from_secs(60), || {
        (t.server.machine_json("tenant", &a)["state"] == "stopped").then_some(())
    })
    .unwrap();
    t.agent.crash_and_restart().unwrap();
    ok(t.server.cli(&["machine", "start", &a, "--app", "tenant"]));
    t.wait_started(&a);
    assert_eq!(t.host_root(&a), base_a);
}
