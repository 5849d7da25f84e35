//! `aloft machine exec` and `aloft ssh console`: commands run in a machine through the
//! Machines API's exec (no TTY, no interactive shell yet).

use std::io::{BufRead as _, Read as _, Write as _};

use aloft_api::{Client, ExecRequest, ExecResponse, MachineState};
use clap::{Args, Subcommand};

use crate::context::{self, UsageError};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The machine's id.
    id: String,
    #[arg(long, short)]
    app: Option<String>,
    /// Seconds before the command is killed (default 30).
    #[arg(long)]
    timeout: Option<u64>,
    /// Send this command's standard input to the command.
    #[arg(long)]
    stdin: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SshCommand {
    /// Run shell commands in a machine. Not interactive yet: runs `-C CMD`, or else each line
    /// read from standard input as its own command (through `sh -c`, no TTY), printing the
    /// output of each; exits with the last command's exit code.
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[arg(long, short)]
    app: Option<String>,
    /// The machine (default: the app's first started machine).
    #[arg(long, short)]
    machine: Option<String>,
    /// The command to run (through `sh -c`).
    #[arg(short = 'C', long = "command")]
    command: Option<String>,
    /// Seconds before each command is killed (default 30).
    #[arg(long)]
    timeout: Option<u64>,
}

/// Prints an exec's output and returns its exit code.
fn print(out: &ExecResponse) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(out.stderr.as_bytes());
    if out.timed_out {
        let _ = writeln!(stderr, "aloft: the command timed out and was killed");
    }
    let _ = stderr.flush();
    i32::try_from(out.exit_code).unwrap_or(1)
}

/// Ends the process with the remote command's exit code (when it is not 0).
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `aloft machine exec ID -- CMD ARGS…`.
pub async fn exec(api: Client, args: ExecArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let stdin = if args.stdin {
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf)?;
        Some(buf)
    } else {
        None
    };
    let req = ExecRequest {
        command: Some(args.command),
        cmd: None,
        stdin,
        timeout: args.timeout,
    };
    let out = api.exec_machine(&app, &args.id, &req).await?;
    exit_with(print(&out))
}

pub async fn run(cmd: SshCommand) -> anyhow::Result<()> {
    let SshCommand::Console(args) = cmd;
    let api = context::api()?;
    let app = context::app(args.app)?;
    let machine = match args.machine {
        Some(m) => m,
        None => api
            .list_machines(&app, &Default::default())
            .await?
            .into_iter()
            .find(|m| m.state == MachineState::Started)
            .map(|m| m.id)
            .ok_or_else(|| UsageError(format!("App {app} has no started machine")))?,
    };
    let commands: Vec<String> = match args.command {
        Some(c) => vec![c],
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    let mut code = 0;
    for line in commands {
        let req = ExecRequest {
            command: Some(vec!["sh".into(), "-c".into(), line]),
            cmd: None,
            stdin: None,
            timeout: args.timeout,
        };
        code = print(&api.exec_machine(&app, &machine, &req).await?);
    }
    exit_with(code)
}
