//! A secret in a Target URL (`user:pass@`, `?api_key=…`) never comes back to a client in an
//! upstream error: the upstream here accepts each connection and closes it unanswered, which
//! reqwest reports as a request error naming the URL.

mod support;

use std::time::Duration;

use reflow_dataplane::mcp::GatewayConfig;
use serde_json::json;
use support::*;

const QUERY_SECRET: &str = "qsecret-8d1f2";
const USERINFO_SECRET: &str = "hunter2-pw-77";

/// Accepts connections and drops them at once, until the test ends.
async fn slamming_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    format!("http://bob:{USERINFO_SECRET}@{addr}/mcp?api_key={QUERY_SECRET}")
}

#[tokio::test]
async fn upstream_errors_name_no_url_secret() {
    let url = slamming_upstream().await;
    let dir = temp_dir();
    write_single_target(&dir, "slam", &target_yaml("slam", &url, 5_000));
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let body = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let sid = h.open("/mcp", "alice").await;
            let r = h
                .rpc(
                    "/mcp",
                    "alice",
                    Some(&sid),
                    "tools/call",
                    json!({"name": "slam_echo"}),
                )
                .await;
            let text = r.body.to_string();
            // Until the snapshot is loaded the tool is unknown; then the upstream fails.
            if text.contains("http client") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the upstream error never came back");
    assert!(
        !body.contains(QUERY_SECRET),
        "query secret in the reply: {body}"
    );
    assert!(
        !body.contains(USERINFO_SECRET),
        "userinfo secret in the reply: {body}"
    );
}
