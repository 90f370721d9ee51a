//! What operators read and wire up next to the chart: the Argo CD health checks (run by a real
//! Lua interpreter against status objects serialised from the CRD types), the argocd-cm patch
//! that carries them, the metrics catalogue and the Grafana dashboard (both checked against the
//! metric names the sources register, so neither can drift).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reflow_crds::api::{Condition, InstancePhase, InstanceStatus, ObjectStatus};
use reflow_e2e::harness::k8s_tools::{lua, run_tool};
use reflow_e2e::harness::paths;
use reflow_e2e::harness::render::Scratch;
use serde_json::{Value, json};

fn root() -> PathBuf {
    paths::workspace_root()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------- Argo CD health

/// A JSON value as a Lua table constructor (null members are left out, as Argo CD does).
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::from(k.as_str())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs `script` (an Argo CD health check: a chunk reading global `obj`, returning `hs`) on
/// every object; returns `(status, message)` per object, in order.
fn run_health(script: &Path, objects: &[Value]) -> Vec<(String, String)> {
    let cases = objects
        .iter()
        .map(lua_literal)
        .collect::<Vec<_>>()
        .join(",\n");
    let driver = format!(
        r#"
local check = assert(loadfile(arg[1]))
local cases = {{ {cases} }}
for i, case in ipairs(cases) do
  obj = case
  local hs = check()
  io.write(i, "\t", tostring(hs.status), "\t", (tostring(hs.message or "")):gsub("[\t\n]", " "), "\n")
end
"#
    );
    let scratch = Scratch::new("argocd").expect("scratch");
    let path = scratch.write("driver.lua", &driver).expect("driver");
    let bin = lua().expect("lua5.4 (the harness installs it as root with apt-get)");
    let out = run_tool(
        "lua health check",
        Command::new(bin).arg(&path).arg(script),
        Duration::from_secs(30),
    )
    .expect("lua runs");
    assert!(out.success, "lua failed: {}", out.stderr);
    let rows: Vec<(String, String)> = out
        .stdout
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let _ = parts.next();
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(rows.len(), objects.len(), "{}", out.stdout);
    rows
}

fn cond(type_: &str, status: &str, reason: &str, observed: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{type_} is {status}"),
        observed_generation: Some(observed),
        last_transition_time: Some("2026-12-01T04:00:00Z".into()),
    }
}

fn object(kind: &str, generation: i64, status: Option<ObjectStatus>) -> Value {
    json!({
        "apiVersion": "mcp.reflow.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "team", "generation": generation},
        "spec": {},
        "status": status.map(|s| serde_json::to_value(s).unwrap()),
    })
}

fn all_true(observed: i64) -> Vec<Condition> {
    vec![
        cond("Accepted", "True", "Accepted", observed),
        cond("ResolvedRefs", "True", "ResolvedRefs", observed),
        cond("Programmed", "True", "Programmed", observed),
    ]
}

fn status(observed: i64, conditions: Vec<Condition>) -> Option<ObjectStatus> {
    Some(ObjectStatus {
        observed_generation: Some(observed),
        conditions,
    })
}

#[test]
fn argocd_health_of_targets_policies_and_credentials() {
    let script = root().join("deploy/argocd/health-object.lua");
    let with = |replace: Condition| {
        let mut cs = all_true(3);
        cs.retain(|c| c.type_ != replace.type_);
        cs.push(replace);
        status(3, cs)
    };
    let mut conflicted = all_true(3);
    conflicted.push(cond("Conflicted", "True", "AmbiguousPrecedence", 3));
    let mut stale_condition = all_true(3);
    stale_condition[2].observed_generation = Some(2);
    // (object, expected status, words the message must contain)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            object("Target", 1, None),
            "Progressing",
            "Waiting for reflow-controller",
        ),
        (
            object("Target", 3, status(3, all_true(3))),
            "Healthy",
            "Programmed True",
        ),
        (
            object(
                "Target",
                3,
                with(cond("Accepted", "False", "PrefixConflict", 3)),
            ),
            "Degraded",
            "PrefixConflict",
        ),
        (
            object(
                "Credential",
                3,
                with(cond("ResolvedRefs", "False", "SecretNotFound", 3)),
            ),
            "Degraded",
            "SecretNotFound",
        ),
        (
            object("Policy", 3, with(cond("Programmed", "False", "Refused", 3))),
            "Degraded",
            "Refused",
        ),
        (
            object(
                "Policy",
                3,
                with(cond("Programmed", "Unknown", "NoDataplanes", 3)),
            ),
            "Progressing",
            "NoDataplanes",
        ),
        // The controller has not seen the new spec: old verdicts, good or bad, do not count.
        (
            object("Target", 4, status(3, all_true(3))),
            "Progressing",
            "generation 4",
        ),
        (
            object(
                "Target",
                4,
                with(cond("Accepted", "False", "InvalidPattern", 3)).map(|mut s| {
                    s.observed_generation = Some(3);
                    s
                }),
            ),
            "Progressing",
            "generation 4",
        ),
        (
            object("Policy", 3, status(3, all_true(3)[..2].to_vec())),
            "Progressing",
            "Waiting for Programmed",
        ),
        (
            object("Credential", 3, status(3, conflicted)),
            "Healthy",
            "AmbiguousPrecedence",
        ),
        (
            object("Target", 3, status(3, stale_condition)),
            "Progressing",
            "Programmed True",
        ),
    ];
    let objects: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    for ((obj, want, words), (got, message)) in cases.iter().zip(run_health(&script, &objects)) {
        assert_eq!(got, *want, "{obj}: {message}");
        assert!(
            message.contains(words),
            "{obj}: {message:?} lacks {words:?}"
        );
    }
}

