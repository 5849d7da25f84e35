//! `aloft config show|validate|env`: the app's config file as Aloft reads it, its problems,
//! and the environment its machines get.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aloft_config::{ConfigError, Loaded};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the config as Aloft reads it, as JSON (values equal to their defaults left out;
    /// --machines shows the machine configs a deploy makes of it, every default filled in).
    Show {
        #[command(flatten)]
        file: FileArgs,
        /// Print the machine config of each process group instead.
        #[arg(long)]
        machines: bool,
    },
    /// Check the config: every error and warning with file:line:column; exits 2 on errors.
    Validate(FileArgs),
    /// The environment variables (with where each comes from) and the secret names the app's
    /// machines get.
    Env {
        #[command(flatten)]
        file: FileArgs,
        /// The app whose secrets to list (default: `app` of the config).
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The config file (default: aloft.toml, else fly.toml, in this directory).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Reads the config named by `-c/--config`, or `aloft.toml`/`fly.toml` in this directory.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let Some(path) = path else {
        // The file here by its bare name, so diagnostics read `fly.toml:3:1`.
        return match [aloft_config::ALOFT_TOML, aloft_config::FLY_TOML]
            .into_iter()
            .find(|name| Path::new(name).exists())
        {
            Some(name) => load(Some(Path::new(name))),
            None => aloft_config::load_dir(Path::new(".")),
        };
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    aloft_config::parse(&path.display().to_string(), &text)
}

/// One variable of `config env`.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct EnvLine {
    name: String,
    /// The value, when the config fixes it (never a secret's).
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// `config`, `secret` or `platform`.
    source: &'static str,
    /// What else to know, e.g. that a secret of the same name wins.
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

pub async fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show { file, machines } => {
            let loaded = load(file.config.as_deref())?;
            if machines {
                return output::json(&loaded.config.machine_configs("<image>"));
            }
            output::json(&loaded.config)
        }
        ConfigCommand::Validate(f) => validate(f.config.as_deref()),
        ConfigCommand::Env { file, app, json } => {
            let loaded = load(file.config.as_deref())?;
            let app = match app.or_else(|| loaded.config.app.clone()) {
                Some(app) => app,
                None => context::app(None)?,
            };
            let secrets = match context::api() {
                Ok(api) => api
                    .list_secrets(&app)
                    .await
                    .map(|list| list.into_iter().map(|s| s.name).collect::<Vec<_>>())
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            let secrets = secrets.unwrap_or_else(|e| {
                eprintln!("warning: secrets are not listed: {e:#}");
                Vec::new()
            });
            let lines = env_lines(&loaded.config, &app, &secrets);
            if json {
                return output::json(&lines);
            }
            let rows: Vec<Vec<String>> = lines
                .iter()
                .map(|l| {
                    vec![
                        l.name.clone(),
                        l.value.clone().unwrap_or_else(|| "-".into()),
                        l.source.to_owned(),
                        l.note.clone(),
                    ]
                })
                .collect();
            output::table(&["NAME", "VALUE", "SOURCE", "NOTE"], &rows);
            Ok(())
        }
    }
}

/// Prints every problem of the config; an error when there are errors.
fn validate(path: Option<&Path>) -> anyhow::Result<()> {
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(ConfigError::Invalid(diagnostics)) => {
            for d in &diagnostics {
                let key = if d.key.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", d.key)
                };
                println!(
                    "{}:{}:{}: error: {key}{}",
                    d.file, d.line, d.column, d.message
                );
            }
            let file = diagnostics
                .first()
                .map(|d| d.file.clone())
                .unwrap_or_default();
            return Err(UsageError(format!(
                "{file} is not valid: {} error(s)",
                diagnostics.len()
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let file = loaded.path.display().to_string();
    for w in &loaded.warnings {
        println!("{w}");
    }
    let mut notes = Vec::new();
    if loaded.config.app.is_none() {
        notes.push("no `app`: deploys need --app NAME");
    }
    if loaded.config.primary_region.is_none() {
        notes.push("no `primary_region`: deploys need one, e.g. primary_region = \"ams\"");
    }
    for n in &notes {
        println!("{file}: warning: {n}");
    }
    let warnings = loaded.warnings.len() + notes.len();
    println!(
        "{file} is valid{}",
        match warnings {
            0 => String::new(),
            1 => " (1 warning)".into(),
            n => format!(" ({n} warnings)"),
        }
    );
    Ok(())
}

/// The variables a machine of `app` gets: the config's `[env]`, the secrets (by name), and the
/// platform's own (`FLY_*`, `ALOFT_*`, `PRIMARY_REGION`), in that order, each sorted.
fn env_lines(config: &aloft_config::AppConfig, app: &str, secrets: &[String]) -> Vec<EnvLine> {
    let mut out = Vec::new();
    for (name, value) in &config.env {
        let note = if secrets.contains(name) {
            "a secret of the same name wins".to_owned()
        } else {
            String::new()
        };
        out.push(EnvLine {
            name: name.clone(),
            value: Some(value.clone()),
            source: "config",
            note,
        });
    }
    for name in secrets {
        out.push(EnvLine {
            name: name.clone(),
            value: None,
            source: "secret",
            note: String::new(),
        });
    }
    let group = config.default_process_group();
    let memory = config.guest_for(&group).memory_mb.to_string();
    let groups = config.process_groups();
    let group_value = if groups.len() == 1 {
        (Some(group), String::new())
    } else {
        (None, format!("one of {}", groups.join(", ")))
    };
    let per_machine = || (None, "set per machine".to_owned());
    let platform: BTreeMap<&str, (Option<String>, String)> = BTreeMap::from([
        ("APP_NAME", (Some(app.to_owned()), String::new())),
        ("MACHINE_ID", per_machine()),
        ("ALLOC_ID", per_machine()),
        ("REGION", per_machine()),
        ("PUBLIC_IP", per_machine()),
        ("IMAGE_REF", (None, "the release's image".to_owned())),
        ("MACHINE_VERSION", per_machine()),
        ("PRIVATE_IP", per_machine()),
        ("PROCESS_GROUP", group_value),
        ("VM_MEMORY_MB", (Some(memory), String::new())),
    ]);
    for prefix in ["FLY_", "ALOFT_"] {
        for (name, (value, note)) in &platform {
            out.push(EnvLine {
                name: format!("{prefix}{name}"),
                value: value.clone(),
                source: "platform",
                note: note.clone(),
            });
        }
    }
    out.push(EnvLine {
        name: "PRIMARY_REGION".into(),
        value: config.primary_region.clone(),
        source: "platform",
        note: String::new(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lists_config_secrets_and_platform_and_says_which_wins() {
        let loaded = aloft_config::parse(
            "aloft.toml",
            "app = \"web\"\nprimary_region = \"ams\"\n[env]\nLOG = \"debug\"\nDB = \"x\"\n",
        )
        .unwrap();
        let lines = env_lines(&loaded.config, "web", &["DB".to_owned()]);
        let db = lines.iter().find(|l| l.name == "DB").unwrap();
        assert_eq!(
            (db.source, db.note.as_str()),
            ("config", "a secret of the same name wins")
        );
        assert!(lines
            .iter()
            .any(|l| l.name == "DB" && l.source == "secret" && l.value.is_none()));
        let name = lines.iter().find(|l| l.name == "FLY_APP_NAME").unwrap();
        assert_eq!(name.value.as_deref(), Some("web"));
        let primary = lines.iter().find(|l| l.name == "PRIMARY_REGION").unwrap();
        assert_eq!(primary.value.as_deref(), Some("ams"));
    }
}
