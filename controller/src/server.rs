//! The controller's HTTP API, served by every replica: the snapshot watch stream, the applied
//! reports that feed `Programmed`, a status view (what folder mode has instead of kube status),
//! and health, readiness and metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Json, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use reflow_crds::grant::{
    DISCONNECT_PATH, GRANTS_PATH, Grant, GrantKey, MAX_GRANT_BYTES, REFRESH_PATH,
};
use reflow_crds::observed::{MAX_REPORT_BYTES, OBSERVED_PATH, ObservedReport};
use reflow_crds::wire::{
    APPLIED_PATH, AppliedReport, DATAPLANE_HEADER, NDJSON, Outcome, WATCH_PATH, WatchFrame,
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::conditions;
use crate::fleet::{Connection, Fleet};
use crate::metrics::Metrics;
use crate::publish::Published;
use crate::target_status;
use crate::token::ApiToken;

/// How often an idle watch stream carries a heartbeat line.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    pub published: watch::Receiver<Option<Published>>,
    pub fleet: Fleet,
    pub token: ApiToken,
    pub metrics: Arc<Metrics>,
    pub heartbeat: Duration,
    /// The cluster client for the instance API; `None` in folder mode (the API answers 501).
    pub instances: Option<kube::Client>,
    /// Users' grants (cluster mode, with `instances`): the sealing key they are sealed under
    /// and the lease holder's refresher; `None`: the connections API answers 501.
    pub grants: Option<crate::grants::GrantsApi>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(WATCH_PATH, get(watch_snapshots))
        .route(APPLIED_PATH, post(applied))
        .route(
            OBSERVED_PATH,
            post(observed).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route("/v1/status", get(status))
        .route("/v1/instances/ensure", post(ensure_instance))
        .route("/v1/instances/used", post(instance_used))
        .route(
            GRANTS_PATH,
            post(put_grant).layer(DefaultBodyLimit::max(MAX_GRANT_BYTES)),
        )
        .route(
            DISCONNECT_PATH,
            post(delete_grant).layer(DefaultBodyLimit::max(MAX_GRANT_BYTES)),
        )
        .route(
            REFRESH_PATH,
            post(refresh_grant).layer(DefaultBodyLimit::max(MAX_GRANT_BYTES)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid controller token is required\n",
    )
        .into_response()
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    state.token.verify_header(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// A dataplane name: what a pod name can be (DNS label characters and dots), at most 253.
fn dataplane_name(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(DATAPLANE_HEADER)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| v.to_owned())
}

struct Stream {
    rx: watch::Receiver<Option<Published>>,
    sent: Option<u64>,
    heartbeat: tokio::time::Interval,
    _connection: Connection,
}

impl Stream {
    /// The next line: the current snapshot if it has not been sent yet, else wait for a change
    /// or the heartbeat. Ends when the publisher goes away (shutdown).
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let frame = self
                .rx
                .borrow_and_update()
                .as_ref()
                .filter(|p| Some(p.version()) != self.sent)
                .map(|p| (p.version(), p.frame.clone()));
            if let Some((version, frame)) = frame {
                self.sent = Some(version);
                return Some(frame);
            }
            tokio::select! {
                changed = self.rx.changed() => changed.ok()?,
                _ = self.heartbeat.tick() => return Some(Bytes::from(WatchFrame::heartbeat_line())),
            }
        }
    }
}

async fn watch_snapshots(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(name) = dataplane_name(&headers) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("header {DATAPLANE_HEADER} must name the dataplane (letters, digits, '-', '.', '_')\n"),
        )
            .into_response();
    };
    state.metrics.watch_streams.inc();
    info!(dataplane = %name, "watch stream opened");
    let mut heartbeat = tokio::time::interval(state.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the stream starts with the snapshot, not a heartbeat.
    heartbeat.reset();
    let stream = Stream {
        rx: state.published.clone(),
        sent: None,
        heartbeat,
        _connection: state.fleet.connect(&name),
    };
    let span = info_span!("watch_stream", dataplane = %name);
    let body = futures::stream::unfold(stream, move |mut s| {
        async move {
            let line = s.next_line().await?;
            Some((Ok::<_, Infallible>(line), s))
        }
        .instrument(span.clone())
    });
    (
        [
            (header::CONTENT_TYPE, NDJSON),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn applied(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let report: AppliedReport = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let outcome = match report.outcome {
        Outcome::Applied => "applied",
        Outcome::Refused => "refused",
    };
    if report.outcome == Outcome::Refused {
        warn!(dataplane = %report.dataplane, version = report.version, message = report.message.as_deref().unwrap_or(""), "a dataplane refused a snapshot");
    }
    if state.fleet.report(report) {
        Metrics::inc(&state.metrics.reports, outcome);
        StatusCode::NO_CONTENT.into_response()
    } else {
        Metrics::inc(&state.metrics.reports, "unknown");
        (
            StatusCode::CONFLICT,
            "no watch stream is open for this dataplane on this replica\n",
        )
            .into_response()
    }
}

/// A dataplane's observations of the Targets' upstreams (what `Ready`, the printer columns
/// and `ToolsDrifted` are written from). Bounded: the body size by the route, counts and
/// lengths by `ObservedReport::validate`, and Targets the snapshot does not have are dropped,
/// so a stolen dataplane token cannot make the controller hold or write more than that.
async fn observed(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let mut report: ObservedReport = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let named = dataplane_name(&headers).is_none_or(|h| h == report.dataplane);
    let valid_name = !report.dataplane.is_empty()
        && report.dataplane.len() <= 253
        && report
            .dataplane
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !named || !valid_name {
        Metrics::inc(&state.metrics.reports, "observed_invalid");
        return (StatusCode::UNPROCESSABLE_ENTITY, "invalid dataplane name\n").into_response();
    }
    if let Err(e) = report.validate() {
        warn!(dataplane = %report.dataplane, error = %e, "refusing an observation report");
        Metrics::inc(&state.metrics.reports, "observed_invalid");
        return (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response();
    }
    if let Some(p) = state.published.borrow().as_ref() {
        report
            .targets
            .retain(|t| p.snapshot.target(&t.namespace, &t.name).is_some());
    }
    if state.fleet.observe(report) {
        Metrics::inc(&state.metrics.reports, "observed");
        StatusCode::NO_CONTENT.into_response()
    } else {
        Metrics::inc(&state.metrics.reports, "unknown");
        (
            StatusCode::CONFLICT,
            "no watch stream is open for this dataplane on this replica\n",
        )
            .into_response()
    }
}

/// The compiled view with `Programmed` filled in: folder mode's stand-in for kube status.
async fn status(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(p) = state.published.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot compiled yet\n",
        )
            .into_response();
    };
    let fleet = state.fleet.programmed(p.hash());
    let observed = state.fleet.observed();
    let objects: Vec<_> = p
        .reports
        .iter()
        .map(|r| {
            let mut s = conditions::object_status(r, &fleet, p.source_error.as_deref(), None, "");
            let mut fields = None;
            if r.kind == reflow_crds::compile::ObjectKind::Target {
                // The same Target conditions and columns the lease holder writes to kube status.
                let compiled = p.snapshot.target(&r.namespace, &r.name).map(|t| &**t);
                s.conditions.push(target_status::ready(r, &observed));
                s.conditions
                    .extend(compiled.and_then(|t| target_status::tools_drifted(r, t, &observed)));
                fields = Some(target_status::fields(r, compiled, &observed));
            }
            let mut obj = json!({
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "observedGeneration": s.observed_generation,
                "conditions": s.conditions.iter().map(|c| json!({
                    "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                })).collect::<Vec<_>>(),
            });
            if let Some(f) = fields {
                obj["prefix"] = json!(f.prefix);
                obj["tools"] = json!(f.tools);
            }
            obj
        })
        .collect();
    Json(json!({
        "version": p.version(),
        "hash": p.hash(),
        "sourceError": p.source_error,
        "programmed": fleet,
        "dataplanes": state.fleet.view(),
        "objects": objects,
    }))
    .into_response()
}

async fn ready(State(state): State<ApiState>) -> Response {
    if state.published.borrow().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot compiled yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let connected = state.fleet.view().len() as i64;
    state.metrics.dataplanes_connected.set(connected);
    if let Some(p) = state.published.borrow().as_ref() {
        state.metrics.snapshot_version.set(p.version());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Bodies are parsed only after the token check, so strangers learn nothing from parse errors.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new((StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()))
}

fn no_cluster() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        "per-identity instances need a cluster; this controller runs from a manifests folder\n",
    )
        .into_response()
}

fn ensure_failure(e: &crate::instance::api::EnsureError) -> Response {
    use crate::instance::api::EnsureError as E;
    let code = match e {
        E::TargetNotFound(_) => StatusCode::NOT_FOUND,
        E::NotKubernetes(_) | E::BadKey => StatusCode::BAD_REQUEST,
        E::FingerprintMismatch(_) => StatusCode::CONFLICT,
        E::Failed { .. } | E::Kube(_) => StatusCode::BAD_GATEWAY,
    };
    warn!(error = %e, label = e.label(), "instance request failed");
    (code, format!("{e}\n")).into_response()
}

async fn ensure_instance(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let req: crate::instance::api::EnsureRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Some(client) = &state.instances else {
        return no_cluster();
    };
    let Some(snapshot) = state
        .published
        .borrow()
        .as_ref()
        .map(|p| p.snapshot.clone())
    else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot compiled yet\n",
        )
            .into_response();
    };
    match crate::instance::api::ensure(client, &snapshot, &req).await {
        Ok(r) if r.endpoint.is_some() && r.token.is_some() => {
            (StatusCode::OK, Json(r)).into_response()
        }
        Ok(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Err(e) => ensure_failure(&e),
    }
}

async fn instance_used(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let req: crate::instance::api::UsedRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Some(client) = &state.instances else {
        return no_cluster();
    };
    match crate::instance::api::used(client, &req).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ensure_failure(&e),
    }
}

fn grants_unavailable() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        "users' connections are stored by a controller watching a cluster\n",
    )
        .into_response()
}

