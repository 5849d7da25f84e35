//! `aloft logs`: the app's log lines, merged from the hosts that run its machines.

use aloft_api::{LogEntry, LogsQuery};
use clap::Args;
use futures::StreamExt as _;

use crate::context;

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(long, short)]
    app: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(long, short)]
    follow: bool,
    /// Only machines in this region.
    #[arg(long, short)]
    region: Option<String>,
    /// Only this machine.
    #[arg(long, short)]
    machine: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let api = context::api()?;
    let app = context::app(args.app)?;
    let query = LogsQuery {
        region: args.region,
        machine: args.machine,
        follow: args.follow,
    };
    let mut lines = Box::pin(api.app_logs(&app, &query).await?);
    while let Some(entry) = lines.next().await {
        let entry = entry?;
        if args.json {
            println!("{}", serde_json::to_string(&entry)?);
        } else {
            println!("{}", line(&entry));
        }
    }
    Ok(())
}

/// `2024-05-01T10:00:00.123Z app[3d8d9] ams [info] message`.
fn line(e: &LogEntry) -> String {
    format!(
        "{} app[{}] {} [{}] {}",
        e.timestamp,
        e.instance,
        e.region,
        e.level.as_deref().unwrap_or("info"),
        e.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_time_machine_region_and_level() {
        let e = LogEntry {
            timestamp: "2024-05-01T10:00:00.123Z".into(),
            message: "hello".into(),
            level: Some("info".into()),
            instance: "m1".into(),
            region: "ams".into(),
            stream: "stdout".into(),
        };
        assert_eq!(
            line(&e),
            "2024-05-01T10:00:00.123Z app[m1] ams [info] hello"
        );
    }
}
