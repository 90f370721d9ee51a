//! What a user sees of their own: tools, resources and prompts per Target with the deciding
//! Policy, connections, recent activity (filterable), sessions with an end button. Every read
//! is narrowed to the logged-in user; another user's row answers 404 like a missing one.

use std::fmt::Write;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use reflow_crds::snapshot::Effect;
use reflow_crds::snapshot::{ItemKind, covers};
use serde::Deserialize;

use super::audit_read::{self, Filter, PAGE_ROWS};
use super::guard::{self, check_csrf};
use super::html::{Nav, csrf_field, esc, page, time_text, url_component};
use super::login::{CsrfForm, see_other, to_login};
use super::logins::Login;
use super::{Console, ConsoleError};
use crate::postgres::AuditRow;
use crate::session::{Scope, Session, subject_of};

/// Renders a page for the logged-in caller, or sends them to the login page.
pub async fn render<F, Fut>(
    console: Arc<Console>,
    headers: HeaderMap,
    title: &str,
    body: F,
) -> Response
where
    F: FnOnce(Arc<Console>, Arc<Login>) -> Fut,
    Fut: std::future::Future<Output = Result<String, ConsoleError>>,
{
    let login = match guard::login(&console, &headers).await {
        Ok(login) => login,
        Err(e) => return to_login(e),
    };
    match body(console, login.clone()).await {
        Ok(html) => frame(&login, title, &html).into_response(),
        Err(e) => to_login(e),
    }
}

pub fn frame(login: &Login, title: &str, body: &str) -> Html<String> {
    let nav = Nav {
        user: &login.identity.user,
        admin: login.admin,
        csrf: &login.csrf,
    };
    page(title, Some(&nav), body)
}

pub async fn overview(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    render(console, headers, "My tools", |c, login| async move {
        let mut out = String::from("<h1>What you may use</h1>");
        out.push_str(&grants(&c, &login));
        out.push_str(&connections(&c, &login).await);
        Ok(out)
    })
    .await
}

/// Per Target: the tools this user may call (from the Target's last tools/list) with the
/// deciding Policy, and the resource and prompt patterns Policies allow them.
fn grants(console: &Console, login: &Login) -> String {
    let snapshot = console.parts.snapshots.load();
    let id = &login.identity;
    let mut out = String::new();
    for target in snapshot.targets() {
        let view = target.policy.view(id);
        if !view.may_allow_anything() {
            continue;
        }
        let key = target.key();
        let _ = write!(
            out,
            "<section class=\"target\" data-target=\"{k}\"><h2>{k}</h2><table><thead><tr><th>Kind</th>\
             <th>Name</th><th>Allowed by Policy</th></tr></thead><tbody>",
            k = esc(&key)
        );
        let health = console
            .parts
            .observed
            .health(&target.namespace, &target.name);
        match health.and_then(|h| h.tools) {
            Some(tools) => {
                for tool in tools {
                    let d = view.decide(ItemKind::Tool, &tool);
                    if !d.allowed {
                        continue;
                    }
                    let _ = write!(
                        out,
                        "<tr class=\"tool\"><td>tool</td><td>{}_{}</td><td>{}</td></tr>",
                        esc(&target.prefix),
                        esc(&tool),
                        esc(d.policy.as_deref().unwrap_or("-"))
                    );
                }
            }
            None => out.push_str(
                "<tr><td>tool</td><td colspan=\"2\" class=\"muted\">not listed yet on this dataplane</td></tr>",
            ),
        }
        for kind in [ItemKind::Resource, ItemKind::Prompt] {
            for rule in target.policy.rules() {
                if rule.effect != Effect::Allow
                    || !covers(rule.kind, kind)
                    || !rule.subject.applies_to(id)
                {
                    continue;
                }
                let names: Vec<&str> = rule.names.iter().map(|g| g.as_str()).collect();
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>matching <code>{}</code></td><td>{}</td></tr>",
                    kind.as_str(),
                    esc(&names.join(", ")),
                    esc(&rule.policy)
                );
            }
        }
        out.push_str("</tbody></table></section>");
    }
    if out.is_empty() {
        out.push_str("<p class=\"muted\">No Policy allows you anything yet.</p>");
    }
    out
}

