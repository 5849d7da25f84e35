//! `aloft scale`: how many machines a process group has per region, and their size.
//!
//! Like `fly scale`, this works on machines directly: `count` clones the config of an existing
//! machine of the group (or of the current release when there is none), `vm` and `memory`
//! update every machine of the group one at a time. `auto` hands a region's count to the
//! control plane's autoscaler; `count` on a region takes it back (the pinned count wins).

mod auto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::path::Path;

use aloft_api::{
    Client, CreateMachineRequest, Machine, MachineConfig, MachineGuest, MachineState, WaitQuery,
};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::deploy::{group_of, live_machines};
use super::releases::current;
use crate::context::{self, UsageError};
use crate::output;

/// The most machines `scale count` makes per region.
pub const MAX_COUNT: i64 = 1000;
/// Seconds to wait for each machine to start.
const WAIT_SECS: u64 = 120;

#[derive(Debug, Subcommand)]
pub enum ScaleCommand {
    /// Make the group have N machines in each region.
    Count(CountArgs),
    /// Show the machines per process group and region with their size, and autoscaling.
    Show(ShowArgs),
    /// Scale a region's started machines with the load entering there, within bounds.
    Auto(auto::AutoArgs),
    /// Give every machine of the group a preset size (shared-cpu-1x … performance-16x).
    Vm(VmArgs),
    /// Give every machine of the group this much memory (MB, or e.g. `1gb`).
    Memory(MemoryArgs),
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Machines wanted per region (0 to 1000).
    #[arg(allow_negative_numbers = true)]
    pub count: i64,
    /// Region(s), repeatable or comma-separated (default: primary_region of the config,
    /// else the regions of the group's machines).
    #[arg(long, short, value_delimiter = ',')]
    pub region: Vec<String>,
    /// The process group (default: `app`).
    #[arg(long, short = 'g', default_value = aloft_config::DEFAULT_PROCESS_GROUP)]
    pub process_group: String,
    /// Destroy machines without asking.
    #[arg(long, short)]
    pub yes: bool,
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// A preset name, e.g. shared-cpu-2x.
    pub size: String,
    #[arg(long, short = 'g', default_value = aloft_config::DEFAULT_PROCESS_GROUP)]
    pub process_group: String,
    #[arg(long, short)]
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Megabytes, or a size such as `1gb`.
    pub memory: String,
    #[arg(long, short = 'g', default_value = aloft_config::DEFAULT_PROCESS_GROUP)]
    pub process_group: String,
    #[arg(long, short)]
    pub app: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("Count {0} is out of range: give 0 to {MAX_COUNT} machines per region")]
    BadCount(i64),
    #[error("Size {0:?} is not a preset; presets are {1}")]
    BadSize(String, String),
    #[error("Memory {0:?} is not a size in MB such as 512 or 1gb")]
    BadMemory(String),
    #[error("No region given: pass --region, set primary_region in aloft.toml, or create a machine first")]
    NoRegion,
    #[error("Process group {0:?} has no machine and the app has no release to copy a config from")]
    NoConfig(String),
    #[error("Process group {0:?} has no machines")]
    NoMachines(String),
}

pub async fn run(cmd: ScaleCommand) -> anyhow::Result<()> {
    match cmd {
        ScaleCommand::Count(a) => count(a).await,
        ScaleCommand::Show(a) => show(a).await,
        ScaleCommand::Auto(a) => auto::run(a).await,
        ScaleCommand::Vm(a) => {
            let preset = aloft_config::preset_named(&a.size).ok_or_else(|| {
                let names: Vec<&str> = aloft_config::PRESETS.iter().map(|p| p.name).collect();
                usage(ScaleError::BadSize(a.size.clone(), names.join(", ")))
            })?;
            let guest = move |old: Option<&MachineGuest>| MachineGuest {
                cpu_kind: preset.cpu_kind.to_owned(),
                cpus: i64::from(preset.cpus),
                memory_mb: i64::from(preset.memory_mb),
                extra: old.map(|g| g.extra.clone()).unwrap_or_default(),
            };
            resize(a.app, &a.process_group, guest).await
        }
        ScaleCommand::Memory(a) => {
            let mb = aloft_config::parse_size_mb(&a.memory)
                .filter(|mb| (1..=1_048_576).contains(mb))
                .ok_or_else(|| usage(ScaleError::BadMemory(a.memory.clone())))?;
            let guest = move |old: Option<&MachineGuest>| MachineGuest {
                memory_mb: mb as i64,
                ..old.cloned().unwrap_or_default()
            };
            resize(a.app, &a.process_group, guest).await
        }
    }
}

