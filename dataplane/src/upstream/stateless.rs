//! Upstreams of the stateless 2026-07-28 revision: finding out whether one speaks it
//! (`server/discover`, remembered per URL) and what each request to it carries in its headers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{Value, json};
use tracing::debug;

use super::{InjectedHeaders, MAX_URLS, UpstreamClient, UpstreamError, match_reply};
use crate::era::{self, STATELESS};
use crate::session::UpstreamState;

/// What each upstream URL answered to `server/discover` (true: it serves the stateless revision).
#[derive(Default)]
pub(crate) struct Eras(Mutex<HashMap<Box<str>, bool>>);

impl Eras {
    fn get(&self, url: &str) -> Option<bool> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .copied()
    }

    fn set(&self, url: &str, stateless: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_URLS {
            map.clear();
        }
        map.insert(url.into(), stateless);
    }
}

/// The upstream state of a stateless link: no session, the revision on every request.
pub fn stateless_state() -> UpstreamState {
    UpstreamState {
        session_id: None,
        protocol_version: Some(STATELESS.to_owned()),
        initialized: true,
    }
}

/// Whether `state` is a stateless link's.
pub fn is_stateless(state: &UpstreamState) -> bool {
    state.protocol_version.as_deref() == Some(STATELESS)
}

/// Adds the mirrored request headers (`Mcp-Method`, and `Mcp-Name` where the method has one).
pub(crate) fn mirror_headers(
    mut req: reqwest::RequestBuilder,
    method: &str,
    params: Option<&Value>,
) -> reqwest::RequestBuilder {
    for (name, value) in mirrored(method, params) {
        req = req.header(name, value);
    }
    req
}

/// [`mirror_headers`] into a header map.
pub(crate) fn mirror_into(map: &mut HeaderMap, method: &str, params: Option<&Value>) {
    for (name, value) in mirrored(method, params) {
        map.append(HeaderName::from_static(name), value);
    }
}

fn mirrored(
    method: &str,
    params: Option<&Value>,
) -> impl Iterator<Item = (&'static str, HeaderValue)> {
    let method_value = HeaderValue::from_str(method).ok();
    let name_value = era::mirrored_name(method, params)
        .and_then(|name| HeaderValue::from_str(&era::encode_header_value(name)).ok());
    let method_value = method_value.map(|v| (era::METHOD_HEADER, v));
    method_value
        .into_iter()
        .chain(name_value.map(|v| (era::NAME_HEADER, v)))
}

impl UpstreamClient {
    /// Whether the upstream at `url` serves the stateless revision: asked once with
    /// `server/discover`, then remembered. Any failure (an older server's 400, 404 or 405, a
    /// result without the revision) means it does not.
    pub(crate) async fn speaks_stateless(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        timeout: Duration,
    ) -> bool {
        if let Some(known) = self.eras.get(url.as_str()) {
            return known;
        }
        let answer = tokio::time::timeout(timeout, self.discover(url, headers)).await;
        let answered = answer.is_ok();
        let stateless = match answer {
            Ok(Ok(result)) => result
                .get("supportedVersions")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|v| v.as_str() == Some(STATELESS))),
            Ok(Err(e)) => {
                debug!(error = %e, "server/discover failed; the upstream is of an older revision");
                false
            }
            Err(_) => false,
        };
        // A timeout is not remembered: the next link asks again.
        if answered {
            self.eras.set(url.as_str(), stateless);
        }
        stateless
    }

    async fn discover(&self, url: &Url, headers: &InjectedHeaders) -> Result<Value, UpstreamError> {
        let id = self.next_id();
        let params = era::with_request_meta(None, &json!({}));
        let body = serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": id, "method": "server/discover", "params": params,
        }))
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let req = super::post_builder(&self.http, url, headers, &stateless_state(), body);
        let resp = mirror_headers(req, "server/discover", None)
            .send()
            .await
            .map_err(super::map_reqwest)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status(resp.status().as_u16()));
        }
        let reply = if super::is_event_stream(resp.headers()) {
            let text = resp.text().await.map_err(super::map_reqwest)?;
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find_map(|d| {
                    match_reply(serde_json::from_str(d.trim()), id)
                        .ok()
                        .flatten()
                })
        } else {
            let bytes = resp.bytes().await.map_err(super::map_reqwest)?;
            match_reply(serde_json::from_slice(&bytes), id)?
        };
        reply
            .and_then(|mut r| r.remove("result"))
            .ok_or_else(|| UpstreamError::Protocol("server/discover has no result".into()))
    }
}
