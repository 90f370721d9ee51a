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

/// One session: the server ends its GET stream (`closeStandaloneSSEStream`), waits `delay_ms`,
/// then samples on the standalone stream, `ITERATIONS` times. The texts that came back wrong.
fn sample_after_drops(server: &TsServer, delay_ms: u64) -> Vec<String> {
    let gw = gateway(server);
    let token = gw.token("alice", &[], &[]);
    let mut actions = vec![py_ops::call_tool("sample", json!({"prompt": "hi"}))];
    actions.extend(
        (0..ITERATIONS)
            .map(|_| py_ops::call_tool("sample_after_drop", json!({"delayMs": delay_ms}))),
    );
    let report = TsClient::streamable_http(gw.target_url("ts"))
        .token(&token)
        .sampling_reply("after")
        .request_timeout(std::time::Duration::from_secs(8))
        .actions(actions)
        .run()
        .expect("typescript client runs");
    (0..=ITERATIONS)
        .filter_map(|n| {
            let text = report["results"][n]["result"]["content"][0]["text"].as_str();
            (text != Some("sampled: after")).then(|| format!("call {n}: {}", report["results"][n]))
        })
        .collect()
}

/// The TS SDK drops a standalone request while no GET stream is open: the gateway reopens a
/// stream the server ended at once (it waited a 1 s backoff before, and the request was lost).
#[test]
fn a_request_sent_after_the_server_ends_its_get_stream_reaches_the_client() {
    let server = TsServer::spawn().expect("ts server starts");
    let failures = sample_after_drops(&server, 200);
    assert!(
        failures.is_empty(),
        "{} of {ITERATIONS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// With an event store the server keeps what it sent while no stream was open: the gateway
/// reopens with `Last-Event-ID` and the request is replayed, even when sent at once.
#[test]
fn a_server_with_an_event_store_replays_what_it_sent_while_the_stream_was_closed() {
    let server = TsServer::spawn_with_event_store().expect("ts server starts");
    let failures = sample_after_drops(&server, 0);
    assert!(
        failures.is_empty(),
        "{} of {ITERATIONS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
