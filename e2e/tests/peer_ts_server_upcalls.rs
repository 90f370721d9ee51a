//! Issue 19: a TypeScript-SDK server's requests on its standalone GET stream (sampling,
//! elicitation, roots asked from a tool without a related request id) reach the client through
//! the gateway's single-Target endpoint every time, not only when the gateway's GET stream won
//! the race against the first call. Each case loops, one fresh session per iteration.

use reflow_e2e::harness::py_ops;
use reflow_e2e::harness::{PolicyDoc, TestGateway, TsClient, TsServer};
use serde_json::json;

/// Fresh sessions per case: the race is between a new upstream link's GET stream and its first call.
const ITERATIONS: usize = 20;

fn gateway(server: &TsServer) -> TestGateway {
    TestGateway::builder()
        .target("ts", &server.url())
        .policy(PolicyDoc::allow("all", "ts").everyone().rule("all", &["*"]))
        .start()
        .expect("gateway starts")
}

#[test]
fn standalone_stream_requests_from_a_ts_sdk_server_reach_the_client_every_time() {
    let server = TsServer::spawn().expect("ts server starts");
    let gw = gateway(&server);
    let token = gw.token("alice", &[], &[]);
    let mut failures = Vec::new();
    for i in 0..ITERATIONS {
        let report = TsClient::streamable_http(gw.target_url("ts"))
            .token(&token)
            .sampling_reply(format!("reply {i}"))
            .elicitation_reply(json!({"name": format!("n{i}")}))
            .request_timeout(std::time::Duration::from_secs(10))
            .actions([
                py_ops::call_tool("sample", json!({"prompt": "hi"})),
                py_ops::call_tool("elicit", json!({})),
                py_ops::call_tool("roots", json!({})),
            ])
            .run()
            .expect("typescript client runs");
        let texts: Vec<String> = (0..3)
            .map(|n| {
                report["results"][n]["result"]["content"][0]["text"]
                    .as_str()
                    .map_or_else(|| report["results"][n].to_string(), str::to_owned)
            })
            .collect();
        let expected = [
            format!("sampled: reply {i}"),
            format!("elicited: accept {{\"name\":\"n{i}\"}}"),
            "roots: file:///reflow-e2e".to_owned(),
        ];
        if texts != expected {
            failures.push(format!("iteration {i}: {texts:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ITERATIONS} sessions failed:\n{}\nserver output:\n{}",
        failures.len(),
        failures.join("\n"),
        server.output()
    );
}
