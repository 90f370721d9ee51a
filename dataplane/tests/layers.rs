//! Keeps the layering rule of `src/lib.rs` true: every `crate::<module>` path in `src/` points
//! to the same or a lower layer, the uses within a layer have no cycle, and every top-level
//! module has a layer. Inside `http/` and `mcp/` the sub-modules (`super::x`,
//! `crate::mcp::x`) have no cycle either; each folder's `mod.rs` is left out of that check, as
//! it declares the sub-modules and holds what they share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/lib.rs`'s layers, highest first.
const LAYERS: [&[&str]; 5] = [
    &["app", "config"],
    &["http", "bridge"],
    &["mcp", "console", "limits", "metrics"],
    &["upstream", "fuzzing"],
    &[
        "auth",
        "authn",
        "audit",
        "session",
        "postgres",
        "source",
        "controller_client",
        "connect",
        "observed",
        "identity_token",
        "era",
        "jsonrpc",
        "log_level",
        "scope",
        "process_guard",
        "server_config",
    ],
];

/// Upward uses not yet removed, as (file under `src/`, used top-level module); an entry that no
/// longer occurs fails `the_allowlist_is_not_stale`. Empty: keep it so.
const ALLOWED_UPWARD: &[(&str, &str)] = &[];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Every `crate::<name>` in `text` (use lines and inline paths alike), comments skipped.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `reflow_crds::…` or the like, not this crate
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// `file`'s path under `src/`, with `/` separators.
fn relative(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    parts.join("/")
}

/// Module → the other top-level modules it uses (the allowlisted upward uses left out).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = top_module(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let rel = relative(&src, &file);
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(
            crate_paths(&text)
                .into_iter()
                .filter(|m| *m != module && !ALLOWED_UPWARD.contains(&(rel.as_str(), m.as_str()))),
        );
    }
    graph
}

#[test]
fn every_top_level_module_has_a_layer() {
    let graph = module_graph();
    assert!(graph.len() >= 15, "src/ was read: {:?}", graph.keys());
    let missing: Vec<&String> = graph.keys().filter(|m| layer(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "give {missing:?} a layer in src/lib.rs and here"
    );
}

#[test]
fn no_module_uses_a_higher_layer() {
    let mut upward = Vec::new();
    for (module, uses) in module_graph() {
        let Some(own) = layer(&module) else { continue };
        for used in uses {
            if layer(&used).is_some_and(|l| l < own) {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(upward.is_empty(), "upward uses: {upward:?}");
}

#[test]
fn the_module_graph_has_no_cycle() {
    let cycle = find_cycle(&module_graph());
    assert!(
        cycle.is_none(),
        "cycle: {}",
        cycle.unwrap_or_default().join(" -> ")
    );
}

/// The sub-modules of `src/<top>/` (files and folders, `mod.rs` excepted).
fn sub_modules(top: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(top);
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let name = name.strip_suffix(".rs").unwrap_or(name);
        if name != "mod" {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The leading identifier of `rest`, or of each item of a `{a, b::c}` group it starts with.
fn heads(rest: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    // Items at depth 0 of the group, up to its closing brace.
    let (mut depth, mut item, mut out) = (0usize, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&item));
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.push(ident(&item));
    out
}

/// Sub-module → the sibling sub-modules it names, inside `src/<top>/` (tests skipped).
fn sub_module_graph(top: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(top);
    let names = sub_modules(top);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let prefixes = ["super::".to_owned(), format!("crate::{top}::")];
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let Some(first) = rel.components().next().and_then(|c| c.as_os_str().to_str()) else {
            continue;
        };
        let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if module == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let uses = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for prefix in &prefixes {
                let mut rest = line;
                while let Some(at) = rest.find(prefix.as_str()) {
                    let before = rest[..at].chars().next_back();
                    rest = &rest[at + prefix.len()..];
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    uses.extend(
                        heads(rest)
                            .into_iter()
                            .filter(|h| names.contains(h) && *h != module),
                    );
                }
            }
        }
    }
    graph
}

/// The first cycle of `graph`, if any (depth-first search with colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match colour.get(m) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut cycle = stack[at..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        colour.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, colour, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        colour.insert(m.to_owned(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut colour, &mut Vec::new()))
}

#[test]
fn the_sub_modules_of_http_and_mcp_have_no_cycle() {
    for top in ["http", "mcp"] {
        let graph = sub_module_graph(top);
        assert!(graph.len() >= 10, "src/{top}/ was read: {:?}", graph.keys());
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        assert!(edges >= 10, "src/{top}/: uses were read: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("cycle in src/{top}/: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_sub_module_reader_follows_groups_and_finds_cycles() {
    assert_eq!(heads("{a, b::{c, d}, e as f}::x"), ["a", "b", "e"]);
    assert_eq!(heads("relay::Progress;"), ["relay"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn the_allowlist_is_not_stale() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (file, used) in ALLOWED_UPWARD {
        let text =
            std::fs::read_to_string(src.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            crate_paths(&text).contains(*used),
            "{file} no longer uses crate::{used}: drop it from ALLOWED_UPWARD"
        );
    }
}

#[test]
fn the_reader_sees_paths_and_skips_other_crates_and_comments() {
    let text = "use crate::session::Scope;\nlet x = crate::gateway::LATEST; // crate::app\n\
                use reflow_crds::snapshot;\nfoo_crate::bar();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["gateway", "session"]);
}

/// The router is transport-neutral: nothing under `src/mcp/` names axum (answers are
/// `mcp::answer::Answer`, rendered by `http::render`).
#[test]
fn the_router_names_no_http_framework() {
    let mcp = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("mcp");
    let mut files = Vec::new();
    rust_files(&mcp, &mut files);
    assert!(files.len() >= 10, "src/mcp/ was read");
    let naming: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{e}"));
            text.lines()
                .any(|l| l.split("//").next().unwrap_or("").contains("axum"))
        })
        .map(|f| relative(&mcp, f))
        .collect();
    assert!(naming.is_empty(), "axum named in src/mcp/: {naming:?}");
}
