//! Issue 19: every code block of the README's Quick start is run as written (URL and token
//! filled in) against the gateway and the fixture: the client JSON configs (Cursor through the
//! TypeScript SDK, Claude Desktop through `mcp-remote`), the Python and TypeScript examples, curl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::mcp_remote::McpRemote;
use reflow_e2e::harness::node::{node_bin, npm_package};
use reflow_e2e::harness::process::run_bounded;
use reflow_e2e::harness::py_ops::{self, names, ok_result};
use reflow_e2e::harness::python::venv_python;
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, TS_SDK_SPEC, TestGateway, TsClient, paths};
use serde_json::Value;

const README_URL: &str = "http://127.0.0.1:8080/mcp";
const README_TOKEN: &str = "<token>";
const RUN: Duration = Duration::from_secs(120);

/// One fenced block: its info string and its text.
struct Block {
    lang: String,
    text: String,
}

/// The fenced blocks between `## Quick start` and `### On a cluster`.
fn quick_start_blocks() -> Vec<Block> {
    let readme =
        std::fs::read_to_string(paths::workspace_root().join("README.md")).expect("README.md");
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let end = readme[start..]
        .find("### On a cluster")
        .map_or(readme.len(), |i| start + i);
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in readme[start..end].lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_owned(),
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block in the Quick start");
    blocks
}

struct Env {
    _fixture: FixtureProcess,
    gw: TestGateway,
    token: String,
    scratch: PathBuf,
}

impl Env {
    fn start() -> Self {
        let fixture =
            FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "fixture"]).expect("fixture");
        let gw = TestGateway::builder()
            .target("fixture", &fixture.mcp_url())
            .policy(
                PolicyDoc::allow("all", "fixture")
                    .everyone()
                    .rule("all", &["*"]),
            )
            .start()
            .expect("gateway starts");
        let token = gw.token("reader", &["developers"], &[]);
        let scratch = gw.dir().join("readme");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        Self {
            _fixture: fixture,
            gw,
            token,
            scratch,
        }
    }

    /// `text` with the README's URL and token replaced; both must occur (else the block would
    /// not reach this gateway and the run would prove nothing).
    fn fill(&self, text: &str) -> String {
        assert!(text.contains(README_URL), "no {README_URL} in:\n{text}");
        assert!(text.contains(README_TOKEN), "no {README_TOKEN} in:\n{text}");
        text.replace(README_URL, &self.gw.mcp_url())
            .replace(README_TOKEN, &self.token)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scratch.join(name);
        std::fs::write(&path, text).expect("write example");
        path
    }
}

/// The printed tool list names the fixture's tools, prefixed.
fn assert_lists_tools(output: &str, what: &str) {
    assert!(
        output.contains("fixture_echo") && output.contains("fixture_add"),
        "{what} printed no tool list:\n{output}"
    );
}

fn run_python(env: &Env, text: &str) {
    let script = env.write("example.py", &env.fill(text));
    let python = venv_python().expect("python venv with mcp");
    let out = run_bounded("README python", Command::new(python).arg(&script), RUN)
        .expect("the README's Python example runs");
    assert_lists_tools(&out, "the Python example");
}

fn run_typescript(env: &Env, text: &str) {
    let sdk = npm_package(TS_SDK_SPEC).expect("TypeScript SDK");
    let dir = env.scratch.join("ts");
    std::fs::create_dir_all(&dir).expect("ts dir");
    link_node_modules(&sdk.join("node_modules"), &dir.join("node_modules"));
    let script = dir.join("list-tools.mjs");
    std::fs::write(&script, env.fill(text)).expect("write example");
    let out = run_bounded(
        "README typescript",
        Command::new(node_bin()).arg(&script),
        RUN,
    )
    .expect("the README's TypeScript example runs");
    assert_lists_tools(&out, "the TypeScript example");
}

fn link_node_modules(from: &Path, to: &Path) {
    if !to.exists() {
        std::os::unix::fs::symlink(from, to).expect("symlink node_modules");
    }
}

fn run_curl(env: &Env, text: &str) {
    let out = run_bounded(
        "README curl",
        Command::new("bash").arg("-c").arg(env.fill(text)),
        RUN,
    )
    .expect("the README's curl runs");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("http/1.1 200 ok"), "{out}");
    assert!(lower.contains("mcp-session-id:"), "{out}");
    assert!(out.contains("\"serverInfo\""), "{out}");
}

