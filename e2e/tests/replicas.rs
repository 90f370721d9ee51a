//! Any replica serves any request: three `reflow-dataplane` processes on one Postgres behind a
//! round-robin balancer that sends every request (each POST of a session too) to the next
//! replica. Driven by the Python and TypeScript SDKs and by raw HTTP where event ids matter:
//! sampling and elicitation answered through other replicas, a GET stream resumed on another
//! replica with nothing lost or repeated, a legacy `/sse` client, a 2026-07-28 parked call
//! retried elsewhere, a stateful STDIO session; then the replica owning the sessions is killed
//! and they go on. Prints the counts (requests, failures, lost events).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reflow_e2e::harness::py_ops::{self, first_text, ok_result};
use reflow_e2e::harness::{PyClient, SseReader, TsClient};
use serde_json::{Value, json};

mod replicas_support;
use replicas_support::*;

/// What the run counted, printed for the closing note.
#[derive(Default)]
struct Tally {
    sdk_actions: usize,
    failures: Vec<String>,
    events_sent: usize,
    events_lost: usize,
    events_repeated: usize,
}

impl Tally {
    /// Counts a client report's actions; failed ones are recorded.
    fn report(&mut self, what: &str, report: &Value) {
        let results = report["results"].as_array().cloned().unwrap_or_default();
        self.sdk_actions += results.len();
        for (i, r) in results.iter().enumerate() {
            if r["ok"] != json!(true) {
                self.failures.push(format!("{what} action {i}: {r}"));
            }
        }
        if report["ok"] != json!(true) {
            self.failures.push(format!("{what}: {}", report["error"]));
        }
    }

    /// Counts `expected` log messages against what arrived (by event id: each is one event).
    fn events(&mut self, expected: usize, got: &[(String, String)]) {
        self.events_sent += expected;
        let unique: BTreeSet<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
        self.events_repeated += got.len() - unique.len();
        self.events_lost += expected.saturating_sub(unique.len());
    }
}

/// Sampling and elicitation, asked by the upstream during a call whose POST landed on one
/// replica, answered by POSTs the balancer sends to the others.
fn sdk_upcalls(c: &Cluster, tally: &mut Tally) {
    let report = PyClient::streamable_http(c.mcp_url())
        .token(dev_token("alice"))
        .answer_client_requests()
        .actions([
            py_ops::call_tool("cf_test_sampling", json!({"prompt": "Say hi"})),
            py_ops::call_tool("cf_test_elicitation", json!({"message": "Who are you?"})),
            py_ops::call_tool("cf_test_sampling", json!({"prompt": "Again"})),
        ])
        .run()
        .expect("python client runs");
    tally.report("python upcalls", &report);
    assert!(
        first_text(ok_result(&report, 0)).contains("sampled: Say hi"),
        "{report:#}"
    );
    assert!(
        first_text(ok_result(&report, 1)).contains("py-user"),
        "{report:#}"
    );
    assert!(
        first_text(ok_result(&report, 2)).contains("sampled: Again"),
        "{report:#}"
    );

    let report = TsClient::streamable_http(c.mcp_url())
        .token(dev_token("tess"))
        .sampling_reply("ts sampled")
        .elicitation_reply(json!({"username": "ts-user", "email": "ts@example.com"}))
        .actions([
            py_ops::call_tool("cf_test_sampling", json!({"prompt": "From TS"})),
            py_ops::call_tool("cf_test_elicitation", json!({"message": "Name?"})),
        ])
        .run()
        .expect("typescript client runs");
    tally.report("typescript upcalls", &report);
    assert!(
        first_text(ok_result(&report, 0)).contains("ts sampled"),
        "{report:#}"
    );
    assert!(
        first_text(ok_result(&report, 1)).contains("ts-user"),
        "{report:#}"
    );
}

/// A legacy HTTP+SSE client: its stream is on one replica, its POSTs go round the others.
fn legacy_sse(c: &Cluster, tally: &mut Tally) {
    let report = PyClient::sse(format!("{}/sse", c.lb.url()))
        .token(dev_token("lee"))
        .actions([
            py_ops::call_tool("cf_echo", json!({"text": "one"})),
            py_ops::call_tool("cf_echo", json!({"text": "two"})),
            py_ops::list_tools(),
            py_ops::call_tool("cf_echo", json!({"text": "three"})),
        ])
        .run()
        .expect("python sse client runs");
    tally.report("legacy sse", &report);
    assert_eq!(
        first_text(ok_result(&report, 3)),
        "[cf] three",
        "{report:#}"
    );
}