async fn connections(console: &Console, login: &Login) -> String {
    let list = console.parts.connections.connections(&login.identity).await;
    let mut out = String::from("<h2>Connections</h2>");
    if list.is_empty() {
        out.push_str("<p class=\"muted\">No upstream accounts to connect.</p>");
        return out;
    }
    out.push_str(
        "<table class=\"connections\"><thead><tr><th>Target</th><th>Account</th><th>Status</th>\
         <th></th></tr></thead><tbody>",
    );
    for c in list {
        let mut buttons = String::new();
        for (allowed, action, label) in [
            (c.can_connect, "connect", "Connect"),
            (c.can_disconnect, "disconnect", "Disconnect"),
        ] {
            if allowed {
                let _ = write!(
                    buttons,
                    "<form method=\"post\" action=\"/console/connections/{action}\">{}\
                     <input type=\"hidden\" name=\"target\" value=\"{}\">\
                     <button type=\"submit\" class=\"{action}\">{label}</button></form>",
                    csrf_field(&login.csrf),
                    esc(&c.target),
                );
            }
        }
        let _ = write!(
            out,
            "<tr data-target=\"{t}\"><td>{t}</td><td>{}</td><td class=\"status\">{}</td><td>{buttons}</td></tr>",
            esc(&c.credential),
            esc(&c.status),
            t = esc(&c.target),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[derive(Deserialize)]
pub struct TargetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target: String,
}

/// Mints a connect link for the logged-in user and sends the browser to it.
pub async fn connect(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<TargetForm>,
) -> Result<Response, ConsoleError> {
    let login = guard::login(&console, &headers).await?;
    check_csrf(&login, &form.csrf)?;
    let path = console
        .parts
        .connections
        .connect_link(&login.identity, &form.target)
        .filter(|p| p.starts_with('/') && !p.starts_with("//"))
        .ok_or(ConsoleError::NotFound)?;
    tracing::info!(user = %login.identity.user, target = %form.target, "console: connect link");
    let location = axum::http::HeaderValue::from_str(&path).map_err(|_| ConsoleError::NotFound)?;
    Ok((
        axum::http::StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response())
}

/// Removes the logged-in user's own connection to a Target.
pub async fn disconnect(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<TargetForm>,
) -> Result<Response, ConsoleError> {
    let login = guard::login(&console, &headers).await?;
    check_csrf(&login, &form.csrf)?;
    if !console
        .parts
        .connections
        .disconnect(&login.identity, &form.target)
        .await
    {
        return Err(ConsoleError::NotFound);
    }
    tracing::info!(user = %login.identity.user, target = %form.target, "console: disconnected");
    Ok(see_other("/console/me"))
}

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    #[serde(default)]
    target: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    decision: String,
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= 256).then(|| s.to_owned())
}

pub async fn activity(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<ActivityQuery>,
) -> Response {
    render(console, headers, "Activity", |c, login| async move {
        let filter = Filter {
            user: Some(login.identity.user.to_string()),
            target: non_empty(&q.target),
            method: non_empty(&q.method),
            decision: non_empty(&q.decision),
            limit: PAGE_ROWS,
        };
        let rows = audit_read::recent(&c, &filter).await?;
        let mut out = String::from("<h1>Your recent activity</h1>");
        let _ = write!(
            out,
            "<form method=\"get\" class=\"filters\" action=\"/console/activity\">\
             <input name=\"target\" placeholder=\"namespace/target\" value=\"{}\">\
             <input name=\"method\" placeholder=\"tools/call\" value=\"{}\">\
             <select name=\"decision\"><option value=\"\">any decision</option>{}{}</select>\
             <button type=\"submit\">Filter</button></form>",
            esc(&q.target),
            esc(&q.method),
            option("allow", &q.decision),
            option("deny", &q.decision),
        );
        out.push_str(&rows_table(&rows, false));
        Ok(out)
    })
    .await
}

fn option(value: &str, selected: &str) -> String {
    let sel = if value == selected { " selected" } else { "" };
    format!("<option value=\"{value}\"{sel}>{value}</option>")
}

/// The activity table; `with_user` adds the user column (admin views).
pub fn rows_table(rows: &[AuditRow], with_user: bool) -> String {
    let mut out = String::from("<table class=\"activity\"><thead><tr><th>Time (UTC)</th>");
    if with_user {
        out.push_str("<th>User</th>");
    }
    out.push_str(
        "<th>Method</th><th>Target</th><th>Name</th><th>Decision</th><th>Policy</th>\
         <th>Outcome</th><th>ms</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(out, "<tr><td>{}</td>", time_text(r.time_ms));
        if with_user {
            let _ = write!(out, "<td>{}</td>", esc(&r.user));
        }
        let name = r.name.as_deref().unwrap_or("-");
        let name_cell = if with_user {
            esc(name)
        } else {
            format!(
                "<a href=\"/console/activity/{}\">{}</a>",
                url_component(&r.id),
                esc(name)
            )
        };
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td class=\"name\">{name_cell}</td><td class=\"d-{d}\">{d}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            esc(&r.method),
            esc(r.target.as_deref().unwrap_or("-")),
            esc(r.policy.as_deref().unwrap_or("-")),
            esc(&r.outcome),
            r.duration_ms,
            d = esc(r.decision.as_deref().unwrap_or("-")),
        );
    }
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"muted\">Nothing yet.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

pub async fn event(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    render(console, headers, "Event", |c, login| async move {
        let row = audit_read::by_id(&c, &id, Some(&login.identity.user))
            .await?
            .ok_or(ConsoleError::NotFound)?;
        let mut out = String::from("<h1>Event</h1><dl class=\"event\">");
        for (k, v) in [
            ("Time (UTC)", time_text(row.time_ms)),
            ("Method", row.method.clone()),
            ("Target", row.target.clone().unwrap_or_default()),
            ("Name", row.name.clone().unwrap_or_default()),
            ("Decision", row.decision.clone().unwrap_or_default()),
            ("Policy", row.policy.clone().unwrap_or_default()),
            ("Outcome", row.outcome.clone()),
            ("Duration (ms)", format!("{:.1}", row.duration_ms)),
            ("Session", row.session.clone().unwrap_or_default()),
            ("Trace", row.trace_id.clone()),
        ] {
            let _ = write!(out, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
        }
        out.push_str("</dl>");
        Ok(out)
    })
    .await
}

/// The session if it is the caller's; another user's is "not found".
async fn own_session(
    console: &Console,
    login: &Login,
    id: &str,
) -> Result<Arc<Session>, ConsoleError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ConsoleError::NotFound);
    }
    let found = console
        .parts
        .sessions
        .get(id)
        .await
        .map_err(|_| ConsoleError::NotFound)?;
    found
        .filter(|s| s.owner == subject_of(&login.identity))
        .ok_or(ConsoleError::NotFound)
}

