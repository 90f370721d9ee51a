//! The project's size limits, kept: no source file over 800 lines and no function over 100
//! lines in `dataplane/src`, `crds/src` and `controller/src` (test modules excepted).

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;
const CHECKED: [&str; 3] = ["dataplane/src", "crds/src", "controller/src"];

/// Functions over the limit today, each with who splits it. The list only shrinks: an entry
/// whose function is back under the limit (or gone) fails the test until it is removed.
const KNOWN_LONG: [(&str, &str); 0] = [];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
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

/// The lines before a file's `#[cfg(test)]` module (tests are excepted).
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .collect()
}

/// `(name, first line (1-based), length in lines)` of every function with a body: from its
/// `fn` line to the closing brace at the same indentation.
fn functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(after) = fn_keyword(trimmed) else {
            continue;
        };
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature ends at `{` (a body), `;` (a declaration) or `}` (a one-line body).
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = (open + 1..lines.len()).find(|&j| {
            let l = lines[j];
            l.len() > indent && l[indent..].starts_with('}') && l[..indent].trim().is_empty()
        });
        if let Some(close) = close {
            found.push((name, i + 1, close - i + 1));
        }
    }
    found
}

/// The text after `fn ` when `line` declares a function (any visibility, async, const).
fn fn_keyword(line: &str) -> Option<&str> {
    let mut rest = line;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    rest.strip_prefix("fn ")
}

#[test]
fn no_file_over_800_lines_and_no_function_over_100() {
    let root = workspace();
    let mut over = Vec::new();
    let mut seen_known = Vec::new();
    let mut files = Vec::new();
    for dir in CHECKED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "the sources were read: {}", files.len());
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let lines = code_lines(&text);
        if lines.len() > MAX_FILE_LINES {
            over.push(format!("{rel}: {} lines", lines.len()));
        }
        for (name, line, len) in functions(&lines) {
            if len <= MAX_FN_LINES {
                continue;
            }
            if KNOWN_LONG.contains(&(rel.as_str(), name.as_str())) {
                seen_known.push((rel.clone(), name));
                continue;
            }
            over.push(format!("{rel}:{line}: fn {name} is {len} lines"));
        }
    }
    assert!(over.is_empty(), "over the limits:\n{}", over.join("\n"));
    for (file, name) in KNOWN_LONG {
        assert!(
            seen_known.iter().any(|(f, n)| f == file && n == name),
            "{file}: fn {name} is no longer over the limit: remove it from KNOWN_LONG"
        );
    }
}

#[test]
fn the_reader_measures_functions_from_fn_to_closing_brace() {
    let text = "pub(crate) async fn a(\n    x: u8,\n) -> u8 {\n    x\n}\n\
                impl T {\n    fn b(&self) {}\n    fn c(&self) {\n        1;\n    }\n}\n\
                fn decl();\n";
    let found = functions(&code_lines(text));
    assert_eq!(
        found,
        [("a".into(), 1, 5), ("c".into(), 8, 3)],
        "b has its body on one line, decl none"
    );
}