fn grant_failure(e: &crate::grants::GrantsError) -> Response {
    warn!(error = %e, label = e.label(), "a connections request was refused");
    let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    (code, format!("{e}\n")).into_response()
}

/// `POST /v1/connections`: a dataplane hands over one user's grant.
async fn put_grant(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let grant: Grant = match parse(&body) {
        Ok(g) => g,
        Err(resp) => return *resp,
    };
    let (Some(client), Some(api)) = (&state.instances, &state.grants) else {
        return grants_unavailable();
    };
    let snapshot = state
        .published
        .borrow()
        .as_ref()
        .map(|p| p.snapshot.clone());
    let span =
        info_span!("put_grant", target = %format!("{}/{}", grant.key.namespace, grant.key.target));
    match crate::grants::put(client, snapshot.as_ref(), api, &grant)
        .instrument(span)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => grant_failure(&e),
    }
}

/// `POST /v1/connections/disconnect`: revokes one user's oauth2 grant at its AS and deletes
/// it; answers `{"existed": true, "revoked": true|false|null}` (404 when there was none).
async fn delete_grant(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let key: GrantKey = match parse(&body) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let (Some(client), Some(api)) = (&state.instances, &state.grants) else {
        return grants_unavailable();
    };
    let snapshot = state
        .published
        .borrow()
        .as_ref()
        .map(|p| p.snapshot.clone());
    let span = info_span!("delete_grant", target = %format!("{}/{}", key.namespace, key.target));
    match crate::grants::delete(client, snapshot.as_ref(), api, &key)
        .instrument(span)
        .await
    {
        Ok(d) if d.existed => {
            if let Some(ok) = d.revoked {
                let outcome = if ok { "revoked" } else { "failed" };
                Metrics::inc(&state.metrics.grant_revocations, outcome);
            }
            axum::Json(d).into_response()
        }
        Ok(_) => (StatusCode::NOT_FOUND, "no such connection\n").into_response(),
        Err(e) => grant_failure(&e),
    }
}

/// `POST /v1/connections/refresh`: an upstream refused a grant's token; the lease holder's
/// refresher takes it at once (any replica accepts: the holder reads the request from the API).
async fn refresh_grant(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let key: GrantKey = match parse(&body) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    if let Err(e) = key.validate() {
        return (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response();
    }
    let (Some(client), Some(api)) = (&state.instances, &state.grants) else {
        return grants_unavailable();
    };
    match api.request_refresh(client, &key).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => grant_failure(&e),
    }
}
