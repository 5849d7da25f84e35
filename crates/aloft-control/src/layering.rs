//! Keeps the crate's layers apart: `core` imports neither `services`, `api` nor `control`;
//! a service imports neither `api` nor `control`. Reads the crate's own source files.

use std::path::{Path, PathBuf};

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

/// The lines of `layer` that name a module of a higher layer (`crate::api`, `super::super::api`
/// or the like), as `file:line: text`.
fn crossings(layer: &str, higher: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root.join(layer), &mut files);
    assert!(!files.is_empty(), "no source files under src/{layer}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let bad = higher.iter().any(|m| {
                code.contains(&format!("crate::{m}"))
                    || code.contains(&format!("super::{m}"))
                    || code.contains(&format!("aloft_control::{m}"))
            }) || (layer == "core" && code.contains("axum"));
            if bad {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_core_imports_no_service_and_no_http() {
    let found = crossings("core", &["services", "api", "control", "Server"]);
    assert!(found.is_empty(), "core reaches up:\n{}", found.join("\n"));
}

#[test]
fn services_import_no_api() {
    let found = crossings("services", &["api", "control", "Server"]);
    assert!(
        found.is_empty(),
        "a service reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_a_crossing() {
    // The scan must catch the forms an import takes, or the tests above prove nothing.
    let line = "use crate::api::ApiError;";
    assert!(["api"]
        .iter()
        .any(|m| line.contains(&format!("crate::{m}"))));
}
