//! The snapshot's wire format (what the controller pushes to every dataplane, and the standalone
//! snapshot file) is its own: `crds/testdata/wire/manifests.yaml` compiled and serialized must
//! equal the checked-in `crds/tests/wire/snapshot.json` byte for byte (sealed ciphertexts, whose
//! nonces are random, masked; the sealing key is fixed, so digests and the hash are stable), and
//! no file of `src/snapshot/` may name a CRD type (`crate::api`), so renaming a v1alpha1 field
//! changes the compiler, never the format.
//!
//! Regenerate after an intended format change with
//! `REFLOW_BLESS=1 cargo test -p reflow-crds --test wire_format` and review the diff: a
//! dataplane that has not been upgraded yet reads this format.

mod common;

use std::path::{Path, PathBuf};

use common::{compile_with, key};
use reflow_crds::{Snapshot, loader};
use serde_json::Value;

/// What a masked ciphertext reads as in the golden.
const MASK: &str = "<sealed>";

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden_path() -> PathBuf {
    crate_dir().join("tests/wire/snapshot.json")
}

fn compiled() -> Snapshot {
    let dir = crate_dir().join("testdata/wire");
    let loaded = loader::load_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(loaded.skipped.is_empty(), "skipped: {:?}", loaded.skipped);
    let c = compile_with(&loaded.inputs, &key());
    // Every object is accepted; `wire/legacy` turns its sandbox off on purpose.
    let problems: Vec<_> = c
        .problems()
        .filter(|r| {
            r.name != "legacy"
                || r.conditions
                    .iter()
                    .any(|k| !k.status && k.type_ != "Sandboxed")
        })
        .collect();
    assert!(
        problems.is_empty(),
        "the fixture has problems: {problems:#?}"
    );
    c.snapshot
}

/// Replaces every `sealed` string (AES-GCM under a random nonce) with [`MASK`].
fn mask_sealed(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if k == "sealed" && item.is_string() {
                    *item = Value::String(MASK.to_owned());
                } else {
                    mask_sealed(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_sealed),
        _ => {}
    }
}

/// The wire bytes of `s` as the golden holds them: masked, pretty-printed, newline-terminated.
fn rendered(s: &Snapshot) -> String {
    let bytes = s.to_json().unwrap_or_else(|e| panic!("{e}"));
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    mask_sealed(&mut v);
    serde_json::to_string_pretty(&v).unwrap_or_else(|e| panic!("{e}")) + "\n"
}

