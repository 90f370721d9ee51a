//! Distributed tracing through the real binaries: a client's W3C trace continues through the
//! gateway into the fixture, every process exporting OTLP/HTTP to a receiver in this test; the
//! audit event names the same trace. Bad paths: tracing switched off exports nothing, and a
//! collector that never answers does not hold requests up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::{
    DataplaneProcess, FixtureProcess, OtlpReceiver, PolicyDoc, RawInit, RawSession, ReceivedSpan,
    http_client,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const DEV_SECRET: &str = "reflow-tracing-test-dev-secret-0123456789";
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
/// The trace of a request refused for its token (its log line is checked).
const REFUSED_TRACE: &str = "5e0c63257de34c92bf9efcd03927272e";
/// The trace the client ends its session in.
const DELETE_TRACE: &str = "7d1f0e2a9c3b4d5e8f60718293a4b5c6";
/// Spans leave a process at most this long after they end (the default is 5 s).
const EXPORT_EVERY_MS: &str = "100";

fn traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// A manifests folder with one target `one` (the fixture), open to everyone, and a config with
/// a dev token issuer and a file audit sink; returns (manifests, config, audit file).
fn gateway_files(dir: &Path, fixture_url: &str) -> (PathBuf, PathBuf, PathBuf) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    std::fs::write(
        manifests.join("all.yaml"),
        [
            target_yaml("one", "streamableHttp", fixture_url),
            PolicyDoc::allow("one-all", "one")
                .everyone()
                .rule("all", &["*"])
                .to_yaml(),
        ]
        .join("---\n"),
    )
    .expect("manifests");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\naudit: {{sink: file, path: {}}}\n",
            audit.display()
        ),
    )
    .expect("config");
    (manifests, config, audit)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "reflow-tracing-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn token() -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        "alice",
        &[],
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

/// A bare MCP client: initialize, then tools/call requests carrying the client's traceparent.
struct Client(RawSession);

impl Client {
    async fn connect(url: String) -> Self {
        let init = RawInit {
            protocol: "2025-06-18".to_owned(),
            initialized: false,
            ..RawInit::named("tracing-test")
        };
        Self(
            RawSession::open(&url, &token(), init)
                .await
                .expect("initialize"),
        )
    }

    async fn echo(&self, id: u64, text: &str) -> Value {
        let resp = self
            .0
            .request(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "one_echo", "arguments": {"text": text}}}))
            .header("traceparent", traceparent())
            .send()
            .await
            .expect("tools/call");
        assert!(resp.status().is_success(), "tools/call: {}", resp.status());
        resp.json().await.expect("JSON reply")
    }

    /// DELETE of the session, in the client's trace `trace`; returns the HTTP status.
    async fn end(&self, trace: &str) -> u16 {
        self.0
            .delete()
            .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .expect("DELETE")
            .status()
            .as_u16()
    }
}

fn echoed(reply: &Value) -> &str {
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no echo in {reply}"))
}

/// The audit events written so far for `method`.
fn audit_events(file: &Path, method: &str) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["method"] == method)
        .collect()
}

fn wait_for_audit(file: &Path, method: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = audit_events(file, method);
        if events.len() >= n || Instant::now() >= deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn of<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name && s.trace_id == CLIENT_TRACE)
        .collect()
}