fn usage(e: ScaleError) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// Oldest first: by creation time, then by the first event's millisecond timestamp.
fn age_key(m: &Machine) -> (String, i64, String) {
    let first = m
        .events
        .iter()
        .map(|e| e.timestamp)
        .min()
        .unwrap_or(i64::MAX);
    (m.created_at.clone(), first, m.id.clone())
}

/// What `scale count` did in one region.
#[derive(Debug, Serialize)]
struct RegionResult {
    region: String,
    process_group: String,
    before: usize,
    after: usize,
    created: Vec<String>,
    destroyed: Vec<String>,
}

async fn count(args: CountArgs) -> anyhow::Result<()> {
    if !(0..=MAX_COUNT).contains(&args.count) {
        return Err(usage(ScaleError::BadCount(args.count)));
    }
    let want = args.count as usize;
    let app = context::app(args.app)?;
    let api = context::api()?;
    let group = args.process_group;
    let mut mine: Vec<Machine> = live_machines(&api, &app)
        .await?
        .into_iter()
        .filter(|m| group_of(m) == group)
        .collect();
    mine.sort_by_key(age_key);
    let regions = regions_for(args.region, &mine)?;
    // A pinned count wins: the regions leave the autoscaling policy.
    let unpinned = auto::unpin(&api, &app, &regions).await?;
    if !unpinned.is_empty() && !args.json {
        println!(
            "Autoscaling is now off in {} (the count is pinned; `aloft scale auto` turns it back on)",
            unpinned.join(", ")
        );
    }
    // The newest machine's config is the group's most recent one.
    let template = match mine.last() {
        Some(m) => m.config.clone(),
        None => release_config(&api, &app, &group).await?,
    };
    let to_destroy: usize = regions
        .iter()
        .map(|r| {
            mine.iter()
                .filter(|m| &m.region == r)
                .count()
                .saturating_sub(want)
        })
        .sum();
    if to_destroy > 0 && !args.yes && std::io::stdin().is_terminal() && !confirm(to_destroy)? {
        anyhow::bail!("Cancelled: no machine was destroyed");
    }
    let mut results = Vec::new();
    for region in regions {
        let here: Vec<&Machine> = mine.iter().filter(|m| m.region == region).collect();
        let mut result = RegionResult {
            region: region.clone(),
            process_group: group.clone(),
            before: here.len(),
            after: here.len(),
            created: Vec::new(),
            destroyed: Vec::new(),
        };
        if here.len() < want {
            for _ in here.len()..want {
                let m = create(&api, &app, &template, &region).await?;
                if !args.json {
                    println!(
                        "  {region}: created machine {} ({})",
                        m.id,
                        guest_text(m.config.guest.as_ref())
                    );
                }
                result.created.push(m.id);
                result.after += 1;
            }
        } else if here.len() > want {
            // Stopped machines go before started ones; the newest first within each.
            let mut victims = here.clone();
            victims.sort_by_key(|m| {
                (
                    m.state == MachineState::Started,
                    std::cmp::Reverse(age_key(m)),
                )
            });
            for m in victims.into_iter().take(here.len() - want) {
                api.delete_machine(&app, &m.id, true)
                    .await
                    .with_context(|| format!("Cannot destroy machine {}", m.id))?;
                if !args.json {
                    println!("  {region}: destroyed machine {} ({})", m.id, m.state);
                }
                result.destroyed.push(m.id.clone());
                result.after -= 1;
            }
        }
        if !args.json {
            println!(
                "{region}: {group} has {} machine(s) (was {}: {} created, {} destroyed)",
                result.after,
                result.before,
                result.created.len(),
                result.destroyed.len()
            );
        }
        results.push(result);
    }
    if args.json {
        return output::json(&results);
    }
    Ok(())
}