/// A 2026-07-28 client: the upstream asks mid-call, the call is parked on one replica and the
/// retry carrying the answer reaches another.
fn parked_call(c: &Cluster, tally: &mut Tally) {
    let report = PyClient::streamable_http(c.mcp_url())
        .mode("2026-07-28")
        .token(dev_token("sam"))
        .answer_client_requests()
        .actions([
            py_ops::call_tool("cf_test_elicitation", json!({"message": "Stateless?"})),
            py_ops::call_tool("cf_test_sampling", json!({"prompt": "Parked"})),
        ])
        .run()
        .expect("python 2026 client runs");
    tally.report("parked call", &report);
    assert_eq!(report["protocol_version"], "2026-07-28", "{report:#}");
    assert!(
        first_text(ok_result(&report, 0)).contains("py-user"),
        "{report:#}"
    );
    assert!(
        first_text(ok_result(&report, 1)).contains("sampled: Parked"),
        "{report:#}"
    );
}

/// Which child answered a `whoami`: each child has a HOME folder of its own (the pid is the
/// same in every sandboxed child).
fn child_of(me: &Value) -> String {
    me["env"]["HOME"].as_str().unwrap_or_default().to_owned()
}

/// A stateful STDIO session: every call, whichever replica it reaches, is served by the one
/// child of this session (same HOME), which keeps the session's log level.
fn stateful_stdio(c: &Cluster, tally: &mut Tally) -> Vec<String> {
    let report = PyClient::streamable_http(c.mcp_url())
        .token(dev_token("stella"))
        .actions([
            py_ops::set_logging_level("debug"),
            py_ops::call_tool("st_whoami", json!({})),
            py_ops::call_tool("st_whoami", json!({})),
            py_ops::call_tool("st_whoami", json!({})),
        ])
        .run()
        .expect("python stdio client runs");
    tally.report("stateful stdio", &report);
    let homes: Vec<String> = (1..4)
        .map(|i| {
            let me: Value = serde_json::from_str(first_text(ok_result(&report, i))).expect("json");
            assert_eq!(me["transport"], "stdio", "{me}");
            assert_eq!(me["logLevel"], "debug", "{me}");
            child_of(&me)
        })
        .collect();
    assert!(homes.iter().all(|h| *h == homes[0]), "one child: {homes:?}");
    homes
}

/// Events for a GET stream held through one replica; the stream is dropped, more events come,
/// and it is resumed with `Last-Event-ID` through another replica: all arrive once, in order.
async fn resumed_stream(c: &Cluster, tally: &mut Tally) {
    const CALLS: usize = 4;
    let per_round = CALLS * LOGGED.len();
    let http = http();
    let (url, token) = (c.mcp_url(), dev_token("gina"));
    let sid = open_session(&http, &url, &token).await;
    let before = c.lb.routed().len();
    let get = get_stream(&http, &url, &token, &sid, None).await;
    assert_eq!(get.status(), 200);
    let first_at = c.lb.routed()[before].replica;
    let mut stream = SseReader::new(get);
    tokio::time::sleep(Duration::from_millis(200)).await;
    emit(&http, &url, &token, &sid, CALLS).await;
    let got = read_labels(&mut stream, per_round).await;
    let last = got.last().map(|(_, id)| id.clone()).expect("events came");
    drop(stream);
    // Said while nobody listens: kept for the resumption.
    tokio::time::sleep(Duration::from_millis(100)).await;
    emit(&http, &url, &token, &sid, CALLS).await;
    // Resumed at a replica that neither held the stream nor owns the session.
    let owner = c.owner_of(&format!("s:{sid}")).expect("an owner");
    let other = (0..c.replicas.len())
        .find(|i| *i != first_at && *i != owner)
        .expect("a third replica");
    let other_url = c.replicas[other].mcp_url();
    let again = get_stream(&http, &other_url, &token, &sid, Some(&last)).await;
    assert_eq!(again.status(), 200);
    let mut stream = SseReader::new(again);
    emit(&http, &url, &token, &sid, CALLS).await;
    let rest = read_labels(&mut stream, 2 * per_round).await;
    let all: Vec<_> = got.into_iter().chain(rest).collect();
    tally.events(3 * per_round, &all);
    let texts: Vec<&str> = all.iter().map(|(l, _)| l.as_str()).collect();
    let expected: Vec<&str> = LOGGED.iter().copied().cycle().take(3 * per_round).collect();
    assert_eq!(texts, expected, "every event once, in order");
}

