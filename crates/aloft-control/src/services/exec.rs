//! Exec and logs: the request goes to the agent of the host that runs the machine, with the
//! secret its API accepts (the machines service finds both).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aloft_api::{
    ErrorBody, ExecRequest, ExecResponse, LogEntry, ProcessStat, PsQuery, MACHINE_PS_COMMAND,
};
use tokio::sync::mpsc;

use super::machines::exec::AgentTarget;
use super::machines::{MachineError, Machines};

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time an exec answer may take beyond the command's own timeout.
const EXEC_SLACK: Duration = Duration::from_secs(15);

/// Why an exec or a log stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("Host {host} of machine {machine} cannot be reached")]
    Unreachable { host: String, machine: String },
    /// The agent refused the request as the caller's fault; its message is passed on.
    #[error("{message}")]
    Refused { kind: Refusal, message: String },
    #[error("Host {host} could not run the request in machine {machine}")]
    AgentFailed { host: String, machine: String },
}

/// Why an agent refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Invalid,
    NotFound,
    WrongState,
}

/// The exec and log service.
#[derive(Debug)]
pub struct Exec {
    machines: Arc<Machines>,
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

fn agent_url(t: &AgentTarget, rest: &str) -> String {
    format!("http://{}/machines/{}/{rest}", t.address, t.machine)
}

fn unreachable(t: &AgentTarget, e: &reqwest::Error) -> ExecError {
    tracing::warn!(host = %t.host, machine = %t.machine, error = %e, "agent API unreachable");
    ExecError::Unreachable {
        host: t.host.clone(),
        machine: t.machine.clone(),
    }
}

/// An agent's error answer as ours.
async fn agent_error(t: &AgentTarget, response: reqwest::Response) -> ExecError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or(text);
    let kind = match status {
        400 => Refusal::Invalid,
        404 => Refusal::NotFound,
        412 => Refusal::WrongState,
        _ => {
            tracing::warn!(host = %t.host, machine = %t.machine, status, %message, "agent API failed");
            return ExecError::AgentFailed {
                host: t.host.clone(),
                machine: t.machine.clone(),
            };
        }
    };
    ExecError::Refused { kind, message }
}

impl Exec {
    pub fn new(machines: Arc<Machines>) -> Exec {
        Exec { machines }
    }

    /// Runs a command in a started machine and waits for it (Fly's exec).
    pub async fn run(
        &self,
        app: &str,
        machine: &str,
        req: &ExecRequest,
    ) -> Result<ExecResponse, ExecError> {
        req.argv().map_err(ExecError::Invalid)?;
        let target = self.machines.exec_target(app, machine)?;
        let timeout = Duration::from_secs(req.timeout_secs()) + EXEC_SLACK;
        let response = http()
            .post(agent_url(&target, "exec"))
            .bearer_auth(&target.secret)
            .json(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unreachable(&target, &e))?;
        if !response.status().is_success() {
            return Err(agent_error(&target, response).await);
        }
        let out = response
            .json::<ExecResponse>()
            .await
            .map_err(|e| unreachable(&target, &e))?;
        tracing::info!(app, machine, exit_code = out.exit_code, "exec finished");
        Ok(out)
    }

    /// The processes of a started machine: the machine's init lists them (it is in every
    /// machine, whatever the image holds), through the same agent path as an exec.
    pub async fn ps(
        &self,
        app: &str,
        machine: &str,
        query: &PsQuery,
    ) -> Result<Vec<ProcessStat>, ExecError> {
        let sort = query.sort_by.as_deref().unwrap_or("pid");
        if !matches!(sort, "pid" | "cpu" | "rss" | "command" | "") {
            return Err(ExecError::Invalid(format!(
                "sort_by {sort:?} must be pid, cpu, rss or command"
            )));
        }
        let descending = match query.order.as_deref().unwrap_or("asc") {
            "asc" | "" => false,
            "desc" => true,
            other => {
                return Err(ExecError::Invalid(format!(
                    "order {other:?} must be asc or desc"
                )))
            }
        };
        let req = ExecRequest {
            command: Some(MACHINE_PS_COMMAND.iter().map(|s| (*s).to_owned()).collect()),
            timeout: Some(10),
            ..Default::default()
        };
        let out = self.run(app, machine, &req).await?;
        let mut list: Vec<ProcessStat> = match serde_json::from_str(&out.stdout) {
            Ok(list) if out.exit_code == 0 => list,
            parsed => {
                tracing::warn!(app, machine, exit_code = out.exit_code, stderr = %out.stderr,
                    parse_error = ?parsed.err(), "machine init could not list processes");
                return Err(ExecError::AgentFailed {
                    host: String::new(),
                    machine: machine.to_owned(),
                });
            }
        };
        match sort {
            "cpu" => list.sort_by_key(|p| p.cpu),
            "rss" => list.sort_by_key(|p| p.rss),
            "command" => list.sort_by(|a, b| a.command.cmp(&b.command)),
            _ => list.sort_by_key(|p| p.pid),
        }
        if descending {
            list.reverse();
        }
        Ok(list)
    }

    /// The log lines of the app's machines (optionally one region's or one machine's), each
    /// a JSON `LogEntry` ending in a newline: all of them merged by time, or with `follow`,
    /// as they come.
    pub fn logs(
        &self,
        app: &str,
        region: Option<&str>,
        machine: Option<&str>,
        follow: bool,
    ) -> Result<LogLines, ExecError> {
        let targets = self.machines.log_targets(app, region, machine)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
        for target in targets {
            tokio::spawn(pump(target, follow, tx.clone()));
        }
        Ok(LogLines {
            rx,
            follow,
            sorted: None,
        })
    }
}

/// Log lines from every machine's agent.
#[derive(Debug)]
pub struct LogLines {
    rx: mpsc::Receiver<Vec<u8>>,
    follow: bool,
    /// Without `follow`: every line, by time, newest last (taken from the end).
    sorted: Option<Vec<Vec<u8>>>,
}

impl LogLines {
    /// The next line; `None` at the end.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if self.follow {
            return self.rx.recv().await;
        }
        if self.sorted.is_none() {
            let mut lines: Vec<(String, Vec<u8>)> = Vec::new();
            while let Some(line) = self.rx.recv().await {
                let ts = serde_json::from_slice::<LogEntry>(&line)
                    .map(|e| e.timestamp)
                    .unwrap_or_default();
                lines.push((ts, line));
            }
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            self.sorted = Some(lines.into_iter().rev().map(|(_, l)| l).collect());
        }
        self.sorted.as_mut().and_then(Vec::pop)
    }
}

/// Copies one machine's log lines from its agent into `tx` until the agent ends the stream
/// or nobody listens any more.
async fn pump(target: AgentTarget, follow: bool, tx: mpsc::Sender<Vec<u8>>) {
    let url = agent_url(&target, "logs");
    let response = http()
        .get(&url)
        .query(&[("follow", if follow { "true" } else { "false" })])
        .bearer_auth(&target.secret)
        .send()
        .await;
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let e = agent_error(&target, r).await;
            tracing::warn!(machine = %target.machine, error = %e, "logs not available");
            return;
        }
        Err(e) => {
            unreachable(&target, &e);
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            chunk = response.chunk() => match chunk {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(machine = %target.machine, error = %e, "log stream from agent ended");
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}
