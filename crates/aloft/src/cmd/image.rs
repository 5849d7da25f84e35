//! `aloft image …`: push images into the built-in registry.

use std::path::{Path, PathBuf};

use aloft_image::push::{self, PushProgress, PushTarget, PushableImage};
use anyhow::Context as _;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::context::{self, UsageError};
use crate::output::{self, Stream};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Push an OCI layout (DIR[:TAG]), a `docker save` archive (FILE.tar) or a local Docker
    /// image (docker://NAME[:TAG]) to the built-in registry as <app>:<tag>.
    Push {
        source: String,
        #[arg(long, short)]
        app: Option<String>,
        /// The tag to push as.
        #[arg(long, default_value = "latest")]
        tag: String,
    },
    /// List the images in the built-in registry (an app's, with --app).
    #[command(alias = "ls")]
    List {
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a tag (APP:TAG) or a manifest (APP@sha256:…) from the built-in registry; its
    /// blobs are freed by the registry's garbage collection.
    #[command(alias = "remove")]
    Rm { image: String },
}

pub async fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Push { source, app, tag } => {
            let app = context::app(app)?;
            let api = context::api()?;
            let destination = Destination::check(&api, &app).await?;
            let scratch = tempdir()?;
            let loaded = load_source(&source, &scratch);
            let pushed = match loaded {
                Ok(image) => destination.push(&image, &tag).await,
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_dir_all(&scratch);
            println!("Pushed {}", pushed?);
        }
        ImageCommand::List { app, json } => {
            let images = list(app.as_deref()).await?;
            if json {
                return crate::output::json(&images);
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .flat_map(|(repo, tags)| tags.iter().map(move |t| vec![repo.clone(), t.clone()]))
                .collect();
            crate::output::table(&["REPOSITORY", "TAG"], &rows);
        }
        ImageCommand::Rm { image } => {
            let (repo, reference) = match image.split_once('@') {
                Some((r, d)) => (r.to_string(), d.to_string()),
                None => match image.rsplit_once(':') {
                    Some((r, t)) => (r.to_string(), t.to_string()),
                    None => {
                        return Err(UsageError(format!(
                            "Image {image:?} is not APP:TAG or APP@DIGEST"
                        ))
                        .into())
                    }
                },
            };
            let (url, token) = context::api_url_and_token()?;
            let target = format!(
                "{}/v2/{repo}/manifests/{reference}",
                url.trim_end_matches('/')
            );
            let response = reqwest::Client::new()
                .delete(&target)
                .basic_auth("aloft", Some(token))
                .send()
                .await
                .with_context(|| format!("Request to {target} failed"))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!("Registry refused to remove {image} ({status}): {body}");
            }
            println!("Removed {image}");
        }
    }
    Ok(())
}

/// Where an app's images go in the built-in registry, checked before anything is pushed.
pub struct Destination {
    app: String,
    cluster: aloft_api::ClusterInfo,
    url: String,
    token: String,
}

impl Destination {
    /// Checks that the token is valid, the app exists and the token may push to it, and
    /// learns the registry's cluster-wide name.
    pub async fn check(api: &aloft_api::Client, app: &str) -> anyhow::Result<Destination> {
        let cluster = api
            .cluster()
            .await
            .with_context(|| format!("Cannot reach the control plane at {}", api.base_url()))?;
        match api.get_app(app).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {
                return Err(UsageError(format!(
                    "App {app:?} does not exist: create it with `aloft apps create {app}` \
                     (or `aloft launch` in the app's directory)"
                ))
                .into())
            }
            Err(e) => return Err(e).with_context(|| format!("Cannot push images for app {app:?}")),
        }
        Ok(Destination {
            app: app.to_owned(),
            cluster,
            url: api.base_url().to_owned(),
            token: api.token().to_owned(),
        })
    }

    /// Pushes `image` as `<app>:<tag>` through the CLI's route to the registry and returns
    /// the reference every host pulls it by: `<registry name>/<app>:<tag>@<digest>`, pinned
    /// to what was pushed.
    pub async fn push(&self, image: &PushableImage, tag: &str) -> anyhow::Result<String> {
        let registry = self
            .url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let target = PushTarget::parse(
            &format!("{registry}/{}:{tag}", self.app),
            Some(self.token.clone()),
            self.url.starts_with("http://"),
        )?;
        let digest = push_with_progress(image, &target).await?;
        Ok(format!(
            "{}/{}:{tag}@{digest}",
            self.cluster.registry, self.app
        ))
    }
}

