//! The multi-region `aloft dev` topology as a test fixture: starts `aloft dev --regions …` on
//! a data dir of its own, reads what it printed, runs the CLI and `aloft dev` subcommands
//! against it, asks the demo app from a city, and takes everything down when dropped (also
//! when the test fails).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{cli, stderr, stdout, wait_for, HarnessError, Proc};

/// How long `aloft dev` may take to bring up its topology and print `Try:`.
pub const DEV_READY_DEADLINE: Duration = Duration::from_secs(300);

/// A topology prefix that is short and unique among parallel test runs: `name` followed by
/// this process's id in hex. Namespace names derive from it, so keep `name` to a few letters.
pub fn dev_prefix(name: &str) -> String {
    format!("{name}{:x}", std::process::id() % 0xfffff)
}

/// A running `aloft dev`; stopped, and its topology removed with `aloft dev down`, on drop.
#[derive(Debug)]
pub struct Dev {
    proc: Proc,
    /// The `--prefix` its namespaces are named after.
    pub prefix: String,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// The control plane URL it printed (`control plane URL …`).
    pub api_url: String,
    bin: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Dev {
    /// Starts `aloft dev --regions REGIONS --prefix PREFIX EXTRA…` on a fresh data dir, with
    /// the control plane and edges on port 0, and waits until it printed `Try:`.
    pub fn start(
        bin: &Path,
        prefix: &str,
        regions: &str,
        extra: &[&str],
    ) -> Result<Dev, HarnessError> {
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Read {
            path: std::env::temp_dir(),
            source,
        })?;
        let mut dev = Dev::start_in(bin, prefix, regions, dir.path(), extra)?;
        dev._dir = Some(dir);
        Ok(dev)
    }

    /// [`Dev::start`] on an existing `data_dir`, which the caller keeps (e.g. the data dir of
    /// an earlier run with the same prefix).
    pub fn start_in(
        bin: &Path,
        prefix: &str,
        regions: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<Dev, HarnessError> {
        let data = data_dir.display().to_string();
        let mut args = vec![
            "dev",
            "--regions",
            regions,
            "--prefix",
            prefix,
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (proc, _) = Proc::spawn_stdout_until("aloft dev", bin, &args, &[], "control plane")?;
        let mut dev = Dev {
            proc,
            prefix: prefix.to_string(),
            data_dir: data_dir.to_path_buf(),
            api_url: String::new(),
            bin: bin.to_path_buf(),
            _dir: None,
        };
        if let Err(e) = dev.proc.wait_line("Try:", DEV_READY_DEADLINE) {
            return Err(HarnessError::DevNotReady {
                reason: e.to_string(),
                logs: dev.logs(),
            });
        }
        dev.api_url = dev
            .printed()
            .lines()
            .find_map(|l| l.strip_prefix("control plane"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        Ok(dev)
    }

    /// The `aloft dev` process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Everything it printed on stdout so far.
    pub fn printed(&mut self) -> String {
        self.proc.output()
    }

    /// Waits up to `deadline` for a printed line for which `want` holds; panics with the
    /// output so far otherwise.
    pub fn wait_line(&mut self, want: impl Fn(&str) -> bool, deadline: Duration) -> String {
        self.proc
            .wait_line_matching("the line looked for", want, deadline)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The log file `logs/NAME.log` of one of its roles (`server`, `agent-ams`, …), or
    /// nothing if there is none.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join(format!("logs/{name}.log"))).unwrap_or_default()
    }

    /// The last 40 lines of every log file of its roles, each under its name.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.join("logs"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut all = String::new();
        for name in names {
            let log = self.log(&name);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            all.push_str(&format!("--- {name}\n"));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }

    /// The id of the demo machine in `region`, from the last `machine ID in REGION at …` line
    /// it printed.
    pub fn machine_in(&mut self, region: &str) -> String {
        let printed = self.printed();
        printed
            .lines()
            .rev()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 4 && w[0] == "machine" && w[3] == region).then(|| w[1].to_string())
            })
            .unwrap_or_else(|| panic!("no machine in {region}:\n{printed}"))
    }

    /// The admin token of its control plane.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server/admin-token"))
            .expect("aloft dev wrote the admin token")
            .trim()
            .to_string()
    }

