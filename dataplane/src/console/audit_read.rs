//! Reading audit events for the console, from Postgres when configured, else from the tap's
//! in-memory ring. Every user-facing read is narrowed to the caller's user name here.

use std::sync::Arc;

use crate::audit::AuditEvent;
use crate::postgres::{self, AuditFilter, AuditRow};

use super::{Console, ConsoleError};

/// Rows per activity page.
pub const PAGE_ROWS: i64 = 100;

/// Which events to show; `user` is set by the handler from the login, never from the request.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub method: Option<String>,
    pub decision: Option<String>,
    pub limit: i64,
}

fn from_event(e: &AuditEvent) -> AuditRow {
    AuditRow {
        id: e.id.hyphenated().to_string(),
        time_ms: i64::try_from(e.time_ms).unwrap_or(i64::MAX),
        user: e.user.clone(),
        session: e.session.clone(),
        method: e.method.clone(),
        target: e.target.clone(),
        name: e.name.clone(),
        decision: e.decision.map(str::to_owned),
        policy: e.policy.clone(),
        outcome: e.outcome.clone(),
        duration_ms: e.duration_ms,
        trace_id: e.trace_id.clone(),
    }
}

fn keeps(f: &Filter, e: &AuditEvent) -> bool {
    let eq =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
    eq(&f.user, Some(&e.user))
        && eq(&f.target, e.target.as_deref())
        && eq(&f.method, Some(&e.method))
        && eq(&f.decision, e.decision)
}

/// The newest matching events, newest first.
pub async fn recent(console: &Console, f: &Filter) -> Result<Vec<AuditRow>, ConsoleError> {
    let limit = f.limit.clamp(1, 1000);
    if let Some(db) = &console.parts.database {
        let filter = AuditFilter {
            user: f.user.clone(),
            target: f.target.clone(),
            decision: f.decision.clone(),
            method: f.method.clone(),
            limit,
            ..AuditFilter::default()
        };
        return Ok(postgres::query_audit(db, &filter).await?);
    }
    let rows = console
        .parts
        .tap
        .recent(usize::try_from(limit).unwrap_or(100), |e| keeps(f, e));
    Ok(rows.iter().map(|e| from_event(e)).collect())
}

/// One event by id, only if `user` (when given) is its user.
pub async fn by_id(
    console: &Console,
    id: &str,
    user: Option<&str>,
) -> Result<Option<AuditRow>, ConsoleError> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(None);
    };
    let row = match &console.parts.database {
        Some(db) => postgres::audit_event_by_id(db, &uuid).await?,
        None => console.parts.tap.by_id(&uuid).map(|e| from_event(&e)),
    };
    Ok(row.filter(|r| user.is_none_or(|u| r.user == u)))
}

/// Events in the ring from `since_ms` on (for the charts without Postgres).
pub fn ring_since(console: &Console, since_ms: i64) -> Vec<Arc<AuditEvent>> {
    let since = u128::try_from(since_ms).unwrap_or(0);
    console.parts.tap.recent(usize::MAX, |e| e.time_ms >= since)
}
