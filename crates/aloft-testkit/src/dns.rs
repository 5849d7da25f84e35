//! A real DNS server for tests whose records a test sets: Debian's `pebble-challtestsrv`
//! (package `pebble`) with only its DNS and management listeners. Every name answers A
//! 127.0.0.1 unless told otherwise; TXT and CNAME records are added over its management API.

use std::path::Path;

use crate::edge::free_port;
use crate::{HarnessError, Proc};

/// A running test DNS server.
pub struct TestDns {
    _proc: Proc,
    /// `127.0.0.1:PORT` (UDP and TCP).
    pub addr: String,
    management: u16,
}

impl TestDns {
    /// Starts the server; it answers on [`TestDns::addr`].
    pub fn start() -> Result<TestDns, HarnessError> {
        let bin = Path::new("/usr/bin/pebble-challtestsrv");
        let (port, management) = (free_port(), free_port());
        let addr = format!("127.0.0.1:{port}");
        let mgmt = format!("127.0.0.1:{management}");
        let (proc, _) = Proc::spawn_until(
            "pebble-challtestsrv",
            bin,
            &[
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &addr,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &mgmt,
            ],
            &[],
            "Starting management server",
        )?;
        Ok(TestDns {
            _proc: proc,
            addr,
            management,
        })
    }

    fn call(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/{path}", self.management);
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "10",
                "-d",
                &body.to_string(),
                &url,
            ])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets the TXT record of `host` (replacing any).
    pub fn set_txt(&self, host: &str, value: &str) {
        self.call(
            "set-txt",
            serde_json::json!({ "host": format!("{host}."), "value": value }),
        );
    }

    /// Makes `host` a CNAME for `target`.
    pub fn set_cname(&self, host: &str, target: &str) {
        self.call(
            "set-cname",
            serde_json::json!({ "host": format!("{host}."), "target": format!("{target}.") }),
        );
    }
}
