//! The standalone source: a folder of multi-document YAML holding Targets, Policies,
//! Credentials and v1 Secrets. Any unreadable document fails the whole load (never a partial model).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::compile::Inputs;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {message}")]
    Document {
        path: PathBuf,
        doc: usize,
        message: String,
    },
}

impl LoadError {
    pub fn label(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::Document { .. } => "document",
        }
    }
}

/// What a load produced, plus documents it skipped on purpose (other kinds).
#[derive(Debug, Default)]
pub struct Loaded {
    pub inputs: Inputs,
    pub skipped: Vec<String>,
}

/// Every `*.yaml`/`*.yml` below `dir`, in path order, skipping dot-entries (Kubernetes ConfigMap
/// mounts keep a second copy of every file under `..data`).
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut loaded = Loaded::default();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| LoadError::Io {
            path: f.clone(),
            source,
        })?;
        load_str(&f, &text, &mut loaded)?;
    }
    Ok(loaded)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Adds the documents of one file to `loaded`.
pub fn load_str(path: &Path, text: &str, loaded: &mut Loaded) -> Result<(), LoadError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |message: String| LoadError::Document {
            path: path.to_owned(),
            doc: i + 1,
            message,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let inputs = &mut loaded.inputs;
        match (api_version, kind) {
            ("mcp.reflow.io/v1alpha1", "Target") => inputs.targets.push(typed(value).map_err(err)?),
            ("mcp.reflow.io/v1alpha1", "Policy") => {
                inputs.policies.push(typed(value).map_err(err)?)
            }
            ("mcp.reflow.io/v1alpha1", "Credential") => {
                inputs.credentials.push(typed(value).map_err(err)?)
            }
            ("mcp.reflow.io/v1alpha1", "TokenRevocation") => {
                inputs.revocations.push(typed(value).map_err(err)?)
            }
            ("v1", "Secret") => inputs.secrets.push(typed(value).map_err(err)?),
            ("", _) | (_, "") => return Err(err("apiVersion and kind are required".to_owned())),
            (api, kind) => loaded.skipped.push(format!(
                "{}: document {}: {api} {kind}",
                path.display(),
                i + 1
            )),
        }
    }
    Ok(())
}

fn typed<K: DeserializeOwned + kube::Resource>(value: serde_yaml::Value) -> Result<K, String> {
    let mut obj: K = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
    if obj.meta().name.as_deref().is_none_or(str::is_empty) {
        return Err("metadata.name is required".to_owned());
    }
    obj.meta_mut()
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_secrets_and_other_kinds() {
        let text = r#"
apiVersion: mcp.reflow.io/v1alpha1
kind: Target
metadata: {name: gh}
spec: {transport: stdio, command: github-mcp}
---
apiVersion: v1
kind: Secret
metadata: {name: tokens, namespace: team}
stringData: {alice: ghp_a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other}
---
"#;
        let mut l = Loaded::default();
        load_str(Path::new("x.yaml"), text, &mut l).unwrap();
        assert_eq!(l.inputs.targets.len(), 1);
        assert_eq!(
            l.inputs.targets[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(
            l.inputs.secrets[0].metadata.namespace.as_deref(),
            Some("team")
        );
        assert_eq!(l.skipped.len(), 1);
    }

    #[test]
    fn a_broken_document_fails_the_whole_load() {
        let text = "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {effect: Maybe}\n";
        let mut l = Loaded::default();
        let e = load_str(Path::new("p.yaml"), text, &mut l).unwrap_err();
        assert!(e.to_string().contains("p.yaml: document 1"), "{e}");
        let e = load_str(Path::new("q.yaml"), "kind: Target\n", &mut l).unwrap_err();
        assert!(e.to_string().contains("apiVersion and kind are required"));
        let e = load_str(Path::new("r.yaml"), "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {}\nspec: {transport: auto, url: 'http://x'}\n", &mut l).unwrap_err();
        assert!(e.to_string().contains("metadata.name is required"));
        let e = load_str(Path::new("s.yaml"), "a: [1\n", &mut l).unwrap_err();
        assert!(matches!(e, LoadError::Document { .. }));
    }

    #[test]
    fn dot_entries_are_skipped_and_files_are_read_in_order() {
        let dir = std::env::temp_dir().join(format!("reflow-loader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let t = |n: &str| {
            format!(
                "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {n}}}\nspec: {{transport: auto, url: 'http://x'}}\n"
            )
        };
        std::fs::write(dir.join("..data/a.yaml"), t("hidden")).unwrap();
        std::fs::write(dir.join("b.yaml"), t("b")).unwrap();
        std::fs::write(dir.join("sub/a.yml"), t("a")).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let l = load_dir(&dir).unwrap();
        let names: Vec<_> = l
            .inputs
            .targets
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b", "a"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(load_dir(&dir), Err(LoadError::Io { .. })));
    }
}
