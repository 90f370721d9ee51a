//! Postgres for sessions and audit, against a real throwaway cluster (initdb + pg_ctl on a free
//! loopback port): two gateways sharing one database serve one session, a notification crosses
//! replicas, audit events survive an outage exactly once, `failClosed` refuses while the
//! database is down, migrations tolerate replicas starting together, and the audit query reads
//! what was written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::audit::AuditSink;
use reflow_dataplane::postgres::{
    AuditFilter, AuditSettings, Database, FailurePolicy, NotificationBus, PgAuditSink, PgBus,
    PgSessionStore, SessionSettings, purge_expired_audit, query_audit,
};
use reflow_dataplane::session::SessionStore;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::StoresFactory;
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, TestGateway, TestPostgres, http_client};
use secrecy::SecretString;
use serde_json::{Value, json};

mod pg_support;
use pg_support::{WAIT, client_runtime, database, migrated, pg_stores, temp_dir};

fn gateway(fixture: &FixtureProcess, key: &str, stores: StoresFactory) -> TestGateway {
    TestGateway::builder()
        .target("one", &fixture.mcp_url())
        .policy(
            PolicyDoc::allow("one-all", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::deny("no-crash", "one")
                .everyone()
                .rule("tool", &["crash"])
                .priority(10),
        )
        .sealing_key(key)
        .stores(stores)
        .start()
        .expect("gateway starts")
}

/// A raw Streamable HTTP client: one JSON-RPC POST, the status, headers and JSON body.
struct Rpc {
    http: reqwest::Client,
    token: String,
}

struct Answer {
    status: u16,
    session: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

impl Rpc {
    async fn post(&self, url: &str, sid: Option<&str>, trace: Option<&str>, body: Value) -> Answer {
        let mut req = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(sid) = sid {
            req = req.header("mcp-session-id", sid);
        }
        if let Some(t) = trace {
            req = req.header("traceparent", format!("00-{t}-0000000000000001-01"));
        }
        let resp = req.send().await.expect("gateway answers");
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let session = header("mcp-session-id");
        let retry_after = header("retry-after");
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            session,
            retry_after,
            body,
        }
    }

    async fn open(&self, url: &str) -> String {
        let init = self
            .post(
                url,
                None,
                None,
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "pg-test", "version": "1"}}}),
            )
            .await;
        assert_eq!(init.status, 200, "{}", init.body);
        let sid = init.session.expect("a session id");
        let done = self
            .post(
                url,
                Some(&sid),
                None,
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(done.status, 202);
        sid
    }

    async fn call(
        &self,
        url: &str,
        sid: &str,
        trace: Option<&str>,
        tool: &str,
        text: &str,
    ) -> Answer {
        self.post(
            url,
            Some(sid),
            trace,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": tool, "arguments": {"text": text}}}),
        )
        .await
    }

    async fn tools(&self, url: &str, sid: &str) -> Value {
        let a = self
            .post(
                url,
                Some(sid),
                None,
                json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["result"]["tools"].clone()
    }
}

