//! Limits per identity and in total on the real binary: one user opening sessions without end,
//! and sessions carrying huge `clientInfo`, are refused with clear, audited errors that never
//! affect other users.

use std::time::{Duration, Instant};

use serde_json::json;

mod hostile_support;
use hostile_support::{Gw, initialize_body, open_session, post, runtime};

#[test]
fn sessions_are_capped_per_user_and_in_total_without_affecting_others() {
    let gw = Gw::start(
        "limits",
        "{limits: {sessionsPerUser: 5, sessionsTotal: 12}}",
    );
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        for _ in 0..5 {
            open_session(&http, &gw, "mallory")
                .await
                .expect("within quota");
        }
        let (status, headers, body) = post(
            &http,
            &gw,
            "mallory",
            None,
            &initialize_body(json!({"name": "flood", "version": "0"})),
        )
        .await;
        assert_eq!(status, 429, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert!(body.contains("too many open sessions"), "{body}");
        // Someone else is not affected by mallory's quota.
        open_session(&http, &gw, "alice")
            .await
            .expect("alice opens a session");
        for i in 0..6 {
            open_session(&http, &gw, &format!("user{i}"))
                .await
                .expect("within the total");
        }
        let refused = open_session(&http, &gw, "latecomer").await;
        assert_eq!(refused, Err(503), "the gateway-wide cap answers 503");
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    // The audit writer flushes in batches: wait for both refusals.
    loop {
        let out = gw.process.output();
        if out.contains("limit_sessions_per_user") && out.contains("limit_sessions_total") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refusals were not audited: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_huge_client_info_is_refused_before_a_session_keeps_it() {
    let gw = Gw::start("clientinfo", "{}");
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let huge = json!({"name": "big", "version": "0", "padding": "x".repeat(512 * 1024)});
        let (status, _, body) = post(&http, &gw, "mallory", None, &initialize_body(huge)).await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("clientInfo"), "{body}");
        let metrics = http
            .get(gw.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("reflow_sessions 0"),
            "no session kept: {metrics}"
        );
        open_session(&http, &gw, "mallory")
            .await
            .expect("a normal initialize still works");
    });
}

#[test]
fn one_users_requests_in_flight_are_capped_without_slowing_another() {
    let (_fixture, gw) = gateway_to_fixture("inflight", "{limits: {inFlightPerUser: 2}}");
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let mallory = open_session(&http, &gw, "mallory").await.expect("session");
        let alice = open_session(&http, &gw, "alice").await.expect("session");
        let slow = |i: u64| {
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "one_slow", "arguments": {"ms": 1500}}})
        };
        let flood = (0..5).map(|i| {
            let (http, gw, sid, body) = (&http, &gw, mallory.clone(), slow(i));
            async move { post(http, gw, "mallory", Some(&sid), &body).await }
        });
        let others = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            post(&http, &gw, "alice", Some(&alice), &slow(99)).await
        };
        let (floods, theirs) = tokio::join!(futures::future::join_all(flood), others);
        let refused: Vec<_> = floods.iter().filter(|(s, _, _)| *s == 429).collect();
        let served = floods.iter().filter(|(s, _, _)| *s == 200).count();
        assert_eq!(served, 2, "{floods:?}");
        assert_eq!(refused.len(), 3, "{floods:?}");
        assert!(
            refused
                .iter()
                .all(|(_, h, _)| h.contains_key("retry-after"))
        );
        assert_eq!(theirs.0, 200, "another user is not limited: {}", theirs.2);
    });
}

/// A streamed (SSE) reply leaves its handler at once and its body runs on for the whole call:
/// the request stays counted until that body ends, or the cap would not hold for SSE clients.
#[test]
fn a_streamed_reply_counts_as_in_flight_until_it_ends() {
    let (_fixture, gw) = gateway_to_fixture("streamed", "{limits: {inFlightPerUser: 1}}");
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let sid = open_session(&http, &gw, "mallory").await.expect("session");
        let slow = |i: u64| {
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "one_slow", "arguments": {"ms": 1500}}})
        };
        let later = async {
            // Well after the first reply's headers went out, well before its body ends.
            tokio::time::sleep(Duration::from_millis(500)).await;
            post(&http, &gw, "mallory", Some(&sid), &slow(2)).await
        };
        let first_call = slow(1);
        let (first, second) =
            tokio::join!(post(&http, &gw, "mallory", Some(&sid), &first_call), later);
        assert_eq!(first.0, 200, "{}", first.2);
        assert!(first.2.contains("slept 1500 ms"), "{}", first.2);
        assert_eq!(
            second.0, 429,
            "the first call is still running: {}",
            second.2
        );
        let (after, _, body) = post(&http, &gw, "mallory", Some(&sid), &slow(3)).await;
        assert_eq!(after, 200, "the slot is free once the reply ended: {body}");
    });
}

fn gateway_to_fixture(name: &str, gateway_yaml: &str) -> (reflow_e2e::harness::FixtureProcess, Gw) {
    hostile_support::gateway_to_fixture_with(name, gateway_yaml, &[])
}

/// Legacy HTTP+SSE (2024-11-05): each `GET /sse` is a session, under the same caps as
/// `initialize` on /mcp; closing a stream frees its slot.
#[test]
fn legacy_sse_sessions_are_capped_per_user_and_in_total() {
    let gw = Gw::start(
        "legacy-limits",
        "{limits: {sessionsPerUser: 2, sessionsTotal: 4}}",
    );
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let open = |user: &str| {
            http.get(gw.url("/sse"))
                .bearer_auth(hostile_support::token(user))
                .header("accept", "text/event-stream")
                .send()
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            let resp = open("mallory").await.expect("answers");
            assert_eq!(resp.status(), 200);
            held.push(resp);
        }
        let refused = open("mallory").await.expect("answers");
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        let body = refused.text().await.unwrap_or_default();
        assert!(body.contains("too many open sessions"), "{body}");
        // A Streamable HTTP session counts against the same quota.
        let (status, _, _) = post(
            &http,
            &gw,
            "mallory",
            None,
            &initialize_body(json!({"name": "x", "version": "0"})),
        )
        .await;
        assert_eq!(status, 429);
        // Another user is unaffected until the gateway-wide cap.
        for _ in 0..2 {
            let resp = open("alice").await.expect("answers");
            assert_eq!(resp.status(), 200);
            held.push(resp);
        }
        assert_eq!(open("bob").await.expect("answers").status(), 503);
        // A closed stream ends its session and frees the slot.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = open("bob").await.expect("answers");
            if resp.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.process.output().contains("limit_sessions_total") {
        assert!(Instant::now() < deadline, "the refusal was not audited");
        std::thread::sleep(Duration::from_millis(50));
    }
}
