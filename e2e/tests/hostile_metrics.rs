//! Metric cardinality under attack on the real binary: unknown methods, however many and however
//! long, fold into one `method` label value, so `/metrics` stays small.

use serde_json::json;

mod hostile_support;
use hostile_support::{Gw, open_session, post, runtime};

#[test]
fn unknown_methods_fold_into_one_label_and_metrics_stay_small() {
    let gw = Gw::start("metrics", "{}");
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let sid = open_session(&http, &gw, "mallory").await.expect("session");
        let metrics = || async {
            http.get(gw.url("/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text")
        };
        let before = metrics().await.len();
        for i in 0..300 {
            let body = json!({"jsonrpc": "2.0", "id": i, "method": format!("evil/method-{i}")});
            post(&http, &gw, "mallory", Some(&sid), &body).await;
        }
        let long = "m".repeat(256 * 1024);
        for i in 0..4 {
            let body = json!({"jsonrpc": "2.0", "id": 1000 + i, "method": format!("{long}{i}")});
            post(&http, &gw, "mallory", Some(&sid), &body).await;
        }
        let text = metrics().await;
        assert!(
            !text.contains("evil/method-"),
            "raw method names reached /metrics"
        );
        assert!(
            !text.contains(&long[..1024]),
            "a long method name reached /metrics"
        );
        assert!(text.contains("method=\"other\""), "{text}");
        assert!(
            text.len() < before + 16 * 1024,
            "/metrics grew from {before} to {} bytes",
            text.len()
        );
    });
}
