//! Keeps the README's layout table and the docs' links honest (issue 15): every top-level
//! module and folder of `src/`, every file of `dataflows/src/`, and everything in `scripts/`
//! and `benches/` is named in the table; every path the table names exists; every relative
//! link of the README and of `docs/` resolves. A module added without a line in the table
//! fails here, naming it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README's table rows (lines starting with `|`, past the header), as cells.
fn table_rows(readme: &str) -> Vec<Vec<String>> {
    readme
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| where"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The words inside backticks in `text`.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// What must be named: path (relative to the root, folders with a trailing `/`).
fn must_be_named(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let list = |dir: &str, all: &mut Vec<String>| {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let slash = if entry.file_type().unwrap().is_dir() {
                "/"
            } else {
                ""
            };
            all.push(format!("{dir}/{name}{slash}"));
        }
    };
    for dir in ["src", "dataflows/src", "scripts", "benches"] {
        list(dir, &mut all);
    }
    all
}

/// Whether `path` is named: in full, or by its file name (or stem) in a row whose first
/// cell names its folder.
fn is_named(path: &str, rows: &[Vec<String>]) -> bool {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').expect("a path in a folder");
    let stem = name.split('.').next().unwrap_or(name);
    let folder = |p: &str| format!("{p}/");
    rows.iter().any(|row| {
        let all: Vec<String> = row.iter().flat_map(|c| ticked(c)).collect();
        if all.iter().any(|w| w == path || w == trimmed) {
            return true;
        }
        let first = ticked(&row[0]);
        // A row for the folder (`src/kafka/`) or its crate (`dataflows/` for dataflows/src).
        let owns = first
            .iter()
            .any(|w| *w == folder(parent) || (parent == "dataflows/src" && w == "dataflows/"));
        owns && all.iter().any(|w| {
            let w = w.trim_end_matches('/');
            w == name || w == stem
        })
    })
}

#[test]
fn every_module_and_folder_is_named_in_the_readme_table() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let rows = table_rows(&readme);
    assert!(rows.len() > 10, "the README's layout table was not found");
    let missing: Vec<String> = must_be_named(&root)
        .into_iter()
        .filter(|p| !is_named(p, &rows))
        .collect();
    assert!(
        missing.is_empty(),
        "not named in the README's layout table (add a line or a word to its row): {missing:?}"
    );
}

#[test]
fn everything_the_readme_table_names_exists() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut missing = BTreeSet::new();
    for row in table_rows(&readme) {
        let dirs: Vec<String> = ticked(&row[0])
            .into_iter()
            .filter(|w| w.ends_with('/') || w.contains('.'))
            .collect();
        for path in &dirs {
            if !root.join(path).exists() {
                missing.insert(path.clone());
            }
        }
        for cell in &row[1..] {
            for word in ticked(cell) {
                let is_file = [".rs", ".py", ".toml", ".sql"]
                    .iter()
                    .any(|ext| word.ends_with(ext));
                if !is_file || word.contains(' ') {
                    continue;
                }
                let found = dirs
                    .iter()
                    .filter(|d| d.ends_with('/'))
                    .any(|d| exists_below(&root.join(d), &word));
                if !found {
                    missing.insert(format!("{word} (row {})", row[0]));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README's table names what does not exist: {missing:?}"
    );
}

/// Whether a file called `name` (or the relative path `name`) exists in `dir` or below.
fn exists_below(dir: &Path, name: &str) -> bool {
    if dir.join(name).exists() {
        return true;
    }
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .any(|e| exists_below(&e.path(), name))
    })
}

#[test]
fn every_relative_link_of_the_readme_and_docs_resolves() {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("grafana/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let resolved = file.parent().unwrap().join(path);
            if !resolved.exists() {
                broken.push(format!(
                    "{}: {target}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "links that do not resolve: {broken:?}");
}
