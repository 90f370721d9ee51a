//! Compiler golden tests: a folder of manifests → the normalized snapshot (ciphertexts removed,
//! keyed digests kept) and every object's report, as an insta YAML snapshot. The sealing key is
//! fixed, so digests are stable. Regenerate with
//! `INSTA_UPDATE=always cargo test -p reflow-crds --test golden` and review the diff.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use reflow_crds::Compiled;
use reflow_crds::compile::ObjectKind;
use reflow_crds::loader;
use reflow_crds::snapshot::ItemKind;

fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(case)
}

fn compile_dir(dir: &Path) -> Compiled {
    let loaded = loader::load_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(
        loaded.skipped.is_empty(),
        "unexpected kinds: {:?}",
        loaded.skipped
    );
    compile_with(&loaded.inputs, &key())
}

fn golden(name: &str, c: &Compiled) {
    let value = serde_json::json!({
        "snapshot": c.snapshot.normalized(),
        "reports": c.reports,
    });
    insta::with_settings!({ omit_expression => true, prepend_module_to_snapshot => false }, {
        insta::assert_yaml_snapshot!(name, value);
    });
}

#[test]
fn golden_config_samples() {
    let c = compile_dir(&samples_dir());
    let problems: Vec<_> = c.problems().collect();
    assert!(
        problems.is_empty(),
        "config/samples has problems: {problems:#?}"
    );
    assert_eq!(c.snapshot.targets().len(), 1);
    golden("samples", &c);
}

/// The examples a new cluster does not apply as is (they need an admin's binary or URL) still
/// compile without problems.
#[test]
fn config_examples_compile_without_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let c = compile_dir(&dir);
    let problems: Vec<_> = c.problems().collect();
    assert!(
        problems.is_empty(),
        "config/examples has problems: {problems:#?}"
    );
    assert_eq!(c.snapshot.targets().len(), 2);
}

#[test]
fn golden_errors() {
    let c = compile_dir(&golden_dir("errors"));
    let mut problems: Vec<(ObjectKind, &str)> =
        c.problems().map(|r| (r.kind, r.name.as_str())).collect();
    problems.sort();
    assert_eq!(
        problems,
        [
            (ObjectKind::Target, "Bad_Name"),
            (ObjectKind::Target, "no-url"),
            (ObjectKind::Target, "orders-v2"),
            (ObjectKind::Policy, "bad-selector"),
            (ObjectKind::Policy, "broken-allow"),
            (ObjectKind::Policy, "broken-deny"),
            (ObjectKind::Policy, "dangling"),
            (ObjectKind::Credential, "for-missing-target"),
            (ObjectKind::Credential, "forbidden-header"),
            (ObjectKind::Credential, "header-injection"),
            (ObjectKind::Credential, "missing-secret"),
            (ObjectKind::Credential, "ops-token"),
            (ObjectKind::Credential, "staff-token"),
        ]
    );
    // What still works: the staff policy and token, minus the contractors' fail-closed deny.
    let staff = id("sam", &["staff"], &[]);
    let contractor = id("cid", &["staff", "contractors"], &[]);
    assert!(tool_allowed(&c, "shop", "orders", &staff, "get_order"));
    assert!(!tool_allowed(&c, "shop", "orders", &staff, "ok_x"));
    assert!(!tool_allowed(
        &c,
        "shop",
        "orders",
        &contractor,
        "get_order"
    ));
    assert_eq!(
        injected(&c, &key(), "shop", "orders", &staff)["header:authorization"],
        "Bearer tok-ok-value"
    );
    assert!(injected(&c, &key(), "shop", "orders", &id("carol", &[], &[])).is_empty());
    golden("errors", &c);
}

#[test]
fn golden_multi_namespace() {
    let c = compile_dir(&golden_dir("multi-namespace"));
    let mut problems: Vec<(ObjectKind, &str, &str)> = c
        .problems()
        .map(|r| (r.kind, r.namespace.as_str(), r.name.as_str()))
        .collect();
    problems.sort();
    assert_eq!(
        problems,
        [
            (ObjectKind::Policy, "team-b", "reach-across"),
            (ObjectKind::Credential, "team-b", "borrowed-secret"),
        ]
    );
    let member = id("ann", &["team-a"], &[]);
    let auditor = id("aud", &["team-a"], &["auditor"]);
    assert!(tool_allowed(&c, "team-a", "fs", &member, "read_file"));
    assert!(
        decide(
            &c,
            "team-a",
            "fs",
            &member,
            ItemKind::Resource,
            "file:///data/public/x"
        )
        .allowed
    );
    assert!(
        !decide(
            &c,
            "team-a",
            "fs",
            &member,
            ItemKind::Resource,
            "file:///data/private/x"
        )
        .allowed
    );
    // Equal priority: the auditors' deny on the sensitive target wins over their allow.
    assert!(!tool_allowed(&c, "team-a", "fs", &auditor, "read_file"));
    assert!(tool_allowed(&c, "team-a", "wiki", &auditor, "read_page"));
    assert!(!tool_allowed(&c, "team-b", "wiki", &member, "read_page"));
    let k = key();
    let env = injected(&c, &k, "team-a", "fs", &auditor);
    assert_eq!(env["env:FS_KEY"], "team-a-key-value", "group beats role");
    assert_eq!(env["env:FS_READONLY"], "yes-auditor-key-value");
    assert_eq!(
        injected(&c, &k, "team-b", "sandbox", &id("alice", &[], &[]))["env:API_KEY"],
        "sandbox-alice-value"
    );
    golden("multi-namespace", &c);
}