#[test]
fn three_replicas_behind_a_round_robin_balancer_serve_every_session() {
    let c = Cluster::start(3);
    let mut tally = Tally::default();
    runtime().block_on(resumed_stream(&c, &mut tally));
    sdk_upcalls(&c, &mut tally);
    legacy_sse(&c, &mut tally);
    parked_call(&c, &mut tally);
    let _homes = stateful_stdio(&c, &mut tally);
    let spread: BTreeSet<usize> = c.lb.routed().iter().map(|r| r.replica).collect();
    assert_eq!(spread.len(), 3, "every replica got requests");
    let mut c = c;
    killed_owner(&mut c, &mut tally);
    println!(
        "replicas: {} requests through the balancer ({} connections to the killed replica \
         refused and sent on), {} SDK actions, {} failures, {} events sent, {} lost, {} repeated",
        c.lb.requests(),
        c.lb.skipped(),
        tally.sdk_actions,
        tally.failures.len(),
        tally.events_sent,
        tally.events_lost,
        tally.events_repeated,
    );
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    assert_eq!(tally.events_lost, 0);
    assert_eq!(tally.events_repeated, 0);
    assert_eq!(c.lb.unserved(), 0);
}

/// Session keys recorded so far.
fn owned_keys(c: &Cluster) -> BTreeSet<String> {
    psql(
        &c.db_url,
        "SELECT key FROM reflow_owners WHERE key LIKE 's:%'",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// A Python SDK session runs (a call, a pause, more calls with sampling and the stateful
/// child); during its pause the replica that owns it is killed. A raw session on the same
/// replica holds a stateful STDIO child (log level `debug`, a subscription), a subscription on
/// the shared STDIO child, and a GET stream that it leaves while more events are said: those
/// are buffered and undelivered when the owner dies. A legacy `/sse` client is connected to the
/// same replica. The sessions go on through the other two: the SDK's calls answer, the child is
/// restarted on the new owner with the session's log level and subscription, the shared child
/// there takes the session's subscription, and the GET stream resumes with the dead owner's
/// `Last-Event-ID` on the new owner with nothing lost or repeated; the legacy stream ends and
/// its session answers 404 at once, so its client reconnects.
fn killed_owner(c: &mut Cluster, tally: &mut Tally) {
    let rt = runtime();
    let http = http();
    let (url, token) = (c.mcp_url(), dev_token("kim"));
    let known = owned_keys(c);
    let sdk_url = c.mcp_url();
    let sdk = std::thread::spawn(move || {
        PyClient::streamable_http(sdk_url)
            .token(dev_token("kai"))
            .answer_client_requests()
            .actions([
                py_ops::call_tool("cf_echo", json!({"text": "before"})),
                py_ops::sleep(4.0),
                py_ops::call_tool("cf_test_sampling", json!({"prompt": "After the kill"})),
                py_ops::call_tool("cf_echo", json!({"text": "after"})),
                py_ops::call_tool("st_echo", json!({"text": "stdio after"})),
            ])
            .run()
            .expect("python client runs")
    });
    let deadline = Instant::now() + WAIT;
    let sdk_key = loop {
        if let Some(k) = owned_keys(c).difference(&known).next() {
            break k.clone();
        }
        assert!(Instant::now() < deadline, "the SDK session never opened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let victim = c.owner_of(&sdk_key).expect("the SDK session has an owner");
    // A raw session on the same replica (round robin: within three tries).
    let sid = rt.block_on(async {
        for _ in 0..6 {
            let sid = open_session(&http, &url, &token).await;
            if c.owner_of(&format!("s:{sid}")) == Some(victim) {
                return sid;
            }
        }
        panic!("no session landed on r{victim}");
    });
    let (before, last) = rt.block_on(async {
        let set_level = json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel",
                               "params": {"level": "debug"}});
        let r = post(
            &http,
            &url,
            &token,
            Some(&sid),
            "application/json",
            set_level,
        )
        .await;
        assert_eq!(r.status(), 200);
        for target in ["st", "sh"] {
            subscribe(&http, &url, &token, &sid, target).await;
        }
        let child = stdio_child(&http, &url, &token, &sid)
            .await
            .expect("a child");
        let get = get_stream(&http, &url, &token, &sid, None).await;
        let mut stream = SseReader::new(get);
        tokio::time::sleep(Duration::from_millis(200)).await;
        emit(&http, &url, &token, &sid, 1).await;
        let got = read_labels(&mut stream, LOGGED.len()).await;
        tally.events(LOGGED.len(), &got);
        let last = got.last().map(|(_, id)| id.clone()).expect("events came");
        // The client leaves its stream; what is said now waits in the owner's replay buffer
        // (and the journal): buffered and undelivered when the owner dies.
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
        emit(&http, &url, &token, &sid, 2).await;
        (child, last)
    });
    let mut legacy = rt.block_on(legacy_stream(
        &http,
        &format!("http://{}", c.replicas[victim].addr()),
    ));
    let started = Instant::now();
    c.replicas[victim].kill();
    let (after, first_answer) = rt.block_on(async {
        legacy_after_the_kill(&http, c, &mut legacy, tally).await;
        let mut homes = Vec::new();
        let mut first_answer = None;
        for _ in 0..4 {
            match stdio_child(&http, &url, &token, &sid).await {
                Ok(home) => {
                    first_answer.get_or_insert(started.elapsed());
                    homes.push(home);
                }
                Err(e) => tally.failures.push(format!("after the kill: {e}")),
            }
        }
        shared_child_kept(&http, &url, &token, &sid).await;
        emit(&http, &url, &token, &sid, 2).await;
        let again = get_stream(&http, &url, &token, &sid, Some(&last)).await;
        assert_eq!(again.status(), 200);
        let mut stream = SseReader::new(again);
        // Two calls' events said before the kill (only the dead owner had them in memory) and
        // two calls' said after it, once each and in order.
        let rest = read_labels(&mut stream, 4 * LOGGED.len()).await;
        tally.events(4 * LOGGED.len(), &rest);
        let texts: Vec<&str> = rest.iter().map(|(l, _)| l.as_str()).collect();
        let expected: Vec<&str> = LOGGED.iter().copied().cycle().take(texts.len()).collect();
        assert_eq!(texts, expected, "in order");
        hostile_resumptions(&http, &url, &sid, &last).await;
        (homes, first_answer)
    });
    assert!(
        !after.is_empty() && after.iter().all(|h| *h == after[0] && *h != before),
        "child {before} then {after:?}"
    );
    let new_owner = c.owner_of(&format!("s:{sid}")).expect("claimed");
    assert_ne!(new_owner, victim);
    let report = sdk.join().expect("sdk thread");
    tally.report("sdk across the kill", &report);
    assert!(
        first_text(ok_result(&report, 2)).contains("sampled: After the kill"),
        "{report:#}"
    );
    assert_eq!(
        first_text(ok_result(&report, 4)),
        "[st] stdio after",
        "{report:#}"
    );
    println!(
        "replicas: owner r{victim} killed mid-run; its sessions answered on r{new_owner}, first \
         answer {first_answer:?} after the kill"
    );
}

/// `resources/subscribe` to `target`'s watched resource in the session.
async fn subscribe(http: &reqwest::Client, url: &str, token: &str, sid: &str, target: &str) {
    let uri = stdio_resource(http, url, token, sid, target).await;
    let sub = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
                     "params": {"uri": uri}});
    let r = post(http, url, token, Some(sid), "application/json", sub).await;
    let reply: Value = r.json().await.expect("json");
    assert!(
        reply["result"].is_object(),
        "subscribed on {target}: {reply}"
    );
}

