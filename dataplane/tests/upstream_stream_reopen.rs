//! Issue 19: the upstream session's GET stream, when the upstream ends it. An upstream may drop
//! what it sends while no stream is open (the TypeScript SDK does), so a stream that ended is
//! reopened at once with the last event id it gave (`Last-Event-ID`, for an upstream that
//! replays); failures still back off, and hostile streams (hang-ups, refusals, oversized or
//! unprintable ids) neither loop nor get their ids echoed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reflow_dataplane::mcp::GatewayConfig;
use serde_json::json;
use support::*;

/// What the upstream does with its GET streams.
#[derive(Clone, Copy)]
enum Mode {
    /// Each of the first `n` streams sends one event (id `ev-<k>`) and ends; then one stays open.
    OneEventThenEnd(usize),
    /// Accepts every GET and ends it at once, with nothing.
    HangUp,
    /// The first stream sends one event with this id and ends; any GET with `Last-Event-ID` is
    /// refused (400), any other stays open.
    RefuseResume(&'static str),
}

/// Every GET the upstream got: when, and the `Last-Event-ID` it carried.
type Gets = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

#[derive(Clone)]
struct Up {
    mode: Mode,
    gets: Gets,
}

fn event_stream(body: String, stay_open: bool) -> Response {
    let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let body = if stay_open {
        axum::body::Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
    } else {
        axum::body::Body::from_stream(first)
    };
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn get(State(up): State<Up>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let k = {
        let mut gets = up.gets.lock().unwrap();
        gets.push((Instant::now(), last.clone()));
        gets.len()
    };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": k}});
    match up.mode {
        Mode::OneEventThenEnd(n) if k <= n => event_stream(
            format!("id: ev-{k}\nevent: message\ndata: {note}\n\n"),
            false,
        ),
        Mode::OneEventThenEnd(_) => event_stream(String::new(), true),
        Mode::HangUp => event_stream(String::new(), false),
        Mode::RefuseResume(id) if k == 1 => {
            event_stream(format!("id: {id}\ndata: {note}\n\n"), false)
        }
        Mode::RefuseResume(_) if last.is_some() => StatusCode::BAD_REQUEST.into_response(),
        Mode::RefuseResume(_) => event_stream(String::new(), true),
    }
}

async fn post(body: Bytes) -> Response {
    let msg: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match msg["method"].as_str() {
        Some("initialize") => json!({"protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}}, "serverInfo": {"name": "reopen", "version": "0"}}),
        _ => json!({"tools": []}),
    };
    (
        [("mcp-session-id", "s-1")],
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
    )
        .into_response()
}

/// A gateway in front of an upstream in `mode`, with one session that has made a call (which
/// opens the upstream session and its GET stream); the upstream's record of GETs.
async fn setup(mode: Mode) -> (Harness, Gets) {
    let up = Up {
        mode,
        gets: Arc::default(),
    };
    let gets = up.gets.clone();
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(post).get(get))
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = temp_dir();
    write_single_target(&dir, "up", &target_yaml("up", &url, 8000));
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let sid = h.open("/mcp/t/up", "alice").await;
    let r = h
        .rpc("/mcp/t/up", "alice", Some(&sid), "tools/list", json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (h, gets)
}

fn ids(gets: &Mutex<Vec<(Instant, Option<String>)>>) -> Vec<Option<String>> {
    gets.lock().unwrap().iter().map(|g| g.1.clone()).collect()
}

async fn wait_for_gets(gets: &Mutex<Vec<(Instant, Option<String>)>>, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while gets.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stream_that_ends_is_reopened_at_once_with_the_last_event_id() {
    let (_h, gets) = setup(Mode::OneEventThenEnd(5)).await;
    wait_for_gets(&gets, 6, Duration::from_secs(5)).await;
    let seen = gets.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "GETs: {:?}", ids(&gets));
    // Each stream said something before it ended: no backoff (1 s, 2 s, … before the fix).
    let span = seen[5].0 - seen[0].0;
    assert!(span < Duration::from_millis(900), "6 GETs took {span:?}");
    let expected: Vec<Option<String>> = std::iter::once(None)
        .chain((1..=5).map(|k| Some(format!("ev-{k}"))))
        .collect();
    assert_eq!(ids(&gets), expected);
}

#[tokio::test]
async fn an_upstream_that_says_one_thing_and_hangs_up_is_asked_at_most_ten_times_a_second() {
    let (_h, gets) = setup(Mode::OneEventThenEnd(usize::MAX)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = gets.lock().unwrap().len();
    assert!((5..=11).contains(&n), "{n} GETs in 1 s");
}

#[tokio::test]
async fn an_upstream_that_hangs_up_at_once_gets_a_backoff_not_a_loop() {
    let (_h, gets) = setup(Mode::HangUp).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = gets.lock().unwrap().len();
    // At once, once more at once, then after 1 s (and 2 s later): no hot loop.
    assert!((2..=4).contains(&n), "{n} GETs in 2.5 s");
    assert!(ids(&gets).iter().all(Option::is_none));
}

#[tokio::test]
async fn a_refused_resumption_is_asked_again_without_last_event_id() {
    let (_h, gets) = setup(Mode::RefuseResume("ev-1")).await;
    wait_for_gets(&gets, 3, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&gets), vec![None, Some("ev-1".to_owned()), None]);
}

#[tokio::test]
async fn an_oversized_event_id_is_not_sent_back() {
    let long: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
    let (_h, gets) = setup(Mode::RefuseResume(long)).await;
    wait_for_gets(&gets, 2, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No resumption with it (which this upstream would refuse): the second GET stays open.
    assert_eq!(ids(&gets), vec![None, None]);
}

#[tokio::test]
async fn an_unprintable_event_id_is_not_sent_back() {
    let (_h, gets) = setup(Mode::RefuseResume("ev\u{1}1")).await;
    wait_for_gets(&gets, 2, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&gets), vec![None, None]);
}
