//! The import rule of docs/architecture.md, checked on the source: dependencies point
//! inwards. A module of a layer that names a forbidden module or crate (outside its tests
//! and comments) fails `forbidden_imports_are_absent`.

use std::path::{Path, PathBuf};

/// A layer: its files (a directory of `src/` and the file of the same name), and what no
/// line of them may name.
struct Rule {
    layer: &'static str,
    forbidden: &'static [&'static str],
}

const ADAPTERS_AND_DRIVERS: &[&str] = &[
    "crate::app",
    "crate::auth",
    "crate::bench",
    "crate::cli",
    "crate::config",
    "crate::http",
    "crate::kms",
    "crate::metrics",
    "crate::store",
    "crate::telemetry",
    "sqlx::",
    "axum::",
    "hyper::",
    "tower::",
    "clap::",
    "utoipa::",
    "aws_sdk_kms::",
    "aws_config::",
];

const RULES: &[Rule] = &[
    Rule {
        layer: "domain",
        forbidden: ADAPTERS_AND_DRIVERS,
    },
    Rule {
        layer: "store",
        forbidden: &[
            "crate::app",
            "crate::cli",
            "crate::http",
            "axum::",
            "clap::",
            "utoipa::",
        ],
    },
    Rule {
        layer: "kms",
        forbidden: &[
            "crate::app",
            "crate::cli",
            "crate::http",
            "crate::store",
            "sqlx::",
            "axum::",
            "clap::",
        ],
    },
    Rule {
        layer: "auth",
        forbidden: &[
            "crate::app",
            "crate::cli",
            "crate::http",
            "crate::store",
            "sqlx::",
            "axum::",
            "clap::",
        ],
    },
    Rule {
        layer: "http",
        forbidden: &["crate::cli", "crate::store", "sqlx::", "clap::"],
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of a file that count: up to its `#[cfg(test)]` module, comments left out.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("")))
}

/// Every place a layer's files name what its rule forbids: `(file:line, name)`.
fn violations(src: &Path, rule: &Rule) -> Vec<(String, &'static str)> {
    let mut files = Vec::new();
    rust_files(&src.join(rule.layer), &mut files);
    files.push(src.join(format!("{}.rs", rule.layer)));
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (n, line) in code_lines(&text) {
            for name in rule.forbidden {
                // `use sqlx::…` and `sqlx::query(…)` alike; `crate::kms` also as `crate::kms::…`.
                let hit = line.match_indices(name).any(|(at, _)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + name.len()..].chars().next();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                        && (name.ends_with("::")
                            || !after.is_some_and(|c| c.is_alphanumeric() || c == '_'))
                });
                if hit {
                    found.push((format!("{}:{n}", file.display()), *name));
                }
            }
        }
    }
    found
}

#[test]
fn forbidden_imports_are_absent() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    for rule in RULES {
        assert!(src.join(rule.layer).is_dir(), "no layer {}", rule.layer);
        all.extend(
            violations(&src, rule)
                .into_iter()
                .map(|(at, name)| format!("{at}: {} must not name {name}", rule.layer)),
        );
    }
    assert!(
        all.is_empty(),
        "imports against docs/architecture.md:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_check_sees_a_forbidden_import() {
    let dir = std::env::temp_dir().join(format!("repocrypt-layers-{}", std::process::id()));
    let layer = dir.join("domain");
    std::fs::create_dir_all(&layer).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        layer.join("x.rs"),
        "use crate::store::Store; // a comment naming crate::http is fine\n\
         fn f() { sqlx::query(\"\"); }\n\
         #[cfg(test)]\nmod tests { use crate::kms::Kms; }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let found = violations(&dir, &RULES[0]);
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = found.iter().map(|(_, name)| *name).collect();
    assert_eq!(names, ["crate::store", "sqlx::"], "{found:?}");
}
