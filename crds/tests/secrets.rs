//! Secret values never appear in Debug output, in the serialized snapshot or in reports.

mod common;

use std::path::Path;

use base64::Engine;
use common::*;
use reflow_crds::loader;

fn dirs() -> Vec<std::path::PathBuf> {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut v = vec![samples_dir()];
    for e in std::fs::read_dir(golden).unwrap() {
        v.push(e.unwrap().path());
    }
    v
}

#[test]
fn no_plaintext_secret_in_debug_json_or_reports() {
    let raw_key = [0x5au8; 32];
    let key = reflow_crds::SealingKey::from_bytes(&raw_key);
    for dir in dirs() {
        let loaded = loader::load_dir(&dir).unwrap();
        let values = secret_values(&loaded.inputs);
        assert!(
            values.len() >= 2,
            "{}: no secrets to look for",
            dir.display()
        );
        // Control: the search finds the values where they legitimately are.
        let inputs_dbg = format!("{:?}", loaded.inputs);
        let visible_in_inputs = values
            .iter()
            .filter(|v| inputs_dbg.contains(v.as_str()))
            .count();
        assert!(visible_in_inputs > 0, "the search itself is broken");

        let compiled = compile_with(&loaded.inputs, &key);
        // Something was sealed, so there is something that could leak.
        assert!(
            compiled
                .snapshot
                .targets()
                .iter()
                .any(|t| !t.credentials.is_empty()),
            "{}",
            dir.display()
        );
        let mut outputs = vec![
            ("Debug of Compiled", format!("{compiled:?}")),
            ("Debug of Compiled (alternate)", format!("{compiled:#?}")),
            ("Debug of Snapshot", format!("{:?}", compiled.snapshot)),
            ("Debug of SealingKey", format!("{key:?}")),
            (
                "snapshot JSON",
                serde_json::to_string(&compiled.snapshot).unwrap(),
            ),
            (
                "snapshot to_json",
                String::from_utf8(compiled.snapshot.to_json().unwrap()).unwrap(),
            ),
            ("normalized", compiled.snapshot.normalized().to_string()),
            ("reports", serde_json::to_string(&compiled.reports).unwrap()),
        ];
        for t in compiled.snapshot.targets() {
            for who in [
                id(
                    "alice",
                    &["developers", "platform", "staff", "team-a"],
                    &["admin", "auditor"],
                ),
                id("bob", &[], &[]),
            ] {
                outputs.push((
                    "Debug of ResolvedCredentials",
                    format!("{:?}", t.credentials.resolve(&who)),
                ));
            }
        }
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(raw_key);
        let key_hex = hex::encode(raw_key);
        for (what, text) in &outputs {
            for v in &values {
                // Very short values could collide with unrelated text; the fixtures use long ones.
                assert!(
                    v.len() >= 8,
                    "fixture secret {v:?} is too short to search for"
                );
                assert!(
                    !text.contains(v.as_str()),
                    "{}: {what} contains a secret value",
                    dir.display()
                );
            }
            assert!(
                !text.contains(&key_b64) && !text.contains(&key_hex),
                "{what} contains the key"
            );
        }
        assert_eq!(format!("{key:?}"), "SealingKey(<redacted>)");
    }
}