#[test]
fn a_client_trace_continues_through_the_gateway_into_the_upstream_and_its_audit_row() {
    let receiver = OtlpReceiver::start().expect("receiver");
    let endpoint = receiver.endpoint();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_EVERY_MS),
    ];
    let fixture =
        FixtureProcess::spawn_with_env(&fixture_bin!(), ["--name", "one"], &otel).expect("fixture");
    let dir = temp_dir("on");
    let (manifests, config, audit) = gateway_files(&dir, &fixture.mcp_url());
    let mut gateway_env = otel.to_vec();
    // JSON logs with the authenticator's debug line, to find it by its trace.
    gateway_env.extend([
        ("REFLOW_LOG_FORMAT", "json"),
        ("RUST_LOG", "warn,reflow_dataplane::auth=debug"),
    ]);
    let gateway = DataplaneProcess::spawn(&manifests, &config, &gateway_env).expect("gateway");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(Client::connect(gateway.mcp_url()));
    let (reply, refused) = rt.block_on(async {
        let reply = client.echo(2, "traced").await;
        let refused = http_client()
            .expect("http client")
            .post(gateway.mcp_url())
            .bearer_auth("not-a-token")
            .header(
                "traceparent",
                format!("00-{REFUSED_TRACE}-{CLIENT_SPAN}-01"),
            )
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
            .send()
            .await
            .expect("refused request");
        (reply, refused.status())
    });
    assert_eq!(echoed(&reply), "[one] traced");
    assert_eq!(refused, reqwest::StatusCode::UNAUTHORIZED);

    let spans = receiver.wait_for(Duration::from_secs(15), |spans| {
        !of(spans, "reflow-dataplane", "handle_post").is_empty()
            && !of(spans, "reflow-dataplane", "upstream").is_empty()
            && of(spans, "reflow-fixture", "fixture.request").len() >= 4
    });
    let context = format!(
        "spans: {spans:#?}\ngateway: {}\nfixture: {}",
        gateway.output(),
        fixture.output()
    );

    // The gateway's request span continues the client's span.
    let requests = of(&spans, "reflow-dataplane", "handle_post");
    assert_eq!(requests.len(), 1, "{context}");
    let request = requests[0];
    assert_eq!(request.parent_span_id, CLIENT_SPAN, "{context}");

    // The upstream call is a child of it.
    let upstream = of(&spans, "reflow-dataplane", "upstream");
    assert_eq!(upstream.len(), 1, "{context}");
    assert_eq!(upstream[0].parent_span_id, request.span_id, "{context}");

    // The fixture's server spans (initialize, initialized, the upstream session's GET stream the
    // gateway opens with it, tools/call: the upstream session opens on first use) all hang off
    // the gateway's upstream span, in the client's trace.
    let served = of(&spans, "reflow-fixture", "fixture.request");
    assert_eq!(served.len(), 4, "{context}");
    for span in &served {
        assert_eq!(span.parent_span_id, upstream[0].span_id, "{context}");
    }
    // Nothing of the fixture's landed in another trace.
    assert!(
        spans
            .iter()
            .filter(|s| s.service == "reflow-fixture")
            .all(|s| s.trace_id == CLIENT_TRACE),
        "{context}"
    );

    // The audit row links to the trace.
    let calls = wait_for_audit(&audit, "tools/call", 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["trace_id"], CLIENT_TRACE);
    assert_eq!(calls[0]["decision"], "allow");

    // The log line written while refusing the token names its trace and the span it was in.
    let refused_auth = receiver.wait_for(Duration::from_secs(10), |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == REFUSED_TRACE && s.name == "authenticate")
    });
    let auth_span = refused_auth
        .iter()
        .find(|s| s.trace_id == REFUSED_TRACE && s.name == "authenticate")
        .unwrap_or_else(|| panic!("no authenticate span: {refused_auth:#?}"));
    let logs = gateway.output();
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|l| l["fields"]["message"] == "bearer token refused")
        .unwrap_or_else(|| panic!("no JSON line for the refused token:\n{logs}"));
    assert_eq!(line["trace_id"], REFUSED_TRACE, "{line}");
    assert_eq!(line["span_id"], auth_span.span_id.as_str(), "{line}");

    // A request without a traceparent (initialize) is the root of a trace of its own.
    let roots = receiver.wait_for(Duration::from_secs(5), |spans| {
        spans
            .iter()
            .any(|s| s.name == "handle_post" && s.parent_span_id.is_empty())
    });
    let root = roots
        .iter()
        .find(|s| s.name == "handle_post" && s.parent_span_id.is_empty())
        .unwrap_or_else(|| panic!("no root request span: {roots:#?}"));
    assert_ne!(root.trace_id, CLIENT_TRACE);

    // Ending the session is a server span in the caller's trace too (last: the upstream
    // sessions it closes are the fixture's spans outside the client's trace).
    assert_eq!(rt.block_on(client.end(DELETE_TRACE)), 200);
    let ended = receiver.wait_for(Duration::from_secs(10), |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == DELETE_TRACE && s.name == "handle_delete")
    });
    let delete = ended
        .iter()
        .find(|s| s.trace_id == DELETE_TRACE && s.name == "handle_delete")
        .unwrap_or_else(|| panic!("no DELETE span: {ended:#?}"));
    assert_eq!(delete.parent_span_id, CLIENT_SPAN);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_tracing_off_nothing_is_exported_and_a_dead_collector_does_not_hold_requests() {
    let receiver = OtlpReceiver::start().expect("receiver");
    let endpoint = receiver.endpoint();
    // Accepts connections (the kernel does) and never answers: every export hangs until the
    // exporter's own timeout, here far longer than any request may take.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("black hole");
    let dead = format!("http://{}", black_hole.local_addr().expect("addr"));
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");

    let off_dir = temp_dir("off");
    let (manifests, config, off_audit) = gateway_files(&off_dir, &fixture.mcp_url());
    let off = DataplaneProcess::spawn(
        &manifests,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_EVERY_MS),
        ],
    )
    .expect("gateway with tracing off");
    let dead_dir = temp_dir("dead");
    let (manifests, config, dead_audit) = gateway_files(&dead_dir, &fixture.mcp_url());
    let stuck = DataplaneProcess::spawn(
        &manifests,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", dead.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    )
    .expect("gateway with a dead collector");

    const CALLS: u64 = 20;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for gw in [&off, &stuck] {
        let slowest = rt.block_on(async {
            let client = Client::connect(gw.mcp_url()).await;
            let mut slowest = Duration::ZERO;
            for id in 0..CALLS {
                let started = Instant::now();
                let reply = client.echo(id + 10, "x").await;
                slowest = slowest.max(started.elapsed());
                assert_eq!(echoed(&reply), "[one] x", "{}", gw.output());
            }
            slowest
        });
        // An export waited on by a request would take the exporter's 30 s timeout.
        assert!(
            slowest < Duration::from_secs(3),
            "a call took {slowest:?}\n{}",
            gw.output()
        );
    }

    // Tracing off: the audit rows still carry the client's trace id, read from its header.
    let calls = wait_for_audit(&off_audit, "tools/call", CALLS as usize);
    assert_eq!(calls.len(), CALLS as usize);
    assert!(
        calls.iter().all(|e| e["trace_id"] == CLIENT_TRACE),
        "{calls:?}"
    );
    // Dead collector: tracing is on, and the request spans continue the client's trace.
    let calls = wait_for_audit(&dead_audit, "tools/call", CALLS as usize);
    assert_eq!(calls.len(), CALLS as usize);
    assert!(
        calls.iter().all(|e| e["trace_id"] == CLIENT_TRACE),
        "{calls:?}"
    );

    // Several export periods later, the switched-off gateway has sent nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.exports(), 0, "{:?}", receiver.spans());
    let _ = std::fs::remove_dir_all(&off_dir);
    let _ = std::fs::remove_dir_all(&dead_dir);
}

