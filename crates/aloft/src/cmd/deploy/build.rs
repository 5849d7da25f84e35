//! Building the app's image from its Dockerfile with the local Docker engine, when a deploy
//! has no image: `[build] dockerfile`, or a `Dockerfile` next to the config (as Fly does).
//!
//! `docker build -f DOCKERFILE -t aloft-build/APP:latest [--target T] [--build-arg K=V]… DIR`
//! with the config's directory as the context; the result is then pushed like
//! `--image docker://aloft-build/APP:latest`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// How many of the build's last output lines an error repeats.
const TAIL_LINES: usize = 12;

/// What to build, from `[build]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Docker is not installed (no `docker` program on PATH): install it, or pass --image")]
    NotInstalled,
    #[error("The Docker engine is not running (`docker info` failed): {0}")]
    EngineDown(String),
    #[error("Dockerfile {} does not exist", .0.display())]
    NoDockerfile(PathBuf),
    #[error("`docker build` of {} failed ({status}); its last output:{tail}", dockerfile.display())]
    Failed {
        dockerfile: PathBuf,
        status: String,
        tail: String,
    },
    #[error("Cannot run `docker {what}`")]
    Run {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What to build for a config in `dir` without an image: `[build] dockerfile` (relative to
/// `dir`), else `dir/Dockerfile` when it exists; `None` when neither.
pub fn spec(dir: &Path, build: Option<&aloft_config::Build>) -> Option<BuildSpec> {
    let dockerfile = match build.and_then(|b| b.dockerfile.as_deref()) {
        Some(file) => dir.join(file),
        None => {
            let default = dir.join("Dockerfile");
            if !default.is_file() {
                return None;
            }
            default
        }
    };
    Some(BuildSpec {
        dockerfile,
        context: dir.to_path_buf(),
        target: build.and_then(|b| b.build_target.clone()),
        args: build.map(|b| b.args.clone()).unwrap_or_default(),
    })
}

/// The local Docker tag a build of `app` gets.
pub fn local_tag(app: &str) -> String {
    format!("aloft-build/{app}:latest")
}

/// The `docker build` arguments for `spec`, tagged `tag`.
pub fn build_args(spec: &BuildSpec, tag: &str) -> Vec<String> {
    let mut args = vec![
        "build".to_owned(),
        "-f".to_owned(),
        spec.dockerfile.to_string_lossy().into_owned(),
        "-t".to_owned(),
        tag.to_owned(),
    ];
    if let Some(target) = &spec.target {
        args.extend(["--target".to_owned(), target.clone()]);
    }
    for (k, v) in &spec.args {
        args.extend(["--build-arg".to_owned(), format!("{k}={v}")]);
    }
    args.push(spec.context.to_string_lossy().into_owned());
    args
}

/// Builds `spec` as `tag` with the local Docker engine, printing the build's output as it
/// comes.
pub async fn docker_build(spec: BuildSpec, tag: String) -> Result<(), BuildError> {
    tokio::task::spawn_blocking(move || build_blocking(&spec, &tag))
        .await
        .unwrap_or_else(|e| {
            Err(BuildError::Run {
                what: "build",
                source: std::io::Error::other(e.to_string()),
            })
        })
}

fn build_blocking(spec: &BuildSpec, tag: &str) -> Result<(), BuildError> {
    if !spec.dockerfile.is_file() {
        return Err(BuildError::NoDockerfile(spec.dockerfile.clone()));
    }
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BuildError::NotInstalled),
        Err(source) => {
            return Err(BuildError::Run {
                what: "info",
                source,
            })
        }
        Ok(out) if !out.status.success() => {
            let text = String::from_utf8_lossy(&out.stderr);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(BuildError::EngineDown(
                last.unwrap_or("no answer").trim().to_owned(),
            ));
        }
        Ok(_) => {}
    }
    println!(
        "Building {} with Docker ({})",
        tag,
        spec.dockerfile.display()
    );
    let mut child = Command::new("docker")
        .args(build_args(spec, tag))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Run {
            what: "build",
            source,
        })?;
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                println!("  {line}");
                if line.trim().is_empty() {
                    continue;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    })
    .collect();
    let status = child.wait().map_err(|source| BuildError::Run {
        what: "build",
        source,
    })?;
    for r in readers {
        let _ = r.join();
    }
    if status.success() {
        return Ok(());
    }
    let status = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    };
    let lines = tail.lock().unwrap_or_else(|e| e.into_inner());
    let tail: String = lines.iter().map(|l| format!("\n  | {l}")).collect();
    Err(BuildError::Failed {
        dockerfile: spec.dockerfile.clone(),
        status,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dockerfile: Option<&str>) -> aloft_config::Build {
        aloft_config::Build {
            image: None,
            dockerfile: dockerfile.map(str::to_owned),
            build_target: Some("runtime".to_owned()),
            args: BTreeMap::from([("NODE_VERSION".to_owned(), "20".to_owned())]),
        }
    }

    #[test]
    fn a_dockerfile_of_the_config_is_built_with_target_and_args() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(Some("Dockerfile.prod"));
        let s = spec(dir.path(), Some(&b)).unwrap();
        assert_eq!(s.dockerfile, dir.path().join("Dockerfile.prod"));
        let args = build_args(&s, "aloft-build/web:latest");
        let ctx = dir.path().to_string_lossy().into_owned();
        let file = dir
            .path()
            .join("Dockerfile.prod")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            args,
            [
                "build",
                "-f",
                &file,
                "-t",
                "aloft-build/web:latest",
                "--target",
                "runtime",
                "--build-arg",
                "NODE_VERSION=20",
                &ctx
            ]
        );
    }

    #[test]
    fn a_dockerfile_beside_the_config_is_found_and_none_means_no_build() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(spec(dir.path(), None), None);
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let s = spec(dir.path(), None).unwrap();
        assert_eq!(s.dockerfile, dir.path().join("Dockerfile"));
        assert_eq!(s.target, None);
        assert!(s.args.is_empty());
    }
}