fn instance(
    generation: i64,
    phase: InstancePhase,
    ready: Option<Condition>,
    observed: i64,
) -> Value {
    let s = InstanceStatus {
        observed_generation: Some(observed),
        phase,
        endpoint: None,
        last_used: None,
        conditions: ready.into_iter().collect(),
    };
    json!({
        "apiVersion": "mcp.reflow.io/v1alpha1",
        "kind": "MCPInstance",
        "metadata": {"name": "github-alice", "namespace": "team", "generation": generation},
        "spec": {"targetRef": {"name": "github"}, "isolationKey": "user-alice"},
        "status": serde_json::to_value(s).unwrap(),
    })
}

#[test]
fn argocd_health_of_mcp_instances() {
    let script = root().join("deploy/argocd/health-mcpinstance.lua");
    let no_status = json!({"kind": "MCPInstance", "metadata": {"name": "i", "generation": 1}});
    let cases: Vec<(Value, &str, &str)> = vec![
        (no_status, "Progressing", "Waiting for reflow-controller"),
        (
            instance(
                1,
                InstancePhase::Running,
                Some(cond("Ready", "True", "Running", 1)),
                1,
            ),
            "Healthy",
            "Running",
        ),
        (
            instance(
                1,
                InstancePhase::Pending,
                Some(cond("Ready", "False", "PodNotReady", 1)),
                1,
            ),
            "Progressing",
            "PodNotReady",
        ),
        (
            instance(
                1,
                InstancePhase::Failed,
                Some(cond("Ready", "False", "TargetNotFound", 1)),
                1,
            ),
            "Degraded",
            "TargetNotFound",
        ),
        (
            instance(
                1,
                InstancePhase::Failed,
                Some(cond("Ready", "False", "NotKubernetes", 1)),
                1,
            ),
            "Degraded",
            "NotKubernetes",
        ),
        (
            instance(
                2,
                InstancePhase::Running,
                Some(cond("Ready", "True", "Running", 1)),
                1,
            ),
            "Progressing",
            "generation 2",
        ),
        (
            instance(1, InstancePhase::Pending, None, 1),
            "Progressing",
            "",
        ),
    ];
    let objects: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    for ((obj, want, words), (got, message)) in cases.iter().zip(run_health(&script, &objects)) {
        assert_eq!(got, *want, "{obj}: {message}");
        assert!(
            message.contains(words),
            "{obj}: {message:?} lacks {words:?}"
        );
    }
}

#[test]
fn argocd_cm_patch_carries_the_tested_scripts() {
    let patch: Value = serde_yaml::from_str(&read("deploy/argocd/argocd-cm-patch.yaml"))
        .expect("argocd-cm patch parses");
    let object = read("deploy/argocd/health-object.lua");
    let instance = read("deploy/argocd/health-mcpinstance.lua");
    let data = patch["data"].as_object().expect("data");
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "resource.customizations.health.mcp.reflow.io_Credential",
            "resource.customizations.health.mcp.reflow.io_MCPInstance",
            "resource.customizations.health.mcp.reflow.io_Policy",
            "resource.customizations.health.mcp.reflow.io_Target",
        ]
    );
    for kind in ["Target", "Policy", "Credential"] {
        assert!(
            data[&format!("resource.customizations.health.mcp.reflow.io_{kind}")]
                == object.as_str(),
            "{kind}: argocd-cm-patch.yaml differs from health-object.lua"
        );
    }
    assert!(
        data["resource.customizations.health.mcp.reflow.io_MCPInstance"] == instance.as_str(),
        "MCPInstance: argocd-cm-patch.yaml differs from health-mcpinstance.lua"
    );
}

