//! `aloft-init ps`: the machine's processes as JSON, read from `/proc`, in the shape of the
//! Machines API's `ps` (Fly's `ProcessStat`). Run inside the machine through the exec path,
//! so it sees the machine's own process and network namespaces.

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

/// `/proc` counts CPU time in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// A socket a process listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenSocket {
    pub proto: String,
    pub address: String,
}

/// One process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: i64,
    pub command: String,
    pub directory: String,
    /// User + system CPU time, in clock ticks.
    pub cpu: u64,
    /// Resident memory in bytes.
    pub rss: u64,
    /// Ticks after boot at which the process started.
    pub stime: u64,
    /// Ticks the process has existed for.
    pub rtime: u64,
    pub listen_sockets: Vec<ListenSocket>,
}

/// Every process under `proc_root` (normally `/proc`), by pid.
pub fn processes(proc_root: &Path) -> Vec<Process> {
    let uptime_ticks = fs::read_to_string(proc_root.join("uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * TICKS_PER_SECOND) as u64);
    let listening = listening_sockets(proc_root);
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // A process may end while it is read: whatever cannot be read is left out.
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((comm, fields)) = split_stat(&stat) else {
            continue;
        };
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // After "pid (comm)": state is field 0, utime 11, stime 12, starttime 19.
        let start = field(19);
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        let command = cmdline
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        let rss_kb = fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let mut sockets = Vec::new();
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let inode = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'));
                if let Some(socket) = inode.and_then(|i| listening.get(i)) {
                    if !sockets.contains(socket) {
                        sockets.push(socket.clone());
                    }
                }
            }
        }
        out.push(Process {
            pid,
            command: if command.is_empty() { comm } else { command },
            directory: fs::read_link(dir.join("cwd"))
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            cpu: field(11) + field(12),
            rss: rss_kb * 1024,
            stime: start,
            rtime: uptime_ticks.saturating_sub(start),
            listen_sockets: sockets,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// `pid (comm) rest…` as comm and the fields after it (the name may hold spaces and parens).
fn split_stat(stat: &str) -> Option<(String, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    Some((comm, stat.get(close + 1..)?.split_whitespace().collect()))
}

/// Listening TCP sockets of this network namespace, by inode.
fn listening_sockets(proc_root: &Path) -> HashMap<String, ListenSocket> {
    let mut out = HashMap::new();
    for proto in ["tcp", "tcp6"] {
        let Ok(table) = fs::read_to_string(proc_root.join("net").join(proto)) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            if let Some(address) = socket_address(cols[1]) {
                out.insert(
                    cols[9].to_owned(),
                    ListenSocket {
                        proto: proto.to_owned(),
                        address,
                    },
                );
            }
        }
    }
    out
}

/// `/proc/net/tcp`'s `HEXADDR:HEXPORT` (the address in host-order 32-bit words) as `ip:port`.
fn socket_address(hex: &str) -> Option<String> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [w] => Some(format!("{}:{port}", Ipv4Addr::from(w.to_le_bytes()))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_read_as_ip_and_port() {
        assert_eq!(socket_address("0100007F:1F90").unwrap(), "127.0.0.1:8080");
        assert_eq!(socket_address("00000000:0050").unwrap(), "0.0.0.0:80");
        assert_eq!(
            socket_address("00000000000000000000000001000000:1F90").unwrap(),
            "[::1]:8080"
        );
        assert!(socket_address("zz:1").is_none());
    }

    #[test]
    fn stat_names_with_spaces_and_parens_are_kept_whole() {
        let (comm, rest) = split_stat("42 (a (b) c) S 1 42").unwrap();
        assert_eq!(comm, "a (b) c");
        assert_eq!(rest, vec!["S", "1", "42"]);
    }

    #[test]
    fn this_test_process_is_listed_with_its_command() {
        let list = processes(Path::new("/proc"));
        let me = list
            .iter()
            .find(|p| p.pid == i64::from(std::process::id()))
            .expect("this process is listed");
        assert!(!me.command.is_empty());
        assert!(me.rss > 0);
    }
}
