//! Reading the audit table (`reflow-dataplane audit query`) and the retention job.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::{Database, PgError};

/// `pg_try_advisory_xact_lock` key for the retention job ("reflow-r"): one replica at a time.
const RETENTION_LOCK: i64 = 0x7265_666c_6f77_2d72;

/// Large notifications are kept only long enough for every listener to fetch them.
const NOTIFICATION_ROWS_KEPT: Duration = Duration::from_secs(600);

/// Which events to read; every field set narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    pub method: Option<String>,
    pub session: Option<String>,
    /// Only events at or after this time (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: i64,
}

/// One stored event, with the JSON-lines sink's field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: String,
    pub time_ms: i64,
    pub user: String,
    pub session: Option<String>,
    pub method: String,
    pub target: Option<String>,
    pub name: Option<String>,
    pub decision: Option<String>,
    pub policy: Option<String>,
    pub outcome: String,
    pub duration_ms: f64,
    pub trace_id: String,
}

/// The newest `limit` matching events, newest first.
pub async fn query_audit(db: &Database, f: &AuditFilter) -> Result<Vec<AuditRow>, PgError> {
    let mut sql = String::from(concat!(select_audit_rows!(), " WHERE true"));
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    // Each condition is a fixed column with a bind parameter; values never enter the SQL text.
    let clauses: [(&str, Option<&String>); 5] = [
        ("user_name", f.user.as_ref()),
        ("target", f.target.as_ref()),
        ("decision", f.decision.as_ref()),
        ("method", f.method.as_ref()),
        ("session_id", f.session.as_ref()),
    ];
    for (column, value) in clauses {
        if let Some(v) = value {
            params.push(v);
            sql.push_str(&format!(" AND {column} = ${}", params.len()));
        }
    }
    if let Some(ms) = &f.since_ms {
        params.push(ms);
        sql.push_str(&format!(
            " AND time >= to_timestamp(${}::int8 / 1000.0)",
            params.len()
        ));
    }
    if let Some(ms) = &f.until_ms {
        params.push(ms);
        sql.push_str(&format!(
            " AND time < to_timestamp(${}::int8 / 1000.0)",
            params.len()
        ));
    }
    let limit = f.limit.max(1);
    params.push(&limit);
    sql.push_str(&format!(
        " ORDER BY time DESC, id DESC LIMIT ${}",
        params.len()
    ));
    let client = db.client().await?;
    let rows = client.query(&sql, &params).await?;
    Ok(rows.iter().map(audit_row).collect())
}

/// One row of `select_audit_rows!()`, read in the order that macro names its columns.
pub(super) fn audit_row(r: &tokio_postgres::Row) -> AuditRow {
    AuditRow {
        id: r.get(0),
        time_ms: r.get(1),
        user: r.get(2),
        session: r.get(3),
        method: r.get(4),
        target: r.get(5),
        name: r.get(6),
        decision: r.get(7),
        policy: r.get(8),
        outcome: r.get(9),
        duration_ms: r.get(10),
        trace_id: r.get(11),
    }
}

/// Deletes audit events older than `retention` (and stale large-notification rows). Returns the
/// number of events deleted; `None` when another replica holds the job right now.
pub async fn purge_expired_audit(
    db: &Database,
    retention: Duration,
) -> Result<Option<u64>, PgError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let got: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0);
    if !got {
        return Ok(None);
    }
    let deleted = tx
        .execute(
            "DELETE FROM reflow_audit_events WHERE time < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await?;
    tx.execute(
        "DELETE FROM reflow_notifications WHERE created_at < now() - make_interval(secs => $1)",
        &[&NOTIFICATION_ROWS_KEPT.as_secs_f64()],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(deleted))
}
