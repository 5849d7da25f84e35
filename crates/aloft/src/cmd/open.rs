//! `aloft open`: print the app's URL on the edge and open it in a browser when there is one.

use std::process::{Command, Stdio};

use clap::Args;

use crate::context;

/// The port `aloft dev` serves apps on.
pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, Args)]
pub struct OpenArgs {
    /// A path to append, e.g. `/admin`.
    pub path: Option<String>,
    #[arg(long, short)]
    pub app: Option<String>,
    /// Apps answer at <app>.<domain> (default: $ALOFT_APP_DOMAIN, else localhost).
    #[arg(long, env = "ALOFT_APP_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// The edge's HTTP port (80 leaves it out of the URL).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

/// `http://<app>.<domain>[:port][/path]`.
pub fn app_url(app: &str, domain: &str, port: u16, path: Option<&str>) -> String {
    let host = format!("{app}.{}", domain.trim_start_matches('.'));
    let port = if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    };
    let path = match path.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => format!("/{p}"),
        None => String::new(),
    };
    format!("http://{host}{port}{path}")
}

pub async fn run(args: OpenArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let url = app_url(&app, &args.domain, args.port, args.path.as_deref());
    println!("{url}");
    // Only a graphical session has a browser to open; a missing one is not an error.
    if std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty()) {
        let opened = Command::new("xdg-open")
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = opened {
            eprintln!("Could not open a browser ({e}); open the URL above by hand");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::app_url;

    #[test]
    fn urls_name_the_app_domain_port_and_path() {
        assert_eq!(
            app_url("web", "localhost", 8080, None),
            "http://web.localhost:8080"
        );
        assert_eq!(
            app_url("web", "example.com", 80, Some("admin")),
            "http://web.example.com/admin"
        );
        assert_eq!(
            app_url("web", "localhost", 8181, Some("/a?b=1")),
            "http://web.localhost:8181/a?b=1"
        );
    }
}