/// The shared STDIO child on the new owner holds the session's subscription (and is told the
/// session's log level): what a takeover carries for a child shared by several sessions.
async fn shared_child_kept(http: &reqwest::Client, url: &str, token: &str, sid: &str) {
    let call = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
                      "params": {"name": "sh_whoami", "arguments": {}}});
    let r = post(http, url, token, Some(sid), "application/json", call).await;
    let reply: Value = r.json().await.expect("json");
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let me: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("{reply}"));
    assert_eq!(me["logLevel"], "debug", "{me}");
    assert!(
        me["subscriptions"].to_string().contains("watched-resource"),
        "the shared child on the new owner holds the session's subscription: {me}"
    );
}

/// A legacy `/sse` stream opened at `base` (one replica); its endpoint event is read.
async fn legacy_stream(http: &reqwest::Client, base: &str) -> (SseReader, String) {
    let resp = http
        .get(format!("{base}/sse"))
        .bearer_auth(dev_token("leila"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("legacy stream");
    assert_eq!(resp.status(), 200);
    let mut stream = SseReader::new(resp);
    let first = stream
        .next_event(WAIT)
        .await
        .expect("an event")
        .expect("the endpoint event");
    assert_eq!(first.event, "endpoint", "{first:?}");
    (stream, first.data)
}

/// What a legacy client sees when the replica holding its stream dies: the stream ends (no
/// hang), and a POST to its endpoint, through any replica, is answered 404 at once so the
/// client opens a new stream.
async fn legacy_after_the_kill(
    http: &reqwest::Client,
    c: &Cluster,
    (stream, endpoint): &mut (SseReader, String),
    tally: &mut Tally,
) {
    let started = Instant::now();
    match stream.next_event(Duration::from_secs(5)).await {
        Ok(None) | Err(reflow_e2e::harness::HarnessError::Other(_)) => {}
        other => tally
            .failures
            .push(format!("legacy stream after the kill: {other:?}")),
    }
    let ended = started.elapsed();
    let started = Instant::now();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let r = http
        .post(format!("{}{endpoint}", c.lb.url()))
        .bearer_auth(dev_token("leila"))
        .json(&ping)
        .send()
        .await
        .expect("balancer answers");
    let answered = started.elapsed();
    println!(
        "replicas: legacy /sse stream ended {ended:?} after the kill; its POST answered {} in \
         {answered:?}",
        r.status()
    );
    assert_eq!(
        r.status(),
        404,
        "the legacy session is gone with its stream"
    );
    assert!(answered < Duration::from_secs(5), "{answered:?}");
}

/// Resumptions a client must not get anything from: another user's session (404 like any
/// session not theirs), an id out of range (400), an id past everything (200, nothing
/// replayed), a stream number nobody gave out (404).
async fn hostile_resumptions(http: &reqwest::Client, url: &str, sid: &str, last: &str) {
    let bob = dev_token("bob");
    let r = get_stream(http, url, &bob, sid, Some(last)).await;
    assert_eq!(r.status(), 404, "another user's session");
    let kim = dev_token("kim");
    for forged in ["0:99999999999999999999999999", "x:1", "0:-1"] {
        let r = get_stream(http, url, &kim, sid, Some(forged)).await;
        assert_eq!(r.status(), 400, "{forged}");
    }
    let huge = "9".repeat(16 * 1024);
    let r = get_stream(http, url, &kim, sid, Some(&huge)).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = get_stream(http, url, &kim, sid, Some(&format!("{}:1", u64::MAX))).await;
    assert_eq!(r.status(), 404, "a stream nobody gave out");
    let r = get_stream(http, url, &kim, sid, Some(&format!("0:{}", u64::MAX))).await;
    assert_eq!(r.status(), 200);
    let mut stream = SseReader::new(r);
    let replayed = stream.next_event(Duration::from_millis(500)).await;
    assert!(
        !matches!(replayed, Ok(Some(_))),
        "nothing is after the last id: {replayed:?}"
    );
}

/// `st_whoami` in the session: the child's HOME (which child answered); it must keep the
/// session's log level (`debug`) and its resource subscription.
async fn stdio_child(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    sid: &str,
) -> Result<String, String> {
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "st_whoami", "arguments": {}}});
    let r = post(http, url, token, Some(sid), "application/json", call).await;
    if r.status() != 200 {
        return Err(format!("HTTP {}", r.status()));
    }
    let reply: Value = r.json().await.map_err(|e| e.to_string())?;
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let me: Value = serde_json::from_str(text).map_err(|_| format!("{reply}"))?;
    assert_eq!(me["logLevel"], "debug", "{me}");
    let subscribed = me["subscriptions"].to_string();
    assert!(
        subscribed.contains("watched-resource"),
        "the child holds the subscription: {me}"
    );
    Ok(child_of(&me))
}

/// The URI of a STDIO Target's (`st`, `sh`) watched resource, as the session's resource list
/// names it.
async fn stdio_resource(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    sid: &str,
    target: &str,
) -> String {
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "resources/list"});
    let r = post(http, url, token, Some(sid), "application/json", list).await;
    let reply: Value = r.json().await.expect("json");
    let prefix = format!("reflow://{target}/");
    reply["result"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uri"].as_str())
        .find(|u| u.starts_with(&prefix) && u.ends_with("watched-resource"))
        .unwrap_or_else(|| panic!("no {target} resource in {reply}"))
        .to_owned()
}
