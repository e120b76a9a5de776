//! `cargo xtask lint`'s direction check: the data path of `tracer` is one-way (see
//! DESIGN.md), so each top-level module may import only the modules upstream of it. A use of
//! `crate::…` (or a `super::…` that climbs to the crate root) against the direction fails the
//! lint with the file, line and the rule it breaks. Tests count too: a test that needs another
//! layer belongs in that layer, or in the crate's `tests/`.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use syn::visit::Visit;

/// Each module and what it may import besides itself. `main.rs` and `lib.rs` (the crate's
/// edges) are not checked; `commands` may import anything, and nothing imports it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("text", &[]),
    // The learners' words (a leaf, like text).
    ("i18n", &[]),
    ("error", &["text"]),
    ("model", &["text", "i18n", "error"]),
    ("cli", &["model", "text", "i18n", "error"]),
    ("kernel", &["model", "text", "i18n", "error"]),
    ("source", &["kernel", "model", "text", "i18n", "error"]),
    ("output", &["model", "text", "i18n", "error"]),
    ("metrics", &["model", "text", "i18n", "error"]),
    // Tests only: every sink at once (output and metrics) fed hostile names.
    (
        "sink_tests",
        &["model", "output", "metrics", "text", "i18n", "error"],
    ),
    (
        "pipeline",
        &[
            "cli", "source", "kernel", "model", "output", "metrics", "text", "i18n", "error",
        ],
    ),
];

/// One import against the direction.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub from: String,
    pub to: String,
}

/// Checks every file under `src` (tracer/src); fails with the list of violations.
pub fn check(src: &Path) -> Result<()> {
    let mut violations = BTreeSet::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let Some(module) = module_path(&rel) else {
            continue;
        };
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        for (line, to) in imports(&ast, &module) {
            if !allowed(&module[0], &to) {
                violations.insert(Violation {
                    file: rel.clone(),
                    line,
                    from: module[0].clone(),
                    to,
                });
            }
        }
    }
    if violations.is_empty() {
        println!("direction: every import follows the one-way path");
        return Ok(());
    }
    for v in &violations {
        eprintln!(
            "tracer/src/{}:{}: `{}` imports `{}`, against the one-way path (DESIGN.md); {} may import: {}",
            v.file.display(),
            v.line,
            v.from,
            v.to,
            v.from,
            allowed_list(&v.from)
        );
    }
    bail!("{} import(s) against the direction", violations.len())
}

fn allowed(from: &str, to: &str) -> bool {
    if from == to || from == "commands" {
        return true;
    }
    ALLOWED
        .iter()
        .find(|(m, _)| *m == from)
        .is_some_and(|(_, ok)| ok.contains(&to))
}

fn allowed_list(from: &str) -> String {
    ALLOWED
        .iter()
        .find(|(m, _)| *m == from)
        .map(|(_, ok)| {
            if ok.is_empty() {
                "nothing".to_string()
            } else {
                ok.join(", ")
            }
        })
        .unwrap_or_else(|| {
            "anything (module not in the rules: add it to xtask/src/direction.rs)".into()
        })
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The module path of a file relative to the crate's src (`model/table.rs` → [model, table]);
/// None for the crate's edges (main.rs, lib.rs).
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [only] if only == "main" || only == "lib" => None,
        _ => Some(parts),
    }
}

/// (line, top-level module) of every `crate::…` or root-reaching `super::…` path in a file.
fn imports(ast: &syn::File, module: &[String]) -> Vec<(usize, String)> {
    let mut finder = Finder {
        module: module.to_vec(),
        depth: 0,
        found: Vec::new(),
    };
    finder.visit_file(ast);
    finder.found
}

struct Finder {
    /// The file's module path.
    module: Vec<String>,
    /// Inline `mod x { … }` nesting inside the file (each adds a level `super` climbs).
    depth: usize,
    found: Vec<(usize, String)>,
}

impl Finder {
    /// The top-level module a path names, from its leading segments.
    fn target<'a>(&self, mut segments: impl Iterator<Item = &'a syn::Ident>) -> Option<String> {
        let first = segments.next()?;
        if first == "crate" {
            return segments.next().map(|s| s.to_string());
        }
        if first != "super" {
            return None;
        }
        // Climb: the file's own module levels, plus the inline modules around the path.
        let mut level = self.module.len() + self.depth;
        let mut next = Some(first);
        while let Some(seg) = next {
            if seg != "super" {
                return (level == 0).then(|| seg.to_string());
            }
            level = level.saturating_sub(1);
            next = segments.next();
        }
        None
    }

    fn note(&mut self, line: usize, target: Option<String>) {
        if let Some(t) = target {
            self.found.push((line, t));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<syn::Ident>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.clone());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            syn::UseTree::Glob(_) => {
                if let Some(last) = prefix.last().cloned() {
                    prefix.pop();
                    self.use_leaf(prefix, &last);
                    prefix.push(last);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[syn::Ident], leaf: &syn::Ident) {
        let line = leaf.span().start().line;
        let target = self.target(prefix.iter().chain(std::iter::once(leaf)));
        self.note(line, target);
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let line = path
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        let target = self.target(path.segments.iter().map(|s| &s.ident));
        self.note(line, target);
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.depth += 1;
        syn::visit::visit_item_mod(self, item);
        self.depth -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(src: &str, module: &[&str]) -> Vec<String> {
        let ast = syn::parse_file(src).unwrap();
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        imports(&ast, &module).into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn finds_crate_and_root_reaching_super_paths() {
        let src = "use crate::{kernel::netns, model::{Event, table::Owner}};\n\
                   use super::ports;\n\
                   use super::super::output::Sink;\n\
                   fn f() { crate::metrics::render(); let _ = std::io::stdout(); }\n\
                   mod tests { use super::super::super::commands::x; }";
        assert_eq!(
            found(src, &["model", "table"]),
            ["kernel", "model", "model", "output", "metrics", "commands"]
        );
    }

    #[test]
    fn the_rules_say_which_way_data_flows() {
        assert!(allowed("kernel", "model"));
        assert!(!allowed("model", "kernel"));
        assert!(!allowed("metrics", "commands"));
        assert!(!allowed("output", "metrics"));
        assert!(allowed("commands", "pipeline"));
        assert!(!allowed("pipeline", "commands"));
    }

    #[test]
    fn module_paths() {
        assert_eq!(
            module_path(Path::new("model/mod.rs")),
            Some(vec!["model".into()])
        );
        assert_eq!(module_path(Path::new("main.rs")), None);
        assert_eq!(
            module_path(Path::new("metrics/server/limits.rs")),
            Some(vec!["metrics".into(), "server".into(), "limits".into()])
        );
    }
}
