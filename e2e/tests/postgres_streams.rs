//! Notifications across replicas, end to end: two gateways share sessions through a throwaway
//! Postgres, the client's GET stream is held by one replica, and what an upstream says during a
//! call on the other replica reaches that stream through the notification bus.

use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_dataplane::postgres::FailurePolicy;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::StoresFactory;
use reflow_e2e::harness::{
    FixtureProcess, PolicyDoc, SseReader, TestGateway, TestPostgres, http_client,
};
use serde_json::{Value, json};

mod pg_support;
use pg_support::{WAIT, client_runtime, migrated, pg_replica_stores, temp_dir};

fn conformance_gateway(upstream: &FixtureProcess, key: &str, stores: StoresFactory) -> TestGateway {
    TestGateway::builder()
        .target("cf", &upstream.mcp_url())
        .policy(PolicyDoc::allow("all", "cf").everyone().rule("all", &["*"]))
        .sealing_key(key)
        .stores(stores)
        .start()
        .expect("gateway starts")
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    accept: &str,
    sid: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = http
        .post(url)
        .bearer_auth(token)
        .header("accept", accept)
        .json(&body);
    if let Some(sid) = sid {
        req = req.header("mcp-session-id", sid);
    }
    req.send().await.expect("gateway answers")
}

#[test]
fn a_call_on_one_replica_notifies_the_get_stream_held_by_the_other() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let upstream = FixtureProcess::spawn_with(&fixture_bin!(), ["--conformance"]).expect("fixture");
    let key = SealingKey::generate_base64();
    let (stores_a, held_a) =
        pg_replica_stores(&pg.url(), temp_dir(&pg, "spill-a"), FailurePolicy::Buffer);
    let (stores_b, held_b) =
        pg_replica_stores(&pg.url(), temp_dir(&pg, "spill-b"), FailurePolicy::Buffer);
    let a = conformance_gateway(&upstream, &key, stores_a);
    let b = conformance_gateway(&upstream, &key, stores_b);
    for (gw, held) in [(&a, &held_a), (&b, &held_b)] {
        let bus = held.lock().unwrap().buses[0].clone();
        // The gateway was built on this bus (`App::build`); calls wait until it listens.
        gw.block_on(async {
            assert!(bus.wait_listening(WAIT).await, "bus listens");
        });
    }
    let (url_a, url_b) = (a.target_url("cf"), b.target_url("cf"));
    let token = a.token("gina", &[], &[]);
    let http = http_client().expect("http client");
    let both = "application/json, text/event-stream";
    client_runtime().block_on(async {
        let init = post(
            &http,
            &url_a,
            &token,
            both,
            None,
            json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "pg-streams", "version": "1"}}}),
        )
        .await;
        assert_eq!(init.status(), 200);
        let sid = init
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("a session id")
            .to_owned();
        let done = post(
            &http,
            &url_a,
            &token,
            both,
            Some(&sid),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
        assert_eq!(done.status(), 202);

        // The client's GET stream lands on replica B (B resumes the session from Postgres).
        let get = http
            .get(&url_b)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .send()
            .await
            .expect("B answers");
        assert_eq!(get.status(), 200);
        let mut stream = SseReader::new(get);
        // Give B's GET connection a moment to register before A has something to say.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A JSON-only call on replica A: its upstream's log messages belong on the GET stream.
        let call = post(
            &http,
            &url_a,
            &token,
            "application/json",
            Some(&sid),
            json!({
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "test_tool_with_logging", "arguments": {}}}),
        )
        .await;
        assert_eq!(call.status(), 200);
        let reply: Value = call.json().await.expect("JSON reply");
        assert_eq!(
            reply["result"]["content"][0]["text"], "Tool with logging executed successfully",
            "{reply}"
        );

        let mut logs = Vec::new();
        while logs.len() < 3 {
            let event = stream
                .next_event(WAIT)
                .await
                .expect("B's stream delivers in time")
                .expect("B's stream stays open");
            let Ok(msg) = event.json() else { continue }; // the priming event
            if msg["method"] == "notifications/message" {
                assert_eq!(
                    msg["params"]["_meta"]["io.reflow/target"], "e2e/cf",
                    "{msg}"
                );
                logs.push(
                    msg["params"]["data"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        assert_eq!(
            logs,
            [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed"
            ]
        );
    });
}
