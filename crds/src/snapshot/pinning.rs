//! Pinned tool definitions (the rug-pull guard): the digest of a tool's definition, a Target's
//! compiled pin set, and the one rule deciding whether an observed definition may be served.
//! Pure: the dataplane applies the verdicts, the controller reports drift from the same digests.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The fields of a tool definition the digest covers: everything a model reads or a client
/// validates against. Anything else (`_meta`, icons, unknown fields) may change freely.
pub const DIGESTED_FIELDS: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// Lower-case hex SHA-256 over the canonical JSON of the tool's [`DIGESTED_FIELDS`]: an object
/// holding the fields the tool has (absent fields are left out, a `null` is kept), keys sorted at
/// every depth, no whitespace, strings escaped as `serde_json` does.
pub fn tool_digest(tool: &Value) -> String {
    let mut picked = BTreeMap::new();
    for field in DIGESTED_FIELDS {
        if let Some(v) = tool.get(field) {
            picked.insert(field, v);
        }
    }
    let mut out = String::new();
    out.push('{');
    for (i, (k, v)) in picked.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical(&Value::String((*k).to_owned()), &mut out);
        out.push(':');
        canonical(v, &mut out);
    }
    out.push('}');
    hex::encode(Sha256::digest(out.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether `s` is a digest as [`tool_digest`] writes it.
pub fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a Target does with a tool definition that is not the approved one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PinMode {
    /// Unapproved definitions are hidden from lists and refused on call.
    #[default]
    Enforce,
    /// Unapproved definitions are served, with an audit event and the `ToolsDrifted` condition.
    Warn,
}

/// How an observed tool definition stands against the pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinVerdict {
    /// Pinned, and the definition is the approved one.
    Pinned,
    /// Pinned, but the definition changed since it was approved.
    Drifted,
    /// A tool with no pin (new since the approval).
    Unpinned,
}

impl PinVerdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Drifted => "drifted",
            Self::Unpinned => "unpinned",
        }
    }
}

/// A Target's compiled pin set: tool name (the upstream's own, unprefixed) → approved digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolPins {
    pub mode: PinMode,
    pub pins: BTreeMap<Arc<str>, Arc<str>>,
}

impl ToolPins {
    /// Builds the pin set from (tool name, digest) pairs; names must be unique and digests
    /// well-formed (the compiler refuses the Target otherwise: a pin set that cannot be read
    /// never fails open).
    pub fn new<'p>(
        mode: PinMode,
        pins: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for (name, digest) in pins {
            if name.is_empty() {
                return Err("a pin needs a tool name".to_owned());
            }
            if !valid_digest(digest) {
                return Err(format!(
                    "pin {name:?}: digest must be 64 lower-case hex characters (sha256)"
                ));
            }
            if map.insert(Arc::from(name), Arc::from(digest)).is_some() {
                return Err(format!("tool {name:?} is pinned twice"));
            }
        }
        Ok(Self { mode, pins: map })
    }

    /// The verdict for the upstream tool `name` whose definition digests to `digest`.
    pub fn verdict(&self, name: &str, digest: &str) -> PinVerdict {
        match self.pins.get(name) {
            Some(pinned) if **pinned == *digest => PinVerdict::Pinned,
            Some(_) => PinVerdict::Drifted,
            None => PinVerdict::Unpinned,
        }
    }

    /// Whether a tool with this verdict is listed and callable: in `enforce` only approved
    /// definitions are; `warn` serves everything (and audits what is not approved).
    pub fn serves(&self, verdict: PinVerdict) -> bool {
        verdict == PinVerdict::Pinned || self.mode == PinMode::Warn
    }

    /// Tools in `observed` (name, digest) that are not served as approved (drifted or
    /// unpinned), by name.
    pub fn drift<'a>(
        &self,
        observed: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(&'a str, PinVerdict)> {
        observed
            .into_iter()
            .map(|(name, digest)| (name, self.verdict(name, digest)))
            .filter(|(_, v)| *v != PinVerdict::Pinned)
            .collect()
    }
}
