//! Terminal output: logging setup, colour, tables, JSON, and errors with what to do next.

use std::io::IsTerminal;

use serde::Serialize;

/// Logs go to stderr; roles (server, agent) log at info, CLI verbs only at warn.
pub fn init_logging(role: bool) {
    let default = if role { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALOFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(Stream::Stderr))
        .init();
}

/// Which standard stream a piece of output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Whether the stream is a terminal.
    pub fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Whether `NO_COLOR` is set to something (https://no-color.org: an empty value does not count).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether output on `stream` may be coloured: a terminal, and no `NO_COLOR`.
pub fn colour(stream: Stream) -> bool {
    !no_color() && stream.is_terminal()
}

/// A colour or weight for [`paint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Red,
    Green,
    Yellow,
    Cyan,
}

/// `text` in `paint` when `stream` may be coloured, else `text` as it is.
pub fn paint(stream: Stream, paint: Paint, text: &str) -> String {
    if !colour(stream) {
        return text.to_owned();
    }
    let code = match paint {
        Paint::Red => "31",
        Paint::Green => "32",
        Paint::Yellow => "33",
        Paint::Cyan => "36",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A machine state coloured by what it means: green running, red failed, yellow in between.
pub fn state(stream: Stream, state: &str) -> String {
    let p = match state {
        "started" => Paint::Green,
        "failed" | "launch_failed" => Paint::Red,
        "stopped" | "suspended" | "created" | "destroyed" => return state.to_owned(),
        _ => Paint::Yellow,
    };
    paint(stream, p, state)
}

/// An image reference for a table: a tagged reference pinned to a digest
/// (`registry/app:tag@sha256:…`) without its digest, which `--json` still shows.
pub fn short_image(image: &str) -> &str {
    match image.split_once('@') {
        Some((named, _))
            if named
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
        {
            named
        }
        _ => image,
    }
}

/// One line `error: …: root cause`; with `--verbose` every cause follows on its own line.
/// A `hint:` line follows when the error has an obvious next step.
pub fn print_error(err: &anyhow::Error, verbose: bool) {
    let label = paint(Stream::Stderr, Paint::Red, "error:");
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    if verbose {
        eprintln!("{label} {err}");
        for cause in causes {
            eprintln!("  caused by: {cause}");
        }
    } else if let Some(root) = causes.last() {
        eprintln!("{label} {err}: {root}");
    } else {
        eprintln!("{label} {err}");
    }
    if let Some(hint) = hint(err) {
        eprintln!("{} {hint}", paint(Stream::Stderr, Paint::Cyan, "hint:"));
    }
}

/// What to do next about `err`, when that is clear from what failed.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<aloft_api::ClientError>() {
            return client_hint(e);
        }
        if let Some(e) = cause.downcast_ref::<aloft_config::ConfigError>() {
            return match e {
                aloft_config::ConfigError::NotFound { .. } => Some(
                    "run `aloft launch` to create the app and its aloft.toml, or pass \
                     --config FILE"
                        .to_owned(),
                ),
                _ => None,
            };
        }
    }
    None
}

fn client_hint(e: &aloft_api::ClientError) -> Option<String> {
    use aloft_api::ClientError;
    match e {
        ClientError::Api {
            status: 404,
            message,
        } if message.starts_with("App ") => Some(
            "create it with `aloft launch` in the app's directory, or `aloft apps create NAME`"
                .to_owned(),
        ),
        ClientError::Api {
            status: 404,
            message,
        } if message.starts_with("Machine ") => {
            Some("`aloft machine list` shows the app's machines".to_owned())
        }
        ClientError::Api { status: 401, .. } => Some(
            "the API token was refused: set ALOFT_API_TOKEN or run `aloft auth login`".to_owned(),
        ),
        ClientError::Api { status: 403, .. } => Some(
            "the API token may not do this: use a token of this app, or an admin token".to_owned(),
        ),
        ClientError::Transport { url, .. } => Some(format!(
            "is the control plane running? Start it with `aloft server`, or set ALOFT_API_URL \
             (now {}); `aloft doctor` checks the whole setup",
            base_of(url)
        )),
        _ => None,
    }
}

/// `http://host:port` of a request URL.
fn base_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_owned(),
    }
}

/// Prints `value` as pretty JSON (a closed pipe, as with `| head`, is an error that
/// [`is_broken_pipe`] recognises rather than a panic).
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(value)?;
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// Whether `err` is stdout's reader having gone away (`aloft … | head`): not worth a message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints rows under a header, columns padded to the widest cell; stops quietly when stdout
/// is closed.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    use std::io::Write as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(visible_len(c));
                format!("{c}{}", " ".repeat(pad))
            })
            .collect();
        writeln!(std::io::stdout().lock(), "{}", padded.join("  ").trim_end())
    };
    let _ = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        if line(row.clone()).is_err() {
            break;
        }
    }
}

/// The characters of `text` a terminal shows: colour sequences (`ESC [ … m`) left out.
fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_next_command() {
        let missing = anyhow::Error::new(aloft_api::ClientError::Api {
            status: 404,
            message: "App \"web\" not found".into(),
        })
        .context("Cannot list machines");
        assert!(hint(&missing).unwrap().contains("aloft launch"));
        let refused = anyhow::Error::new(aloft_api::ClientError::Api {
            status: 401,
            message: "bad token".into(),
        });
        assert!(hint(&refused).unwrap().contains("aloft auth login"));
        let other = anyhow::anyhow!("something else");
        assert_eq!(hint(&other), None);
        assert_eq!(
            base_of("http://127.0.0.1:9/v1/apps?x=1"),
            "http://127.0.0.1:9"
        );
        assert_eq!(visible_len("\x1b[32mstarted\x1b[0m"), 7);
        assert_eq!(
            short_image("r.localhost/web:deployment-1a@sha256:ab"),
            "r.localhost/web:deployment-1a"
        );
        assert_eq!(
            short_image("127.0.0.1:5000/web@sha256:ab"),
            "127.0.0.1:5000/web@sha256:ab"
        );
        assert_eq!(short_image("127.0.0.1:5000/web:1"), "127.0.0.1:5000/web:1");
    }
}