    /// Runs the CLI against its control plane as admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        let token = self.token();
        cli(
            &self.bin,
            args,
            &[
                ("ALOFT_API_URL", self.api_url.as_str()),
                ("ALOFT_API_TOKEN", token.as_str()),
            ],
        )
    }

    /// Runs the CLI against its control plane as admin in `dir` (where the app's config
    /// lives), with `dir` as `HOME` and without `ALOFT_APP`.
    pub fn cli_in(&self, dir: &std::path::Path, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .env("NO_COLOR", "1")
            .env("HOME", dir)
            .env("ALOFT_API_URL", &self.api_url)
            .env("ALOFT_API_TOKEN", self.token())
            .env_remove("ALOFT_APP")
            .output()
            .expect("the aloft binary runs")
    }

    /// [`Dev::cli`] that must succeed and print JSON; returns it parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("the CLI printed JSON")
    }

    /// `aloft dev SUBCOMMAND --prefix … --data-dir … ARGS…` for this topology, where `args`
    /// is `[SUBCOMMAND, ARGS…]` (the prefix goes right after the subcommand, because `exec`
    /// takes everything after `--` as its command).
    pub fn dev_cmd(&self, args: &[&str]) -> Output {
        let data = self.data_dir.display().to_string();
        let mut all = vec![
            "dev",
            args[0],
            "--prefix",
            &self.prefix,
            "--data-dir",
            &data,
        ];
        all.extend_from_slice(&args[1..]);
        cli(&self.bin, &all, &[])
    }

    /// Asks the demo app for `/json` from a client in `city` (curl through `aloft dev exec`,
    /// at most 20 s): the region its answer names, or why there is none.
    pub fn ask(&self, city: &str, curl_args: &[&str]) -> Result<String, String> {
        self.demo_region(city, "/json", curl_args, "20")
    }

    /// The region that answered `path` of the demo app for a client in `city` (curl through
    /// `aloft dev exec`, at most 40 s); panics when there is no answer.
    pub fn region_at(&self, city: &str, path: &str, curl_args: &[&str]) -> String {
        self.demo_region(city, path, curl_args, "40")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The region that answered `/json` of the demo app for a client in `city`; panics when
    /// there is no answer.
    pub fn region_from(&self, city: &str) -> String {
        self.region_at(city, "/json", &[])
    }

    fn demo_region(
        &self,
        city: &str,
        path: &str,
        curl_args: &[&str],
        max_secs: &str,
    ) -> Result<String, String> {
        let url = format!("http://hello.localhost{path}");
        let mut args = vec!["exec", "--from", city, "--", "curl", "-sS", "-m", max_secs];
        args.extend_from_slice(curl_args);
        args.push(&url);
        let out = self.dev_cmd(&args);
        let body = stdout(&out);
        if !out.status.success() {
            return Err(format!("curl from {city} failed: {body}{}", stderr(&out)));
        }
        serde_json::from_str::<serde_json::Value>(body.trim())
            .ok()
            .and_then(|v| v["region"].as_str().map(str::to_string))
            .ok_or_else(|| format!("the answer from {city} is not the demo's JSON: {body}"))
    }

    /// Waits up to `deadline` until a client in `city` is answered by `region` (see
    /// [`Dev::ask`]); panics with the last answer and the roles' logs otherwise.
    pub fn wait_answered_by(&self, city: &str, region: &str, deadline: Duration) {
        let mut last = String::new();
        let found = wait_for(
            &format!("{city} to be answered by {region}"),
            deadline,
            || match self.ask(city, &[]) {
                Ok(r) if r == region => Some(()),
                Ok(r) => {
                    last = format!("answered by {r}");
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            },
        );
        if let Err(e) = found {
            panic!("{e}; last: {last}\n{}", self.logs());
        }
    }

    /// `command` in `city`'s client namespace (with `nsenter`), not yet started.
    pub fn in_city(&self, city: &str, command: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}-c-{city}", self.prefix))
            .arg("--")
            .args(command);
        cmd
    }

    /// The network namespaces of this topology that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pids of the agent of `region` (the processes running `agent` with its data dir).
    pub fn agent_pids(&self, region: &str) -> Vec<i32> {
        let want = self
            .data_dir
            .join("hosts")
            .join(region)
            .display()
            .to_string();
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|pid| {
                        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                            return false;
                        };
                        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                        args.contains(&b"agent".as_slice()) && args.contains(&want.as_bytes())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ctrl-C: returns everything it printed until it exited and whether it exited cleanly.
    pub fn interrupt(&mut self) -> (String, bool) {
        self.proc.interrupt()
    }

    /// Kills `aloft dev` with SIGKILL, as a crash would, leaving its topology behind.
    pub fn crash(&mut self) {
        self.proc.kill9();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if !self.proc.terminate(Duration::from_secs(90)) {
            self.proc.kill9();
        }
        let _ = self.dev_cmd(&["down"]);
    }
}
