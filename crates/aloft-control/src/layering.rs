//! Keeps the crate's layers apart: `core` imports neither `services`, `api` nor `control`
//! (nor axum); a service imports neither `api` nor `control`. Reads the crate's own sources.

use std::path::{Path, PathBuf};

/// Modules above the core.
const ABOVE_CORE: &[&str] = &["services", "api", "control", "Server"];
/// Modules above the services.
const ABOVE_SERVICES: &[&str] = &["api", "control", "Server"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a line of code (comments are ignored) names one of `higher` by path
/// (`crate::api`, `super::super::api`, `aloft_control::api`, `crate::{core, api}`), or,
/// with `no_http`, axum.
fn crosses(line: &str, higher: &[&str], no_http: bool) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let prefixes = ["crate::", "super::", "aloft_control::"];
    let named = higher.iter().any(|m| {
        prefixes.iter().any(|prefix| {
            code.contains(&format!("{prefix}{m}"))
                || code.match_indices(&format!("{prefix}{{")).any(|(at, _)| {
                    code[at..]
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| word == *m)
                })
        })
    });
    named || (no_http && code.contains("axum"))
}

/// The lines under `src/<layer>` that cross, as `file:line: text`.
fn crossings(layer: &str, higher: &[&str], no_http: bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root.join(layer), &mut files);
    assert!(files.len() > 5, "too few source files under src/{layer}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (i, line) in text.lines().enumerate() {
            if crosses(line, higher, no_http) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_core_imports_no_service_and_no_http() {
    let found = crossings("core", ABOVE_CORE, true);
    assert!(found.is_empty(), "core reaches up:\n{}", found.join("\n"));
}

#[test]
fn services_import_neither_the_api_nor_control() {
    let found = crossings("services", ABOVE_SERVICES, false);
    assert!(
        found.is_empty(),
        "a service reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_every_form_of_import() {
    for line in [
        "use crate::api::ApiError;",
        "use super::super::api::ApiError;",
        "    let c: Arc<crate::control::Control> = todo!();",
        "use crate::{api, core};",
    ] {
        assert!(crosses(line, ABOVE_SERVICES, false), "{line}");
    }
    assert!(crosses("use axum::Json;", &[], true));
    assert!(!crosses(
        "use crate::core::Store; // not crate::api",
        ABOVE_SERVICES,
        false
    ));
    assert!(!crosses("use super::hosts::Hosts;", ABOVE_SERVICES, false));
    assert!(!crosses(
        "use crate::{core, services};",
        ABOVE_SERVICES,
        false
    ));
}