/// A line diff of `want` → `got` (longest common subsequence), `-`/`+` marked, with two lines
/// of context around each change.
fn line_diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    // lcs[i][j]: length of the longest common subsequence of w[i..] and g[j..].
    let mut lcs = vec![vec![0usize; g.len() + 1]; w.len() + 1];
    for i in (0..w.len()).rev() {
        for j in (0..g.len()).rev() {
            lcs[i][j] = if w[i] == g[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut lines) = (0, 0, Vec::new());
    while i < w.len() || j < g.len() {
        if i < w.len() && j < g.len() && w[i] == g[j] {
            lines.push((' ', i + 1, w[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < w.len() && (j == g.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', i + 1, w[i]));
            i += 1;
        } else {
            lines.push(('+', i + 1, g[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..lines.len()).filter(|k| lines[*k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|c| c.abs_diff(k) <= 2);
    let mut out = String::new();
    let mut last = None;
    for (k, (mark, line_no, text)) in lines.iter().enumerate().filter(|(k, _)| near(*k)) {
        if last.is_none_or(|l: usize| l + 1 != k) {
            out += &format!("@@ golden line {line_no} @@\n");
        }
        out += &format!("{mark} {text}\n");
        last = Some(k);
    }
    out
}

#[test]
fn the_diff_shows_only_the_changed_lines() {
    let d = line_diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nX\ne\nf\ng\n");
    assert_eq!(d, "@@ golden line 2 @@\n  b\n  c\n- d\n+ X\n  e\n  f\n");
    assert_eq!(line_diff("a\n", "a\n"), "");
}

#[test]
fn the_wire_format_matches_the_golden() {
    let got = rendered(&compiled());
    let path = golden_path();
    if std::env::var_os("REFLOW_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap_or(crate_dir()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with REFLOW_BLESS=1 cargo test -p reflow-crds --test wire_format",
            path.display()
        )
    });
    assert!(
        want == got,
        "the snapshot wire format changed ({}):\n{}\nIf the change is intended (dataplanes not \
         yet upgraded read the old format), regenerate with `REFLOW_BLESS=1 cargo test -p \
         reflow-crds --test wire_format` and review the diff.",
        path.display(),
        line_diff(&want, &got)
    );
}

/// A snapshot in the checked-in format is accepted (its hash checks out: ciphertexts are outside
/// the hash) and serializes back to the same bytes: nothing is dropped or renamed on the way.
#[test]
fn the_golden_reads_back_unchanged() {
    let golden = std::fs::read_to_string(golden_path()).unwrap_or_else(|e| panic!("{e}"));
    let s: Snapshot = serde_json::from_str(&golden).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hash(), compiled().hash());
    assert_eq!(rendered(&s), golden);
}

/// The fixture covers what it claims to: a golden that silently lost a case would still pass.
#[test]
fn the_golden_covers_every_variant() {
    let golden = std::fs::read_to_string(golden_path()).unwrap_or_else(|e| panic!("{e}"));
    for needle in [
        // transports and pod transports
        r#""transport": "streamableHttp""#,
        r#""transport": "sse""#,
        r#""transport": "auto""#,
        r#""transport": "stdio""#,
        r#""transport": "kubernetes""#,
        // isolation
        r#""isolation": "shared""#,
        r#""isolation": "perRole""#,
        r#""isolation": "perGroup""#,
        r#""isolation": "perUser""#,
        // sandbox
        r#""enforce": false"#,
        r#""namespaces": "required""#,
        r#""namespaces": "off""#,
        r#""memoryMib": 512"#,
        // pinning
        r#""mode": "warn""#,
        r#""mode": "enforce""#,
        // identity forwarding
        r#""audience": "reflow-tests""#,
        r#""headers": true"#,
        // user credentials
        r#""mode": "secret""#,
        r#""mode": "oauth2""#,
        r#""mode": "tokenExchange""#,
        // policy
        r#""effect": "Allow""#,
        r#""effect": "Deny""#,
        r#""kind": "all""#,
        r#""kind": "tool""#,
        r#""kind": "resource""#,
        r#""kind": "prompt""#,
        r#""per": "tool""#,
        r#""per": "target""#,
        // credentials and revocations
        r#""injectAs": "header""#,
        r#""injectAs": "env""#,
        r#""revocations""#,
    ] {
        assert!(golden.contains(needle), "the golden lacks {needle}");
    }
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

/// Whether a line of code (comments cut) reaches into the CRD types.
fn names_api(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    squeezed.contains("crate::api")
        || squeezed.contains("super::super::api")
        || squeezed.contains("reflow_crds::api")
        || (squeezed.contains("crate::{") && squeezed.contains("api"))
        // inside a multi-line `use crate::{ ... }` group
        || squeezed.starts_with("api::")
        || squeezed == "api,"
}

#[test]
fn no_snapshot_file_names_a_crd_type() {
    let mut files = Vec::new();
    rust_files(&crate_dir().join("src/snapshot"), &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{e}"));
            text.lines()
                .enumerate()
                .filter(|(_, l)| names_api(l))
                .map(|(i, l)| format!("{}:{}: {}", f.display(), i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "the snapshot uses CRD types; give it its own and convert in compile/:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_api_check_sees_the_spellings() {
    assert!(names_api("use crate::api::{Effect, RuleKind};"));
    assert!(names_api(
        "    pub x: Option<crate::api::IdentityForwarding>,"
    ));
    assert!(names_api("use crate::{api::Isolation, glob};"));
    assert!(names_api("    api::{Effect, RuleKind},"));
    assert!(!names_api("// converted from `crate::api` in compile/"));
    assert!(!names_api("use crate::glob::Glob;"));
}
