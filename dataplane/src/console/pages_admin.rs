//! What an admin sees: the snapshot each dataplane serves, every Target's health with small charts,
//! everyone's activity as a live stream, denials with their Policies, sessions per user.
//! A non-admin gets 404 for all of it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::audit_read::{self, Filter};
use super::html::{esc, sparkline};
use super::pages_user::{render, rows_table};
use super::stats::{self, WINDOW_MINUTES};
use super::{Console, ConsoleError, guard};
use crate::audit::now_ms;

pub async fn admin(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    render(console, headers, "Admin", |c, login| async move {
        if !login.admin {
            return Err(ConsoleError::NotFound);
        }
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let mut out = dataplane_section(&c).await;
        out.push_str(&targets_section(&c, now).await?);
        let live = audit_read::recent(
            &c,
            &Filter {
                limit: 50,
                ..Filter::default()
            },
        )
        .await?;
        out.push_str(
            "<h2>Live activity <span id=\"live-state\" class=\"muted\">connecting…</span></h2>\
             <div id=\"live\" data-src=\"/console/admin/live\">",
        );
        out.push_str(&rows_table(&live, true));
        out.push_str("</div>");
        let denials = audit_read::recent(
            &c,
            &Filter {
                decision: Some("deny".into()),
                limit: 50,
                ..Filter::default()
            },
        )
        .await?;
        out.push_str("<h2>Recent denials</h2>");
        out.push_str(&rows_table(&denials, true));
        out.push_str(&sessions_section(&c).await);
        Ok(out)
    })
    .await
}

/// The snapshot each dataplane serves: every replica in the registry (with its last heartbeat,
/// stale ones marked) when replicas share a database, else this process only.
async fn dataplane_section(c: &Console) -> String {
    let snap = c.parts.snapshots.load();
    let mut out = String::from(
        "<h1>Admin</h1><h2>Dataplanes</h2><table class=\"dataplanes\"><thead><tr><th>Dataplane</th>\
         <th>Address</th><th>Snapshot version</th><th>Hash</th><th>Last heartbeat</th></tr></thead><tbody>",
    );
    let listed = match (&c.parts.replicas, &c.parts.database) {
        (Some(registry), Some(db)) => match crate::postgres::list_replicas(db).await {
            Ok(rows) => Some((registry, rows)),
            Err(e) => {
                tracing::warn!(error = %e, "console: reading the replica registry");
                None
            }
        },
        _ => None,
    };
    match listed {
        Some((registry, rows)) => {
            for r in rows {
                let stale = r.silent_for >= registry.settings().dead_after;
                let me = r.id == registry.id();
                let _ = write!(
                    out,
                    "<tr class=\"{}\" data-replica=\"{id}\"><td>{id}{}</td><td>{}</td>\
                     <td class=\"version\">{}</td><td><code>{}</code></td><td>{:.1} s ago{}</td></tr>",
                    if stale { "stale" } else { "live" },
                    if me { " (this one)" } else { "" },
                    esc(&r.address),
                    r.snapshot_version.map_or("-".to_owned(), |v| v.to_string()),
                    esc(r
                        .snapshot_hash
                        .as_deref()
                        .map_or("-", |h| h.get(..16).unwrap_or(h))),
                    r.silent_for.as_secs_f64(),
                    if stale { " <strong>stale</strong>" } else { "" },
                    id = esc(&r.id),
                );
            }
        }
        None => {
            let _ = write!(
                out,
                "<tr class=\"live\"><td>{} (this one)</td><td>-</td><td class=\"version\">{}</td>\
                 <td><code>{}</code></td><td>-</td></tr>",
                esc(&c.parts.dataplane),
                snap.version(),
                esc(snap.hash().get(..16).unwrap_or(snap.hash())),
            );
        }
    }
    out.push_str("</tbody></table>");
    out
}

async fn targets_section(c: &Console, now: i64) -> Result<String, ConsoleError> {
    let series = stats::load(c, now).await?;
    let snap = c.parts.snapshots.load();
    let mut out = format!(
        "<h2>Targets</h2><table class=\"targets\"><thead><tr><th>Target</th><th>Transport</th>\
         <th>Reachable</th><th>Last error</th><th>Tools</th><th>p50 ms ({WINDOW_MINUTES} min)</th>\
         <th>p99 ms</th><th>Error rate</th><th>Calls/min</th></tr></thead><tbody>"
    );
    let empty = stats::Series::default();
    for t in snap.targets() {
        let key = t.key();
        let h = c.parts.observed.health(&t.namespace, &t.name);
        let (reach, error, tools) = match &h {
            Some(h) => (
                if h.reachable { "yes" } else { "no" },
                h.error.clone().unwrap_or_default(),
                h.tools
                    .as_ref()
                    .map_or("-".to_owned(), |t| t.len().to_string()),
            ),
            None => ("not contacted yet", String::new(), "-".to_owned()),
        };
        let s = series.get(&key).unwrap_or(&empty);
        let _ = write!(
            out,
            "<tr data-target=\"{k}\"><td>{k}</td><td>{}</td><td class=\"reach-{reach_class}\">{reach}</td>\
             <td class=\"error\">{}</td><td>{tools}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.upstream.transport_name(),
            esc(&error),
            sparkline(&s.p50, "p50 latency, ms"),
            sparkline(&s.p99, "p99 latency, ms"),
            sparkline(&s.error_rate, "error rate"),
            sparkline(&s.calls, "calls per minute"),
            k = esc(&key),
            reach_class = if reach == "yes" { "ok" } else { "bad" },
        );
    }
    out.push_str("</tbody></table>");
    Ok(out)
}

async fn sessions_section(c: &Console) -> String {
    let list = c.parts.sessions.list(None, 5000).await.unwrap_or_default();
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for s in &list {
        let user = s.claims.as_ref().map_or_else(
            || format!("owner {}", &s.owner.to_hex()[..12]),
            |c| c.user.to_string(),
        );
        *per_user.entry(user).or_default() += 1;
    }
    let mut out = String::from(
        "<h2>Sessions per user</h2><table class=\"per-user\"><thead><tr><th>User</th><th>Live sessions</th></tr></thead><tbody>",
    );
    for (user, n) in &per_user {
        let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", esc(user));
    }
    if per_user.is_empty() {
        out.push_str("<tr><td colspan=\"2\" class=\"muted\">No live sessions.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// Everyone's audit events as Server-Sent Events, as they are recorded (admins only).
pub async fn live(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let login = match guard::login(&console, &headers).await {
        Ok(l) if l.admin => l,
        Ok(_) => return ConsoleError::NotFound.into_response(),
        Err(e) => return e.into_response(),
    };
    tracing::debug!(user = %login.identity.user, "console: live stream");
    Sse::new(super::live::stream(console))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