/// Cursor's config: the URL and headers, as any Streamable HTTP client takes them.
fn run_url_config(config: &Value) {
    let server = &config["mcpServers"]["reflow"];
    let url = server["url"].as_str().expect("url");
    let mut client = TsClient::streamable_http(url);
    for (k, v) in server["headers"].as_object().expect("headers") {
        client = client.header(k, v.as_str().expect("header value"));
    }
    let report = client
        .actions([py_ops::list_tools()])
        .run()
        .expect("typescript client runs");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(tools.contains(&"fixture_echo".to_owned()), "{report:#}");
}

/// Claude Desktop's config: `npx -y mcp-remote ARGS` with `env`, run as the pinned mcp-remote.
fn run_command_config(env: &Env, config: &Value) {
    let server = &config["mcpServers"]["reflow"];
    assert_eq!(server["command"], "npx", "{config:#}");
    let args: Vec<String> = server["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(args[..2], ["-y", "mcp-remote"], "{args:?}");
    let vars: Vec<(String, String)> = server["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut remote = McpRemote::spawn(&args[2..], &vars, &env.scratch).expect("mcp-remote starts");
    let init = remote.initialize().expect("initialize through mcp-remote");
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "reflow",
        "{init:#}\n{}",
        remote.output()
    );
    let tools = remote
        .request("tools/list", serde_json::json!({}))
        .expect("tools/list through mcp-remote");
    assert!(
        tools.to_string().contains("fixture_echo"),
        "{tools:#}\n{}",
        remote.output()
    );
}

#[test]
fn every_quick_start_block_runs_as_written() {
    let blocks = quick_start_blocks();
    let env = Env::start();
    let mut ran = Vec::new();
    for block in &blocks {
        let kind = match block.lang.as_str() {
            "python" => {
                run_python(&env, &block.text);
                "python"
            }
            "js" => {
                run_typescript(&env, &block.text);
                "typescript"
            }
            "json" => {
                let config: Value =
                    serde_json::from_str(&env.fill(&block.text)).expect("the config is JSON");
                if config["mcpServers"]["reflow"].get("command").is_some() {
                    run_command_config(&env, &config);
                    "mcp-remote config"
                } else {
                    run_url_config(&config);
                    "url config"
                }
            }
            "sh" if block.text.trim_start().starts_with("curl") => {
                run_curl(&env, &block.text);
                "curl"
            }
            // `make run` / `make test`: targets of the Makefile (run by their own tests and CI).
            "sh" if block.text.lines().all(|l| l.starts_with("make ")) => {
                let makefile = std::fs::read_to_string(paths::workspace_root().join("Makefile"))
                    .expect("Makefile");
                for line in block.text.lines() {
                    let target = line.split_whitespace().nth(1).unwrap_or_default();
                    assert!(
                        makefile
                            .lines()
                            .any(|l| l.starts_with(&format!("{target}:"))),
                        "no Makefile target {target}"
                    );
                }
                "make"
            }
            // The architecture drawing.
            "" => "drawing",
            other => panic!(
                "a Quick start block no test runs ({other}):\n{}",
                block.text
            ),
        };
        ran.push(kind);
    }
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "curl",
            "make",
            "mcp-remote config",
            "python",
            "typescript",
            "url config"
        ],
        "the Quick start's blocks changed: run the new ones here"
    );
}

/// `make run` and `make test` share one build: the same cargo arguments (so the same feature
/// unification), `run` only adding `--no-run`.
#[test]
fn make_run_builds_exactly_what_make_test_builds() {
    let makefile =
        std::fs::read_to_string(paths::workspace_root().join("Makefile")).expect("Makefile");
    let recipe = |target: &str| -> Vec<String> {
        makefile
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{target}:")))
            .skip(1)
            .take_while(|l| l.starts_with('\t') || l.starts_with("  "))
            .map(str::trim)
            .map(str::to_owned)
            .collect()
    };
    let cargo_args = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| {
                l.split_once("$(CARGO) test")
                    .map(|(_, rest)| rest.to_owned())
            })
            .collect()
    };
    let run = cargo_args(&recipe("run"));
    let test = cargo_args(&recipe("test"));
    assert_eq!(
        run,
        [" -q $(TEST_CARGO_ARGS) --no-run"],
        "{:?}",
        recipe("run")
    );
    assert_eq!(
        test,
        [" $(TEST_CARGO_ARGS) --no-fail-fast"],
        "{:?}",
        recipe("test")
    );
    assert!(
        !recipe("run").iter().any(|l| l.contains("$(CARGO) build")),
        "make run builds something make test does not: {:?}",
        recipe("run")
    );
}