// ---------------------------------------------------------------- metrics

/// Metric kinds as Prometheus exposes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn word(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }

    /// The series names a metric of this type exposes.
    fn series(self, name: &str) -> Vec<String> {
        match self {
            Self::Counter => vec![format!("{name}_total")],
            Self::Gauge => vec![name.to_owned()],
            Self::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
        }
    }
}

/// Every metric registered in the sources: for each `.rs` file under dataplane/src and
/// controller/src that builds a `Registry::with_prefix`, each `register("name", …, value)`
/// joined to the prefix; the type comes from the field the value clones, declared in the file.
fn registered_metrics() -> BTreeMap<String, MetricType> {
    let mut out = BTreeMap::new();
    for dir in ["dataplane/src", "controller/src"] {
        for file in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let Some(prefix) = between(&text, "Registry::with_prefix(\"", "\"") else {
                continue;
            };
            let mut rest = text.as_str();
            while let Some(at) = rest.find(".register(") {
                rest = &rest[at + ".register(".len()..];
                let call = &rest[..rest.find(");").expect("register call ends")];
                let name = between(call, "\"", "\"").expect("metric name literal");
                let value = call
                    .trim_end()
                    .trim_end_matches(',')
                    .rsplit(',')
                    .next()
                    .unwrap()
                    .trim()
                    .trim_end_matches(".clone()")
                    .trim();
                let ty = field_type(&text, value)
                    .unwrap_or_else(|| panic!("{}: no type for {value}", file.display()));
                out.insert(format!("{prefix}_{name}"), ty);
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            files.push(path);
        }
    }
    files
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The metric type of `pub <field>: <Type>` in the file's struct.
fn field_type(text: &str, field: &str) -> Option<MetricType> {
    let decl = between(text, &format!("pub {field}: "), "\n")?;
    if decl.contains("Histogram") {
        Some(MetricType::Histogram)
    } else if decl.contains("Counter") {
        Some(MetricType::Counter)
    } else if decl.contains("Gauge") {
        Some(MetricType::Gauge)
    } else {
        None
    }
}

/// `(name, type)` of each row of the catalogue's tables.
fn catalogue() -> BTreeMap<String, String> {
    read("docs/metrics.md")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

#[test]
fn metrics_catalogue_lists_exactly_the_registered_metrics() {
    let registered = registered_metrics();
    // Guards the scanner itself: these exist today.
    assert_eq!(
        registered.get("reflow_mcp_requests"),
        Some(&MetricType::Counter)
    );
    assert_eq!(
        registered.get("reflow_mcp_request_seconds"),
        Some(&MetricType::Histogram)
    );
    assert_eq!(
        registered.get("reflow_controller_snapshot_version"),
        Some(&MetricType::Gauge)
    );
    let catalogue = catalogue();
    let mut expected = BTreeMap::new();
    for (name, ty) in &registered {
        let exposed = match ty {
            MetricType::Counter => format!("{name}_total"),
            _ => name.clone(),
        };
        expected.insert(exposed, ty.word().to_owned());
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !catalogue.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "docs/metrics.md lacks {missing:?}");
    let stale: Vec<&String> = catalogue
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md lists metrics nothing registers: {stale:?}"
    );
    for (name, ty) in &expected {
        assert_eq!(&catalogue[name], ty, "type of {name} in docs/metrics.md");
    }
}

#[test]
fn grafana_dashboard_queries_only_registered_metrics() {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/reflow.json")).expect("dashboard is JSON");
    let series: BTreeSet<String> = registered_metrics()
        .iter()
        .flat_map(|(name, ty)| ty.series(name))
        .collect();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("reflow_") {
                assert!(
                    series.contains(word),
                    "dashboard queries unknown series {word} in {expr}"
                );
                used.insert(word.to_owned());
            }
        }
    }
    // Every registered metric has a panel.
    for (name, ty) in registered_metrics() {
        assert!(
            ty.series(&name).iter().any(|s| used.contains(s)),
            "no dashboard panel shows {name}"
        );
    }
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) | ("definition", Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}
