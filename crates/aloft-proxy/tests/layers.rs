//! The crate's modules import only modules of lower layers (the graph drawn in `src/lib.rs`):
//! nothing calls back up, and a module added without a layer is noticed.

use std::collections::BTreeMap;
use std::path::Path;

/// Top to bottom. A module may import modules of the layers after its own.
const LAYERS: &[&[&str]] = &[
    &["edge"],
    &["tcp"],
    &["serve"],
    &["h1", "hyper_engine"],
    &["flow"],
    &["wake"],
    &["shared"],
    &["options"],
    &["headers", "tls"],
    &["acme", "balance", "upstream"],
    &[
        "body",
        "chunked",
        "load",
        "metrics",
        "proxy_proto",
        "replay",
        "routes",
    ],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The `crate::NAME` paths a source file uses outside its tests and comments.
fn imports(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

/// Every module's source files (`h1/*.rs` count as `h1`), by module name.
fn modules() -> BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |name: String, path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        out.entry(name).or_default().push(text);
    };
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            for file in std::fs::read_dir(&path).unwrap() {
                add(name.clone(), &file.unwrap().path());
            }
        } else if let Some(stem) = path.file_stem().filter(|s| *s != "lib") {
            add(stem.to_string_lossy().to_string(), &path);
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let modules = modules();
    assert!(modules.contains_key("flow") && modules.contains_key("h1"));
    let mut wrong = Vec::new();
    for (name, sources) in &modules {
        let Some(own) = layer(name) else {
            wrong.push(format!("module {name} has no layer in this test"));
            continue;
        };
        for import in sources.iter().flat_map(|s| imports(s)) {
            if import == *name {
                continue;
            }
            match layer(&import) {
                Some(l) if l > own => {}
                _ => wrong.push(format!("{name} imports crate::{import}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn imports_are_found_in_code_only() {
    let source = "use crate::flow::{self, Flow};\n// crate::edge in a comment\nfn f() { crate::wake::wake(); }\n#[cfg(test)]\nmod tests { use crate::edge; }\n";
    assert_eq!(imports(source), ["flow", "wake"]);
}