#[test]
fn a_graceful_stop_flushes_the_spans_still_queued() {
    let receiver = OtlpReceiver::start().expect("receiver");
    let endpoint = receiver.endpoint();
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let dir = temp_dir("flush");
    let (manifests, config, _audit) = gateway_files(&dir, &fixture.mcp_url());
    // Batches leave every 60 s: within this test only the shutdown flush can send them.
    let mut gateway = DataplaneProcess::spawn(
        &manifests,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    )
    .expect("gateway");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reply = rt.block_on(async {
        let client = Client::connect(gateway.mcp_url()).await;
        client.echo(2, "flushed").await
    });
    assert_eq!(echoed(&reply), "[one] flushed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.exports(),
        0,
        "nothing is sent before the batch is due"
    );

    let status = gateway.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        gateway.output()
    );
    let spans = receiver.spans();
    assert!(
        !of(&spans, "reflow-dataplane", "handle_post").is_empty()
            && !of(&spans, "reflow-dataplane", "upstream").is_empty(),
        "{spans:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SEP-414: a client's trace given in `_meta` (no header) continues through the gateway, and a
/// STDIO server, which only has `_meta`, gets the gateway's upstream span as its parent there.
#[test]
fn a_trace_in_meta_continues_through_the_gateway_into_a_stdio_server() {
    let receiver = OtlpReceiver::start().expect("receiver");
    let endpoint = receiver.endpoint();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_EVERY_MS),
    ];
    let dir = temp_dir("meta");
    let (manifests, config, _audit) = gateway_files(&dir, "http://127.0.0.1:9/mcp");
    let stdio_target = format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: kid, namespace: {ns}}}\nspec:\n  transport: stdio\n  command: {bin}\n  args: [\"--stdio\", \"--name\", \"kid\"]\n  prefix: kid\n---\n{policy}",
        ns = reflow_e2e::harness::gateway::NAMESPACE,
        bin = json!(fixture_bin!().to_string_lossy()),
        policy = PolicyDoc::allow("kid-all", "kid")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    );
    std::fs::write(manifests.join("kid.yaml"), stdio_target).expect("stdio manifests");
    let gateway = DataplaneProcess::spawn(&manifests, &config, &otel).expect("gateway");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report: Value = rt.block_on(async {
        let client = Client::connect(gateway.mcp_url()).await;
        let resp = client
            .0
            .request(
                &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "kid_whoami", "arguments": {},
                "_meta": {"traceparent": traceparent(), "tracestate": "client=kept"}}}),
            )
            .send()
            .await
            .expect("tools/call");
        assert!(resp.status().is_success(), "tools/call: {}", resp.status());
        let reply: Value = resp.json().await.expect("JSON reply");
        serde_json::from_str(echoed(&reply)).expect("whoami report")
    });
    let spans = receiver.wait_for(Duration::from_secs(15), |spans| {
        !of(spans, "reflow-dataplane", "handle_post").is_empty()
            && !of(spans, "reflow-dataplane", "upstream").is_empty()
    });
    let context = format!(
        "spans: {spans:#?}\nreport: {report:#}\ngateway: {}",
        gateway.output()
    );
    let request = of(&spans, "reflow-dataplane", "handle_post");
    assert_eq!(request.len(), 1, "{context}");
    assert_eq!(request[0].parent_span_id, CLIENT_SPAN, "{context}");
    let upstream = of(&spans, "reflow-dataplane", "upstream");
    assert_eq!(upstream.len(), 1, "{context}");
    // The child read the gateway's upstream span, not the client's, as its parent.
    assert_eq!(
        report["meta"]["traceparent"],
        format!("00-{CLIENT_TRACE}-{}-01", upstream[0].span_id),
        "{context}"
    );
    assert_eq!(report["meta"]["tracestate"], "client=kept", "{context}");
    let _ = std::fs::remove_dir_all(&dir);
}
