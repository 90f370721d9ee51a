//! The web console's reads: one audit event by id, the last seconds of events (live view across
//! replicas), per-Target per-minute figures for the charts, and the ids of live sessions.

use serde::Serialize;

use super::query::audit_row;
use super::{AuditRow, Database, PgError};

/// One Target's calls in one minute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteStats {
    pub target: String,
    /// Start of the minute, milliseconds since the epoch.
    pub minute_ms: i64,
    pub calls: i64,
    pub errors: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Every event of the last `seconds` (for the console's live stream across replicas), oldest first.
pub async fn audit_events_since(db: &Database, seconds: f64) -> Result<Vec<AuditRow>, PgError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(
            select_audit_rows!(),
            " WHERE time > now() - make_interval(secs => $1) ORDER BY time LIMIT 5000"
        ))
        .await?;
    let rows = client.query(&stmt, &[&seconds]).await?;
    Ok(rows.iter().map(audit_row).collect())
}

pub async fn audit_event_by_id(
    db: &Database,
    id: &uuid::Uuid,
) -> Result<Option<AuditRow>, PgError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(select_audit_rows!(), " WHERE id = $1"))
        .await?;
    Ok(client
        .query_opt(&stmt, &[id])
        .await?
        .as_ref()
        .map(audit_row))
}

/// Calls per Target and minute over the last `minutes` (denials are not errors of the Target).
pub async fn minute_stats(db: &Database, minutes: i32) -> Result<Vec<MinuteStats>, PgError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT target, (extract(epoch FROM date_trunc('minute', time)) * 1000)::int8 AS m,
                    count(*), count(*) FILTER (WHERE outcome <> 'ok' AND decision IS DISTINCT FROM 'deny'),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)
             FROM reflow_audit_events
             WHERE time >= now() - make_interval(mins => $1) AND target IS NOT NULL
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await?;
    let rows = client.query(&stmt, &[&minutes]).await?;
    Ok(rows
        .iter()
        .map(|r| MinuteStats {
            target: r.get(0),
            minute_ms: r.get(1),
            calls: r.get(2),
            errors: r.get(3),
            p50_ms: r.get(4),
            p99_ms: r.get(5),
        })
        .collect())
}

/// Ids of live sessions, most recently used first: `owner`'s (fingerprint hex) or everyone's.
pub async fn live_session_ids(
    db: &Database,
    owner: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, PgError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id FROM reflow_sessions
             WHERE expires_at > now() AND ($1::text IS NULL OR owner = $1)
             ORDER BY updated_at DESC LIMIT $2",
        )
        .await?;
    let rows = client.query(&stmt, &[&owner, &limit]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records `key` (a logged-out console login, a used OIDC state) as refused until `until`
/// (seconds since the epoch); expired rows are swept on the way.
pub async fn console_revoke(db: &Database, key: &str, until: u64) -> Result<(), PgError> {
    let client = db.client().await?;
    let until = i64::try_from(until).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO reflow_console_revoked (key, expires_at) VALUES ($1, to_timestamp($2))
             ON CONFLICT (key) DO NOTHING",
            &[&key, &(until as f64)],
        )
        .await?;
    client
        .execute(
            "DELETE FROM reflow_console_revoked WHERE expires_at < now() - interval '1 minute'",
            &[],
        )
        .await?;
    Ok(())
}

/// Whether `key` is refused.
pub async fn console_is_revoked(db: &Database, key: &str) -> Result<bool, PgError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached("SELECT 1 FROM reflow_console_revoked WHERE key = $1")
        .await?;
    Ok(client.query_opt(&stmt, &[&key]).await?.is_some())
}

/// Records `key` as used; `true` when no replica had used it before.
pub async fn console_take_once(db: &Database, key: &str, until: u64) -> Result<bool, PgError> {
    let client = db.client().await?;
    let until = i64::try_from(until).unwrap_or(i64::MAX) as f64;
    let n = client
        .execute(
            "INSERT INTO reflow_console_revoked (key, expires_at) VALUES ($1, to_timestamp($2))
             ON CONFLICT (key) DO NOTHING",
            &[&key, &until],
        )
        .await?;
    Ok(n == 1)
}