fn echo_text(a: &Answer) -> String {
    a.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_session_opened_on_one_replica_is_served_by_another() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let key = SealingKey::generate_base64();
    let (stores_a, _sink_a) = pg_stores(&pg.url(), temp_dir(&pg, "spill-a"), FailurePolicy::Buffer);
    let (stores_b, _sink_b) = pg_stores(&pg.url(), temp_dir(&pg, "spill-b"), FailurePolicy::Buffer);
    let a = gateway(&fixture, &key, stores_a);
    let b = gateway(&fixture, &key, stores_b);
    let rt = client_runtime();
    let rpc = Rpc {
        http: http_client().expect("http client"),
        token: a.token("carol", &[], &[]),
    };
    rt.block_on(async {
        let sid = rpc.open(&a.mcp_url()).await;
        // The upstream session is opened on A, and B resumes it from the (sealed) stored id.
        let on_a = rpc
            .call(&a.mcp_url(), &sid, None, "one_echo", "from A")
            .await;
        assert_eq!(on_a.status, 200, "{}", on_a.body);
        let tools_a = rpc.tools(&a.mcp_url(), &sid).await;
        let tools_b = rpc.tools(&b.mcp_url(), &sid).await;
        assert!(
            tools_a.as_array().is_some_and(|t| !t.is_empty()),
            "{tools_a}"
        );
        assert_eq!(tools_a, tools_b, "both replicas list the same tools");
        let on_b = rpc
            .call(&b.mcp_url(), &sid, None, "one_echo", "from B")
            .await;
        assert_eq!(on_b.status, 200, "{}", on_b.body);
        assert!(echo_text(&on_b).contains("from B"), "{}", on_b.body);
        // A denied tool answers like an unknown one on both replicas.
        let denied_a = rpc.call(&a.mcp_url(), &sid, None, "one_crash", "x").await;
        let denied_b = rpc.call(&b.mcp_url(), &sid, None, "one_crash", "x").await;
        assert_eq!(denied_a.body["error"], denied_b.body["error"]);
        assert!(denied_b.body["error"].is_object());

        // Another identity cannot use the session on either replica.
        let mallory = Rpc {
            http: rpc.http.clone(),
            token: a.token("mallory", &[], &[]),
        };
        assert_eq!(
            mallory
                .call(&b.mcp_url(), &sid, None, "one_echo", "x")
                .await
                .status,
            404
        );

        // The stored upstream session id is sealed, never in clear.
        let db = database(&pg.url());
        let client = db.client().await.expect("db");
        let row = client
            .query_one(
                "SELECT owner, upstreams::text FROM reflow_sessions WHERE id = $1",
                &[&sid],
            )
            .await
            .expect("the session row");
        let upstreams: String = row.get(1);
        assert!(upstreams.contains("\"sealed\""), "{upstreams}");
        let stored: Value = serde_json::from_str(&upstreams).expect("json");
        assert!(
            stored["e2e/one"]["sessionId"]["sealed"].is_string(),
            "{stored}"
        );

        // Deleted on B: A stops serving it (its cache is invalidated over LISTEN/NOTIFY).
        let del = rpc
            .http
            .delete(b.mcp_url())
            .bearer_auth(&rpc.token)
            .header("mcp-session-id", &sid)
            .send()
            .await
            .expect("delete");
        assert_eq!(del.status().as_u16(), 200);
        // Well under the 30 s cache TTL: only the change notification explains a 404 here.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let again = rpc.call(&a.mcp_url(), &sid, None, "one_echo", "late").await;
            if again.status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A still serves a deleted session"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_notification_published_on_one_replica_reaches_the_other() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let a = PgBus::start(database(&pg.url()));
        let b = PgBus::start(database(&pg.url()));
        assert!(a.wait_listening(WAIT).await && b.wait_listening(WAIT).await);
        let mut on_b = b.subscribe();
        let small = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        a.publish("session-1", &small).await.expect("publish");
        let got = tokio::time::timeout(WAIT, on_b.recv())
            .await
            .expect("delivered in time")
            .expect("a message");
        assert_eq!(got.session_id, "session-1");
        assert_eq!(got.message, small);

        // Over NOTIFY's 8000-byte limit: carried by a row, delivered the same way.
        let big = json!({"jsonrpc": "2.0", "method": "notifications/message",
                         "params": {"level": "info", "data": "x".repeat(20_000)}});
        a.publish("session-2", &big).await.expect("publish large");
        let got = tokio::time::timeout(WAIT, on_b.recv())
            .await
            .expect("delivered in time")
            .expect("a message");
        assert_eq!(got.session_id, "session-2");
        assert_eq!(got.message, big);
    });
}

/// Sends one call per trace id; every one must be answered 200.
async fn calls(rpc: &Rpc, url: &str, sid: &str, traces: &[String]) {
    for t in traces {
        let a = rpc.call(url, sid, Some(t), "one_echo", t).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(echo_text(&a).contains(t.as_str()), "{}", a.body);
    }
}