fn scope_text(s: &Session) -> String {
    match &s.scope {
        Scope::Aggregated => "all Targets (/mcp)".to_owned(),
        Scope::Target { namespace, name } => format!("{namespace}/{name}"),
    }
}

fn client_text(s: &Session) -> String {
    let name = s
        .client_info
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let version = s
        .client_info
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    format!("{name} {version}").trim().to_owned()
}

pub async fn sessions(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    render(console, headers, "Sessions", |c, login| async move {
        let owner = subject_of(&login.identity);
        let list = c
            .parts
            .sessions
            .list(Some(&owner), 200)
            .await
            .map_err(|_| ConsoleError::NotFound)?;
        let mut out = String::from(
            "<h1>Your sessions</h1><table class=\"sessions\"><thead><tr><th>Session</th><th>Scope</th>\
             <th>Client</th><th>Protocol</th><th></th></tr></thead><tbody>",
        );
        for s in &list {
            let _ = write!(
                out,
                "<tr data-session=\"{id}\"><td><a href=\"/console/sessions/{id}\"><code>{short}…</code></a></td>\
                 <td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/console/sessions/{id}/end\">\
                 {}<button type=\"submit\" class=\"end\">End</button></form></td></tr>",
                esc(&scope_text(s)),
                esc(&client_text(s)),
                esc(&s.protocol_version),
                csrf_field(&login.csrf),
                id = esc(&s.id),
                short = esc(s.id.get(..8).unwrap_or(&s.id)),
            );
        }
        if list.is_empty() {
            out.push_str("<tr><td colspan=\"5\" class=\"muted\">No live sessions.</td></tr>");
        }
        out.push_str("</tbody></table>");
        Ok(out)
    })
    .await
}

pub async fn session(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    render(console, headers, "Session", |c, login| async move {
        let s = own_session(&c, &login, &id).await?;
        Ok(format!(
            "<h1>Session <code>{}</code></h1><dl><dt>Scope</dt><dd>{}</dd><dt>Client</dt><dd>{}</dd>\
             <dt>Protocol</dt><dd>{}</dd></dl><form method=\"post\" action=\"/console/sessions/{}/end\">{}\
             <button type=\"submit\" class=\"end\">End this session</button></form>\
             <p><a href=\"/console/activity\">Activity</a></p>",
            esc(&s.id),
            esc(&scope_text(&s)),
            esc(&client_text(&s)),
            esc(&s.protocol_version),
            esc(&s.id),
            csrf_field(&login.csrf),
        ))
    })
    .await
}

pub async fn end_session(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    let login = guard::login(&console, &headers).await?;
    check_csrf(&login, &form.csrf)?;
    let s = own_session(&console, &login, &id).await?;
    tracing::info!(user = %login.identity.user, "console: ending a session");
    (console.parts.end_session)(s.id.clone()).await;
    Ok(see_other("/console/sessions"))
}
