//! Where the CLI finds the control plane: flags and environment first, then the file written
//! by `aloft auth login`, then a local server's admin token.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The default address of `aloft server`.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:4280";

/// Input the user has to fix (a missing app name, a malformed flag value).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What `aloft auth login` stores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedLogin {
    pub api_url: String,
    pub token: String,
}

/// The config file: `$ALOFT_CONFIG` or `$XDG_CONFIG_HOME/aloft/config.json` or
/// `~/.config/aloft/config.json`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ALOFT_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("aloft").join("config.json")
}

fn saved_login() -> Option<SavedLogin> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = config_path();
    let text = std::fs::read_to_string(&path).ok()?;
    let login: SavedLogin = serde_json::from_str(&text).ok()?;
    if !login.token.is_empty() {
        warn_if_shared(
            &path,
            std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .ok(),
        );
    }
    Some(login)
}

/// Writes the login file with mode 0600.
pub fn save_login(login: &SavedLogin) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = config_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("Cannot write {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(login)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("Cannot write {}", path.display()))?;
    Ok(path)
}

/// Reads a token from a file (trimmed); warns when others may read the file.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read the token file {}", path.display()))?;
    warn_if_shared(
        path,
        std::fs::metadata(path).map(|m| m.permissions().mode()).ok(),
    );
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(UsageError(format!("The token file {} is empty", path.display())).into());
    }
    Ok(token)
}

/// Says so on stderr when a file holding a token can be read by others than its owner.
fn warn_if_shared(path: &std::path::Path, mode: Option<u32>) {
    if let Some(mode) = mode.filter(|m| m & 0o077 != 0) {
        eprintln!(
            "warning: {} holds a token and has mode {:o}; make it 0600 (chmod 600 {})",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
}

/// The message for a token given on the command line, which is refused (`ps` and shell
/// history show arguments): where the token goes instead.
pub fn token_on_argv_hint(agent: bool) -> String {
    if agent {
        "--token is not accepted: command lines show in `ps` and shell history. Put the join \
         token in a file and pass --token-file PATH, or set ALOFT_JOIN_TOKEN"
            .to_owned()
    } else {
        "--token is not accepted: command lines show in `ps` and shell history. Set \
         ALOFT_API_TOKEN (or ALOFT_API_TOKEN_FILE=PATH), or save it with `aloft auth login` \
         (which reads it from standard input or --token-file PATH)"
            .to_owned()
    }
}

/// The default data dir of `aloft server` on this machine.
pub fn default_server_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/var/lib/aloft/server")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/aloft/server")
    }
}

/// The API client to use.
pub fn api() -> anyhow::Result<aloft_api::Client> {
    let (url, token) = api_url_and_token()?;
    Ok(aloft_api::Client::new(&url, token)?)
}

/// Where the CLI's control plane and token come from, and what they are.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    /// `ALOFT_API_URL`, the login file, or the default.
    pub url_from: String,
    pub token: Option<String>,
    /// `ALOFT_API_TOKEN`, the login file, or the local server's admin token.
    pub token_from: String,
}

/// The API URL and token, and where each came from (without failing when there is no token).
pub fn endpoint() -> Endpoint {
    let saved = saved_login();
    let login = config_path().display().to_string();
    let env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
    let (url, url_from) = match (env("ALOFT_API_URL"), &saved) {
        (Some(url), _) => (url, "ALOFT_API_URL".to_owned()),
        (None, Some(s)) => (s.api_url.clone(), login.clone()),
        (None, None) => (DEFAULT_API_URL.to_owned(), "the default".to_owned()),
    };
    let admin = default_server_dir().join("admin-token");
    let from_file = env("ALOFT_API_TOKEN_FILE").map(|p| {
        let token = std::fs::read_to_string(&p)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        (token, p)
    });
    let (token, token_from) = match (env("ALOFT_API_TOKEN"), &saved) {
        (Some(t), _) => (Some(t), "ALOFT_API_TOKEN".to_owned()),
        (None, _) if from_file.is_some() => {
            let (token, path) = from_file.unwrap_or_default();
            (
                Some(token).filter(|t| !t.is_empty()),
                format!("ALOFT_API_TOKEN_FILE ({path})"),
            )
        }
        (None, Some(s)) => (Some(s.token.clone()), login),
        (None, None) => match std::fs::read_to_string(&admin) {
            Ok(t) => (Some(t.trim().to_owned()), admin.display().to_string()),
            Err(_) => (None, "nowhere".to_owned()),
        },
    };
    Endpoint {
        url,
        url_from,
        token,
        token_from,
    }
}

/// The API URL and token to use.
pub fn api_url_and_token() -> anyhow::Result<(String, String)> {
    let e = endpoint();
    let token = e.token.ok_or_else(|| {
        UsageError(format!(
            "No API token (looked in {}): set ALOFT_API_TOKEN or ALOFT_API_TOKEN_FILE, or run \
             `aloft auth login`",
            e.token_from
        ))
    })?;
    Ok((e.url, token))
}

/// The app to act on: the flag, else `$ALOFT_APP`, else the `app` of `aloft.toml`/`fly.toml`
/// in the current directory.
pub fn app(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(app) = flag.or_else(|| std::env::var("ALOFT_APP").ok()) {
        return Ok(app);
    }
    for name in ["aloft.toml", "fly.toml"] {
        if let Ok(text) = std::fs::read_to_string(name) {
            if let Ok(value) = text.parse::<toml::Table>() {
                if let Some(app) = value.get("app").and_then(|v| v.as_str()) {
                    return Ok(app.to_string());
                }
            }
        }
    }
    Err(UsageError(
        "No app given: pass --app NAME, run in the app's directory (with its aloft.toml or \
         fly.toml), or create one there with `aloft launch`"
            .into(),
    )
    .into())
}
