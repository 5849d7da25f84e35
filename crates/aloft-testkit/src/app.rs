//! Helpers for tests that deploy apps against a real server: the CLI run in an app directory
//! (where `aloft.toml` lives), the app's machines as JSON, and the page a machine serves on
//! its private address.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{ok, wait_for, Server};

impl Server {
    /// Runs the CLI against this server in `dir` (where `aloft.toml` lives), with `dir` as
    /// `HOME` and without `ALOFT_APP`, so the app comes from the directory's config.
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .env("NO_COLOR", "1")
            .env("HOME", dir)
            .env("ALOFT_API_URL", &self.url)
            .env("ALOFT_API_TOKEN", &self.token)
            .env_remove("ALOFT_APP")
            .output()
            .expect("the aloft binary runs")
    }

    /// `aloft machine list --app APP --json` (with `--all` when `all`), parsed; without
    /// `all`, destroyed machines are left out.
    pub fn machine_list(&self, app: &str, all: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["machine", "list", "--app", app, "--json"];
        if all {
            args.push("--all");
        }
        let list: serde_json::Value =
            serde_json::from_str(&ok(self.cli(&args))).expect("machine list --json prints JSON");
        list.as_array()
            .expect("machine list --json prints an array")
            .iter()
            .filter(|m| all || m["state"] != "destroyed")
            .cloned()
            .collect()
    }
}

/// `GET /` (HTTP/1.0) on port 8080 of a machine's private address `ip`: the whole answer, or
/// `None` if none came within 2 s.
pub fn machine_page(ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().ok()?;
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nhost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Waits up to `deadline` until the first live machine of `app` serves a page containing
/// `text` on its private address; panics otherwise.
pub fn wait_machine_page(server: &Server, app: &str, text: &str, deadline: Duration) {
    wait_for(&format!("the machine serves {text:?}"), deadline, || {
        let list = server.machine_list(app, false);
        let ip = list.first()?["private_ip"].as_str()?.to_owned();
        machine_page(&ip).filter(|p| p.contains(text))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