fn traces(phase: u8, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{phase:02x}{i:030x}")).collect()
}

/// trace id -> rows for it in the audit table.
async fn audited(url: &str) -> Result<HashMap<String, i64>, String> {
    let db = database(url);
    let client = db.client().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT trace_id, count(*) FROM reflow_audit_events WHERE method = 'tools/call' GROUP BY trace_id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[test]
fn audit_events_survive_a_postgres_outage_exactly_once() {
    let mut pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let spill = temp_dir(&pg, "spill");
    let (stores, sink) = pg_stores(&pg.url(), spill.clone(), FailurePolicy::Buffer);
    let gw = gateway(&fixture, &SealingKey::generate_base64(), stores);
    let rt = client_runtime();
    let rpc = Rpc {
        http: http_client().expect("http client"),
        token: gw.token("dave", &[], &[]),
    };
    let (before, during, after) = (traces(1, 20), traces(2, 20), traces(3, 20));
    let sid = rt.block_on(async {
        let sid = rpc.open(&gw.mcp_url()).await;
        calls(&rpc, &gw.mcp_url(), &sid, &before).await;
        sid
    });
    pg.stop().expect("postgres stops");
    rt.block_on(async {
        // Requests keep flowing while the database is down.
        calls(&rpc, &gw.mcp_url(), &sid, &during).await;
        let deadline = Instant::now() + WAIT;
        let spill_file = spill.join(reflow_dataplane::postgres::SPILL_FILE);
        while !spill_file.exists() {
            assert!(Instant::now() < deadline, "events were not spilled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let sink = sink.lock().unwrap().sink.clone().expect("sink built");
    assert!(!sink.healthy(), "the sink knows the database is away");
    pg.start_again().expect("postgres restarts");
    rt.block_on(async {
        calls(&rpc, &gw.mcp_url(), &sid, &after).await;
        let want: Vec<&String> = before.iter().chain(&during).chain(&after).collect();
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Ok(got) = audited(&pg.url()).await
                && want.iter().all(|t| got.contains_key(*t))
            {
                for t in &want {
                    assert_eq!(got[*t], 1, "trace {t} stored exactly once");
                }
                assert_eq!(got.len(), want.len(), "no other tools/call rows: {got:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every audit event reached the database"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + WAIT;
        while !gw.gateway().audit.healthy() {
            assert!(Instant::now() < deadline, "the sink never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !spill.join(reflow_dataplane::postgres::SPILL_FILE).exists(),
            "the replayed spill file is removed"
        );
        assert_eq!(sink.dropped(), 0);

        // The audit query reads them back, by user and by decision.
        let db = database(&pg.url());
        let mine = query_audit(
            &db,
            &AuditFilter {
                user: Some("dave".into()),
                method: Some("tools/call".into()),
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("query");
        assert_eq!(mine.len(), want.len());
        assert!(mine.iter().all(|r| r.decision.as_deref() == Some("allow")));
        assert!(
            mine.windows(2).all(|w| w[0].time_ms >= w[1].time_ms),
            "newest first"
        );
        let denials = query_audit(
            &db,
            &AuditFilter {
                decision: Some("deny".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("query");
        assert!(denials.is_empty(), "nothing was denied here");
        let nobody = query_audit(
            &db,
            &AuditFilter {
                user: Some("nobody".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("query");
        assert!(nobody.is_empty());
    });
}

#[test]
fn fail_closed_refuses_requests_while_postgres_is_down() {
    let mut pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let (stores, _sink) = pg_stores(
        &pg.url(),
        temp_dir(&pg, "spill-fc"),
        FailurePolicy::FailClosed,
    );
    let gw = gateway(&fixture, &SealingKey::generate_base64(), stores);
    let rt = client_runtime();
    let rpc = Rpc {
        http: http_client().expect("http client"),
        token: gw.token("erin", &[], &[]),
    };
    let sid = rt.block_on(async {
        let sid = rpc.open(&gw.mcp_url()).await;
        let ok = rpc.call(&gw.mcp_url(), &sid, None, "one_echo", "up").await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let denied = rpc.call(&gw.mcp_url(), &sid, None, "one_crash", "x").await;
        assert!(denied.body["error"].is_object());
        sid
    });
    pg.stop().expect("postgres stops");
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = rpc
                .call(&gw.mcp_url(), &sid, None, "one_echo", "down")
                .await;
            if a.status == 503 {
                assert_eq!(a.retry_after.as_deref(), Some("1"));
                assert!(
                    a.body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("audit")),
                    "{}",
                    a.body
                );
                assert_eq!(a.body["id"], 7, "the JSON-RPC error answers the request");
                break;
            }
            assert_eq!(a.status, 200, "{}", a.body);
            assert!(
                Instant::now() < deadline,
                "requests still served with audit down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still refused a moment later, new sessions included.
        let again = rpc
            .call(&gw.mcp_url(), &sid, None, "one_echo", "down")
            .await;
        assert_eq!(again.status, 503);
    });
    pg.start_again().expect("postgres restarts");
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = rpc
                .call(&gw.mcp_url(), &sid, None, "one_echo", "back")
                .await;
            if a.status == 200 {
                break;
            }
            assert_eq!(a.status, 503, "{}", a.body);
            assert!(Instant::now() < deadline, "requests never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The denial from before the outage is in the database.
        let db = database(&pg.url());
        let deadline = Instant::now() + WAIT;
        loop {
            let denials = query_audit(
                &db,
                &AuditFilter {
                    user: Some("erin".into()),
                    decision: Some("deny".into()),
                    limit: 10,
                    ..AuditFilter::default()
                },
            )
            .await;
            if let Ok(d) = denials
                && d.len() == 1
            {
                assert_eq!(d[0].name.as_deref(), Some("one_crash"));
                assert_eq!(d[0].target.as_deref(), Some("e2e/one"));
                break;
            }
            assert!(Instant::now() < deadline, "the denial was not stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn replicas_starting_together_apply_migrations_once_and_retention_trims_old_events() {
    let pg = TestPostgres::start().expect("postgres starts");
    let url = pg.create_database("together").expect("database");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let db = database(&url);
                tokio::spawn(async move { db.connect_and_migrate(WAIT).await })
            })
            .collect();
        for s in starts {
            s.await.expect("task").expect("migrations apply");
        }
        let db = database(&url);
        let client = db.client().await.expect("db");
        let n: i64 = client
            .query_one("SELECT count(*) FROM reflow_schema_migrations", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, reflow_dataplane::postgres::MIGRATIONS.len() as i64);

        // Retention: events older than the window go, newer ones stay.
        let sink = PgAuditSink::start(
            db.clone(),
            AuditSettings::new(temp_dir(&pg, "spill-retention")),
        )
        .expect("sink");
        let mut old = event("ivan", "old".into());
        old.time_ms -= 40 * 86_400 * 1000;
        sink.record(old);
        sink.record(event("ivan", "new".into()));
        sink.close().await;
        let window = Duration::from_secs(30 * 86_400);
        let deleted = purge_expired_audit(&db, window).await.expect("purge");
        assert_eq!(deleted, Some(1));
        let left = query_audit(
            &db,
            &AuditFilter {
                user: Some("ivan".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("query");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].trace_id, "new");
        // A bad URL is refused without echoing it (it may hold a password).
        let bad = Database::new(
            &SecretString::from("postgres://u:s3cret@[bad".to_owned()),
            2,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(!bad.is_empty() && !bad.contains("s3cret"), "{bad}");
    });
}

const DEV_SECRET: &str = "reflow-pg-test-dev-secret-0123456789abcdef";

/// One replica's folder: config (dev issuer, shared sealing key, database, its own spill dir).
fn replica_config(dir: &std::path::Path, name: &str, key: &str, url: &str) -> PathBuf {
    std::fs::write(dir.join("sealing-key"), key).expect("key file");
    std::fs::write(dir.join("db-url"), url).expect("url file");
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\n\
             database: {{urlFile: db-url, maxConnections: 4}}\n\
             audit: {{spillDir: spill-{name}, failurePolicy: buffer}}\n"
        ),
    )
    .expect("config");
    config
}

fn dev_token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &[],
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

#[test]
fn two_dataplane_processes_share_one_session_and_one_audit_log() {
    use reflow_e2e::harness::gateway::target_yaml;
    use reflow_e2e::harness::{DataplaneProcess, dataplane_bin};

    let pg = TestPostgres::start().expect("postgres starts");
    let url = pg.create_database("replicas").expect("database");
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let dir = temp_dir(&pg, "replicas");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    std::fs::write(
        manifests.join("all.yaml"),
        [
            target_yaml("one", "streamableHttp", &fixture.mcp_url()),
            PolicyDoc::allow("one-all", "one")
                .everyone()
                .rule("all", &["*"])
                .to_yaml(),
        ]
        .join("---\n"),
    )
    .expect("manifests");
    let key = SealingKey::generate_base64();
    // Both migrate the same fresh database at start (under the migration lock).
    let a = DataplaneProcess::spawn(&manifests, &replica_config(&dir, "a", &key, &url), &[])
        .expect("replica a");
    let b = DataplaneProcess::spawn(&manifests, &replica_config(&dir, "b", &key, &url), &[])
        .expect("replica b");
    let rt = client_runtime();
    let rpc = Rpc {
        http: http_client().expect("http client"),
        token: dev_token("frank"),
    };
    let (ta, tb) = (format!("{:032x}", 0xa1u32), format!("{:032x}", 0xb1u32));
    rt.block_on(async {
        let sid = rpc.open(&a.mcp_url()).await;
        let tools_a = rpc.tools(&a.mcp_url(), &sid).await;
        let tools_b = rpc.tools(&b.mcp_url(), &sid).await;
        assert!(
            tools_a.as_array().is_some_and(|t| !t.is_empty()),
            "{tools_a}\n{}",
            a.output()
        );
        assert_eq!(tools_a, tools_b, "{}", b.output());
        let on_b = rpc
            .call(&b.mcp_url(), &sid, Some(&tb), "one_echo", "via B")
            .await;
        assert_eq!(on_b.status, 200, "{}\n{}", on_b.body, b.output());
        assert!(echo_text(&on_b).contains("via B"));
        let on_a = rpc
            .call(&a.mcp_url(), &sid, Some(&ta), "one_echo", "via A")
            .await;
        assert_eq!(on_a.status, 200, "{}", on_a.body);
    });

    // `reflow-dataplane audit query` sees both replicas' events.
    let bin = dataplane_bin().expect("binary");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["audit", "query", "--database-url-file"])
            .arg(dir.join("db-url"))
            .args(["--user", "frank", "--method", "tools/call", "--since", "1h"])
            .env_remove("REFLOW_DATABASE_URL");
        let out = reflow_e2e::harness::process::run_bounded("audit query", &mut cmd, WAIT)
            .expect("audit query runs");
        let rows: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let traces: Vec<&str> = rows.iter().filter_map(|r| r["trace_id"].as_str()).collect();
        if traces.contains(&ta.as_str()) && traces.contains(&tb.as_str()) {
            assert_eq!(rows.len(), 2, "{out}");
            assert!(
                rows.iter()
                    .all(|r| r["user"] == "frank" && r["decision"] == "allow")
            );
            assert!(!out.contains("postgres://"), "the URL is never printed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit query never showed both events: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

fn event(user: &str, trace: String) -> reflow_dataplane::audit::AuditEvent {
    reflow_dataplane::audit::AuditEvent {
        id: reflow_dataplane::audit::new_event_id(),
        time_ms: reflow_dataplane::audit::now_ms(),
        user: user.into(),
        session: None,
        method: "tools/call".into(),
        target: Some("e2e/one".into()),
        name: Some("one_echo".into()),
        decision: Some("allow"),
        policy: Some("one-all".into()),
        outcome: "ok".into(),
        duration_ms: 1.0,
        trace_id: trace,
    }
}

#[test]
fn a_spill_file_left_by_an_earlier_run_is_replayed_at_start() {
    let mut pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    pg.stop().expect("postgres stops");
    let spill = temp_dir(&pg, "spill-restart");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sent = traces(9, 30);
    rt.block_on(async {
        let mut settings = AuditSettings::new(spill.clone());
        settings.retry_interval = Duration::from_millis(100);
        let sink = PgAuditSink::start(database(&pg.url()), settings).expect("sink");
        for t in &sent {
            sink.record(event("gina", t.clone()));
        }
        // The database is down: closing spills what is queued instead of losing it.
        sink.close().await;
        assert_eq!(sink.dropped(), 0);
    });
    let file = spill.join(reflow_dataplane::postgres::SPILL_FILE);
    let text = std::fs::read_to_string(&file).expect("a spill file");
    assert_eq!(text.lines().count(), sent.len());
    // A crash mid-append leaves a torn last line: it is skipped, the rest replayed.
    std::fs::write(&file, format!("{text}{{\"id\":\"0190")).expect("torn line");

    pg.start_again().expect("postgres restarts");
    rt.block_on(async {
        let sink = PgAuditSink::start(database(&pg.url()), AuditSettings::new(spill.clone()))
            .expect("sink");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(got) = audited(&pg.url()).await
                && sent.iter().all(|t| got.contains_key(t))
            {
                assert!(sent.iter().all(|t| got[t] == 1));
                assert_eq!(got.len(), sent.len());
                break;
            }
            assert!(Instant::now() < deadline, "the spill file was not replayed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + WAIT;
        while file.exists() {
            assert!(Instant::now() < deadline, "the replayed spill file stays");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(sink.healthy());
        sink.close().await;
    });
    let _ = std::fs::remove_dir_all(&spill);
}

#[test]
fn sessions_slide_while_used_and_expire_everywhere_when_idle() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let key_text = SealingKey::generate_base64();
        let key = SealingKey::from_base64(&key_text).expect("key");
        let settings = SessionSettings {
            idle: Duration::from_secs(3),
            cache_ttl: Duration::from_millis(200),
            flush_interval: Duration::from_millis(100),
            cleanup_interval: Duration::from_millis(300),
        };
        let a = PgSessionStore::start(
            database(&pg.url()),
            key.clone(),
            settings.clone(),
            "a".into(),
            None,
        );
        let b = PgSessionStore::start(database(&pg.url()), key, settings, "b".into(), None);
        let expired = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let heard = expired.clone();
        a.on_expire(Arc::new(move |id: &str| {
            heard.lock().unwrap().push(id.to_owned())
        }));
        let owner = reflow_crds::Identity::new("hank", Vec::<String>::new(), Vec::<String>::new())
            .fingerprint();
        let mut s = reflow_dataplane::session::Session::new(
            owner,
            reflow_dataplane::session::Scope::Aggregated,
            "2025-06-18".into(),
        );
        s.upstreams.insert(
            "e2e/one".into(),
            reflow_dataplane::session::UpstreamState {
                session_id: Some("upstream-secret-session".into()),
                protocol_version: Some("2025-06-18".into()),
                initialized: true,
            },
        );
        let id = s.id.clone();
        a.create(s).await.expect("create");

        // Both replicas add a resource route from their own copy: neither erases the other.
        let mut on_a = reflow_dataplane::session::Session::clone(
            &a.get(&id).await.expect("get").expect("on A"),
        );
        let mut on_b = reflow_dataplane::session::Session::clone(
            &b.get(&id).await.expect("get").expect("on B"),
        );
        on_a.resources.insert("file:///a".into(), "e2e/one".into());
        on_b.resources.insert("file:///b".into(), "e2e/two".into());
        a.put(on_a).await.expect("put");
        b.put(on_b).await.expect("put");
        let fresh = PgSessionStore::start(
            database(&pg.url()),
            SealingKey::from_base64(&key_text).expect("key"),
            SessionSettings::new(Duration::from_secs(3)),
            "c".into(),
            None,
        );
        let merged = fresh.get(&id).await.expect("get").expect("on C");
        assert_eq!(merged.resources.len(), 2, "{:?}", merged.resources);

        // Used on A for longer than the idle timeout: B still finds it, state intact.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            assert!(a.get_touched(&id).await.expect("get").is_some());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let on_b = b.get(&id).await.expect("get").expect("alive on B");
        assert_eq!(on_b.owner, owner);
        assert_eq!(
            on_b.upstreams["e2e/one"].session_id.as_deref(),
            Some("upstream-secret-session")
        );

        // Then idle: gone for both, the row deleted, A's expiry hook told.
        let deadline = Instant::now() + WAIT;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let gone_b = b.get(&id).await.expect("get").is_none();
            let rows: i64 = database(&pg.url())
                .client()
                .await
                .expect("db")
                .query_one("SELECT count(*) FROM reflow_sessions", &[])
                .await
                .expect("count")
                .get(0);
            if gone_b && rows == 0 && expired.lock().unwrap().contains(&id) {
                break;
            }
            assert!(Instant::now() < deadline, "the idle session never expired");
        }
        assert!(a.get(&id).await.expect("get").is_none());
        assert_eq!(a.count(), 0);
    });
}

#[test]
fn a_sessions_claims_and_log_level_are_stored_so_another_replica_recycles_it() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let key = SealingKey::generate_base64();
    let (stores_a, _sink_a) = pg_stores(&pg.url(), temp_dir(&pg, "spill-a"), FailurePolicy::Buffer);
    let (stores_b, _sink_b) = pg_stores(&pg.url(), temp_dir(&pg, "spill-b"), FailurePolicy::Buffer);
    let a = gateway(&fixture, &key, stores_a);
    let b = gateway(&fixture, &key, stores_b);
    let rt = client_runtime();
    let dev = Rpc {
        http: http_client().expect("http client"),
        token: a.token("carol", &["dev"], &[]),
    };
    let ops = Rpc {
        http: dev.http.clone(),
        token: a.token("carol", &["ops"], &[]),
    };
    rt.block_on(async {
        let sid = dev.open(&a.mcp_url()).await;
        let set = dev
            .post(
                &a.mcp_url(),
                Some(&sid),
                None,
                json!({"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel",
                       "params": {"level": "warning"}}),
            )
            .await;
        assert_eq!(set.body["result"], json!({}), "{}", set.body);
        // Same user, other groups, other replica: the same session, now with the new claims.
        let on_b = ops.call(&b.mcp_url(), &sid, None, "one_echo", "ops").await;
        assert_eq!(on_b.status, 200, "{}", on_b.body);
        assert!(echo_text(&on_b).contains("ops"), "{}", on_b.body);

        let db = database(&pg.url());
        let client = db.client().await.expect("db");
        let row = client
            .query_one(
                "SELECT claims, log_level FROM reflow_sessions WHERE id = $1",
                &[&sid],
            )
            .await
            .expect("the session row");
        let claims: Value = row.get(0);
        let level: Option<String> = row.get(1);
        assert_eq!(claims["user"], "carol", "{claims}");
        assert_eq!(claims["groups"], json!(["ops"]), "{claims}");
        assert_eq!(level.as_deref(), Some("warning"));

        // Another user still gets 404 on either replica.
        let mallory = Rpc {
            http: dev.http.clone(),
            token: a.token("mallory", &["ops"], &[]),
        };
        for url in [a.mcp_url(), b.mcp_url()] {
            assert_eq!(
                mallory.call(&url, &sid, None, "one_echo", "x").await.status,
                404
            );
        }
    });
}