/// The regions to scale in: the flags, else the config's primary region, else the regions
/// the group's machines are in.
fn regions_for(flags: Vec<String>, mine: &[Machine]) -> anyhow::Result<Vec<String>> {
    let flags: BTreeSet<String> = flags.into_iter().filter(|r| !r.trim().is_empty()).collect();
    if !flags.is_empty() {
        return Ok(flags.into_iter().collect());
    }
    let primary = aloft_config::load_dir(Path::new("."))
        .ok()
        .and_then(|l| l.config.primary_region);
    if let Some(r) = primary {
        return Ok(vec![r]);
    }
    let existing: BTreeSet<String> = mine.iter().map(|m| m.region.clone()).collect();
    if existing.is_empty() {
        return Err(usage(ScaleError::NoRegion));
    }
    Ok(existing.into_iter().collect())
}

async fn release_config(api: &Client, app: &str, group: &str) -> anyhow::Result<MachineConfig> {
    let releases = api.list_releases(app).await?;
    current(&releases)
        .and_then(|r| r.configs.get(group).cloned())
        .ok_or_else(|| usage(ScaleError::NoConfig(group.to_owned())))
}

fn confirm(n: usize) -> anyhow::Result<bool> {
    use std::io::Write as _;
    print!("Destroy {n} machine(s)? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Creates one machine from `config` in `region` and waits for it to start.
async fn create(
    api: &Client,
    app: &str,
    config: &MachineConfig,
    region: &str,
) -> anyhow::Result<Machine> {
    let m = api
        .create_machine(
            app,
            &CreateMachineRequest {
                config: config.clone(),
                region: Some(region.to_owned()),
                ..CreateMachineRequest::default()
            },
        )
        .await
        .with_context(|| format!("Cannot create a machine in {region}"))?;
    // A scheduled machine starts on its schedule, not now.
    if config.schedule.is_none() {
        wait_started(api, app, &m).await?;
    }
    Ok(m)
}

async fn wait_started(api: &Client, app: &str, m: &Machine) -> anyhow::Result<()> {
    api.wait_machine(
        app,
        &m.id,
        &WaitQuery {
            state: Some("started".to_owned()),
            timeout: Some(WAIT_SECS),
            instance_id: Some(m.instance_id.clone()),
        },
    )
    .await
    .with_context(|| format!("Machine {} did not start", m.id))?;
    Ok(())
}

/// Updates every machine of the group with the guest `new_guest` makes from its old one.
async fn resize(
    app: Option<String>,
    group: &str,
    new_guest: impl Fn(Option<&MachineGuest>) -> MachineGuest,
) -> anyhow::Result<()> {
    let app = context::app(app)?;
    let api = context::api()?;
    let mut mine: Vec<Machine> = live_machines(&api, &app)
        .await?
        .into_iter()
        .filter(|m| group_of(m) == group)
        .collect();
    if mine.is_empty() {
        return Err(usage(ScaleError::NoMachines(group.to_owned())));
    }
    mine.sort_by_key(age_key);
    for old in &mine {
        let guest = new_guest(old.config.guest.as_ref());
        if old.config.guest.as_ref() == Some(&guest) {
            println!(
                "  {}: machine {} is already {}",
                old.region,
                old.id,
                guest_text(Some(&guest))
            );
            continue;
        }
        let config = MachineConfig {
            guest: Some(guest),
            ..old.config.clone()
        };
        let m = api
            .update_machine(
                &app,
                &old.id,
                &CreateMachineRequest {
                    config,
                    ..CreateMachineRequest::default()
                },
            )
            .await
            .with_context(|| format!("Cannot update machine {}", old.id))?;
        if old.state == MachineState::Started {
            wait_started(&api, &app, &m).await?;
        }
        println!(
            "  {}: machine {} is now {}",
            m.region,
            m.id,
            guest_text(m.config.guest.as_ref())
        );
    }
    println!("Scaled {} machine(s) of {app}'s {group} group", mine.len());
    Ok(())
}

/// The preset name of a guest, or `custom`.
fn size_name(g: &MachineGuest) -> &'static str {
    aloft_config::PRESETS
        .iter()
        .find(|p| {
            p.cpu_kind == g.cpu_kind
                && i64::from(p.cpus) == g.cpus
                && i64::from(p.memory_mb) == g.memory_mb
        })
        .map_or("custom", |p| p.name)
}

fn guest_text(g: Option<&MachineGuest>) -> String {
    let g = g.cloned().unwrap_or_default();
    format!(
        "{} {} {} cpu(s), {} MB",
        size_name(&g),
        g.cpu_kind,
        g.cpus,
        g.memory_mb
    )
}

/// One line of `scale show`: machines of a group in a region with the same size.
#[derive(Debug, Serialize)]
struct ShowLine {
    process_group: String,
    region: String,
    count: usize,
    size: String,
    cpu_kind: String,
    cpus: i64,
    memory_mb: i64,
    machines: Vec<String>,
    /// The region's autoscaling bounds, if it is autoscaled.
    #[serde(skip_serializing_if = "Option::is_none")]
    autoscale: Option<aloft_api::RegionScaling>,
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let mut lines: BTreeMap<(String, String, String, i64, i64), ShowLine> = BTreeMap::new();
    for m in live_machines(&api, &app).await? {
        let g = m.config.guest.clone().unwrap_or_default();
        let group = group_of(&m);
        let key = (
            group.clone(),
            m.region.clone(),
            g.cpu_kind.clone(),
            g.cpus,
            g.memory_mb,
        );
        let line = lines.entry(key).or_insert_with(|| ShowLine {
            process_group: group,
            region: m.region.clone(),
            count: 0,
            size: size_name(&g).to_owned(),
            cpu_kind: g.cpu_kind.clone(),
            cpus: g.cpus,
            memory_mb: g.memory_mb,
            machines: Vec::new(),
            autoscale: None,
        });
        line.count += 1;
        line.machines.push(m.id);
    }
    let mut lines: Vec<ShowLine> = lines.into_values().collect();
    let policy = api.get_autoscale(&app).await?;
    for line in &mut lines {
        line.autoscale = policy.regions.get(&line.region).copied();
    }
    // Autoscaled regions without machines yet still show their bounds.
    for (region, scaling) in &policy.regions {
        if !lines.iter().any(|l| &l.region == region) {
            lines.push(ShowLine {
                process_group: aloft_config::DEFAULT_PROCESS_GROUP.to_owned(),
                region: region.clone(),
                count: 0,
                size: "-".to_owned(),
                cpu_kind: "-".to_owned(),
                cpus: 0,
                memory_mb: 0,
                machines: Vec::new(),
                autoscale: Some(*scaling),
            });
        }
    }
    if args.json {
        return output::json(&lines);
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.process_group.clone(),
                l.region.clone(),
                l.count.to_string(),
                l.size.clone(),
                l.cpu_kind.clone(),
                l.cpus.to_string(),
                l.memory_mb.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "GROUP",
            "REGION",
            "COUNT",
            "SIZE",
            "CPU KIND",
            "CPUS",
            "MEMORY MB",
        ],
        &rows,
    );
    if !policy.regions.is_empty() {
        println!();
        auto::print_policy(&policy);
    }
    Ok(())
}
