//! Terminal output: logging setup, tables, JSON and error printing.

use std::io::IsTerminal;

use serde::Serialize;

/// Logs go to stderr; roles (server, agent) log at info, CLI verbs only at warn.
pub fn init_logging(role: bool) {
    let default = if role { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALOFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// One line `error: …: root cause`; with `--verbose` every cause follows on its own line.
pub fn print_error(err: &anyhow::Error, verbose: bool) {
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    if verbose {
        eprintln!("error: {err}");
        for cause in causes {
            eprintln!("  caused by: {cause}");
        }
    } else if let Some(root) = causes.last() {
        eprintln!("error: {err}: {root}");
    } else {
        eprintln!("error: {err}");
    }
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under a header, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
