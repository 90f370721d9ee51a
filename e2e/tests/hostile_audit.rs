//! The Postgres audit sink under more events than its queue holds, across a real database
//! outage and the replay after it: a full queue is spilled, never dropped, and `failClosed`
//! refuses calls while the store is not keeping up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reflow_dataplane::audit::{AuditEvent, AuditSink, new_event_id, now_ms};
use reflow_dataplane::postgres::{AuditSettings, FailurePolicy, PgAuditSink};
use reflow_e2e::harness::TestPostgres;

mod pg_support;
use pg_support::{WAIT, database, migrated, temp_dir};

fn event(trace: String) -> AuditEvent {
    AuditEvent {
        id: new_event_id(),
        time_ms: now_ms(),
        user: "hana".into(),
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

/// trace id -> rows stored for it.
async fn stored(url: &str) -> Result<HashMap<String, i64>, String> {
    let client = database(url).client().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT trace_id, count(*) FROM reflow_audit_events GROUP BY trace_id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records `n` events in bursts far larger than the queue, as a busy gateway does.
async fn burst(sink: &PgAuditSink, phase: u8, n: usize, sent: &mut Vec<String>) {
    for i in 0..n {
        let trace = format!("{phase:02x}{i:030x}");
        sink.record(event(trace.clone()));
        sent.push(trace);
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn no_event_is_dropped_when_the_queue_overflows_during_an_outage_and_its_replay() {
    let mut pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let spill = temp_dir(&pg, "hostile-spill");
    let rt = runtime();
    let mut settings = AuditSettings::new(spill.clone());
    settings.capacity = 64;
    settings.retry_interval = Duration::from_millis(100);
    let sink =
        rt.block_on(async { PgAuditSink::start(database(&pg.url()), settings).expect("sink") });
    let mut sent = Vec::new();
    rt.block_on(burst(&sink, 1, 3000, &mut sent));
    pg.stop().expect("postgres stops");
    rt.block_on(burst(&sink, 2, 5000, &mut sent));
    pg.start_again().expect("postgres restarts");
    rt.block_on(async {
        // Keep recording while the spill is replayed.
        for phase in 3..8 {
            burst(&sink, phase, 2000, &mut sent).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Ok(got) = stored(&pg.url()).await
                && got.len() >= sent.len()
            {
                for t in &sent {
                    assert_eq!(got.get(t), Some(&1), "trace {t} stored exactly once");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every event reached the database (dropped: {})",
                sink.dropped()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(sink.dropped(), 0, "no audit event may be dropped");
        sink.close().await;
    });
    let _ = std::fs::remove_dir_all(&spill);
}

#[test]
fn fail_closed_reports_unhealthy_while_the_queue_overflows_and_loses_nothing() {
    let pg = TestPostgres::start().expect("postgres starts");
    migrated(&pg.url());
    let spill = temp_dir(&pg, "hostile-failclosed");
    let rt = runtime();
    let mut settings = AuditSettings::new(spill.clone());
    settings.capacity = 8;
    settings.policy = FailurePolicy::FailClosed;
    settings.retry_interval = Duration::from_secs(2);
    rt.block_on(async {
        let sink = PgAuditSink::start(database(&pg.url()), settings).expect("sink");
        // The first tick probes the database; the next retry is two seconds away.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sink.healthy());
        let mut sent = Vec::new();
        for i in 0..100 {
            let trace = format!("fc{i:030x}");
            sink.record(event(trace.clone()));
            sent.push(trace);
        }
        assert!(
            !sink.healthy(),
            "an overflowing queue must make failClosed refuse calls"
        );
        assert!(sink.fail_closed());
        let deadline = Instant::now() + WAIT;
        while !sink.healthy() {
            assert!(Instant::now() < deadline, "the sink never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = stored(&pg.url()).await.expect("query");
        for t in &sent {
            assert_eq!(got.get(t), Some(&1), "trace {t} stored exactly once");
        }
        assert_eq!(sink.dropped(), 0);
        sink.close().await;
    });
    let _ = std::fs::remove_dir_all(&spill);
}