/// Repositories (all, or one app's) and their tags, from the registry's catalog.
async fn list(
    app: Option<&str>,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<String>>> {
    let (url, token) = context::api_url_and_token()?;
    let base = url.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http
                .get(&url)
                .basic_auth("aloft", Some(token))
                .send()
                .await
                .with_context(|| format!("Request to {url} failed"))?;
            if !r.status().is_success() {
                anyhow::bail!("Registry answered {} to {url}", r.status());
            }
            Ok::<serde_json::Value, anyhow::Error>(r.json().await?)
        }
    };
    let catalog = get("/v2/_catalog?n=10000".into()).await?;
    let mut out = std::collections::BTreeMap::new();
    for repo in catalog["repositories"].as_array().into_iter().flatten() {
        let Some(repo) = repo.as_str() else { continue };
        if app.is_some_and(|a| repo.split('/').next() != Some(a)) {
            continue;
        }
        let tags = get(format!("/v2/{repo}/tags/list")).await?;
        let tags = tags["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        out.insert(repo.to_string(), tags);
    }
    Ok(out)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("aloft-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Reads an image from a layout directory, a docker archive or the local Docker engine.
pub fn load_source(source: &str, scratch: &Path) -> anyhow::Result<PushableImage> {
    if let Some(name) = source.strip_prefix("docker://") {
        let archive = scratch.join("docker.tar");
        let status = std::process::Command::new("docker")
            .args(["save", "-o"])
            .arg(&archive)
            .arg(name)
            .status()
            .context("Cannot run `docker save`")?;
        if !status.success() {
            return Err(UsageError(format!("`docker save {name}` failed")).into());
        }
        return Ok(push::from_docker_archive(
            &archive,
            &scratch.join("unpacked"),
        )?);
    }
    let (path, tag) = match source.rsplit_once(':') {
        Some((p, t)) if Path::new(p).is_dir() => (PathBuf::from(p), Some(t.to_string())),
        _ => (PathBuf::from(source), None),
    };
    if path.is_dir() {
        return Ok(push::from_oci_layout(&path, tag.as_deref())?);
    }
    if path.is_file() {
        return Ok(push::from_docker_archive(&path, &scratch.join("unpacked"))?);
    }
    Err(UsageError(format!(
        "Image source {source:?} is not an OCI layout directory, a docker archive or docker://NAME"
    ))
    .into())
}

/// Pushes with one progress bar per blob on a terminal, a plain line per blob otherwise.
pub async fn push_with_progress(
    image: &PushableImage,
    target: &PushTarget,
) -> anyhow::Result<String> {
    let terminal = Stream::Stderr.is_terminal();
    let bars = indicatif::MultiProgress::new();
    let template = if output::colour(Stream::Stderr) {
        "{prefix:.bold} {bar:30} {bytes}/{total_bytes} {msg}"
    } else {
        "{prefix} {bar:30} {bytes}/{total_bytes} {msg}"
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let live = std::sync::Mutex::new(std::collections::HashMap::<String, ProgressBar>::new());
    let short = |d: &str| {
        d.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    let report = |p: PushProgress| {
        if !terminal {
            match p {
                PushProgress::Skipped { digest, size } => {
                    eprintln!("  {} {}: already there", short(&digest), human(size));
                }
                PushProgress::Uploading { .. } => {}
                PushProgress::Uploaded { digest, size } => {
                    eprintln!("  {} {}: pushed", short(&digest), human(size));
                }
            }
            return;
        }
        let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            PushProgress::Skipped { digest, size } => {
                let bar = bars.add(ProgressBar::new(size).with_style(style.clone()));
                bar.set_prefix(short(&digest));
                bar.finish_with_message("already there");
            }
            PushProgress::Uploading { digest, size } => {
                let bar = bars.add(ProgressBar::new(size).with_style(style.clone()));
                bar.set_prefix(short(&digest));
                bar.set_message("uploading");
                live.insert(digest, bar);
            }
            PushProgress::Uploaded { digest, size } => {
                if let Some(bar) = live.remove(&digest) {
                    bar.set_position(size);
                    bar.finish_with_message("pushed");
                }
            }
        }
    };
    Ok(push::push(image, target, &report).await?)
}

/// A size in bytes as people read it: `512 B`, `3.4 MB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human(512), "512 B");
        assert_eq!(super::human(3_400_000), "3.4 MB");
        assert_eq!(super::human(1_000), "1.0 KB");
    }
}
