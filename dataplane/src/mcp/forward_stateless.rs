//! Calls to an upstream of the stateless 2026-07-28 revision: the request `_meta` it needs,
//! cached list answers (`ttlMs`, `cacheScope`), and `input_required` results translated into
//! server-to-client requests for clients that have a handshake (and so no `inputResponses`);
//! `resources/subscribe` becomes a listen stream for the URI (which the upstream layer holds).

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::Gateway;
use crate::era;
use crate::jsonrpc;
use crate::upstream::{CallHooks, Caller, Inbound, LinkRoute, Responder, UpstreamError};

/// Rounds of input one request may ask of a client before the gateway gives up on it.
const MAX_ROUNDS: usize = 8;

impl Gateway {
    /// One request on a stateless link; for a client with a handshake, `input_required` rounds
    /// are answered by asking the client and retrying with its `inputResponses`. A
    /// subscription becomes a listen stream the upstream layer holds for the session.
    pub(crate) async fn send_stateless(
        &self,
        route: &LinkRoute<'_>,
        (method, params): (&str, Option<&Value>),
        caller: &Caller<'_>,
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, UpstreamError> {
        if matches!(method, "resources/subscribe" | "resources/unsubscribe") {
            return Ok(route.listen_subscription(method, params));
        }
        let mut params = era::with_request_meta(params, &route.init().capabilities);
        let owner = caller.identity.fingerprint();
        if let Some(hit) = self
            .list_cache
            .get(caller.target_key, method, &params, &owner)
        {
            return Ok(hit);
        }
        for _ in 0..MAX_ROUNDS {
            let reply = route
                .send(method, Some(&params), hooks)
                .await?
                .into_object();
            let Some(result) = reply.get("result") else {
                return Ok(reply);
            };
            if !era::is_input_required(result) {
                self.list_cache
                    .put(caller.target_key, method, &params, &owner, &reply);
                return Ok(reply);
            }
            if caller.is_stateless() {
                // The client retries itself (its state sealed to this Target on the way out).
                return Ok(reply);
            }
            let asked = result.get("inputRequests").cloned().unwrap_or(json!({}));
            let state = result.get("requestState").cloned();
            let answers = match self.ask_client(&asked, hooks).await {
                Ok(answers) => answers,
                Err(why) => {
                    let mut out = Map::new();
                    out.insert(
                        "error".into(),
                        json!({"code": jsonrpc::INVALID_REQUEST, "message": why}),
                    );
                    return Ok(out);
                }
            };
            if let Value::Object(p) = &mut params {
                p.insert("inputResponses".into(), Value::Object(answers));
                match state {
                    Some(s) => p.insert("requestState".into(), s),
                    None => p.remove("requestState"),
                };
            }
        }
        Err(UpstreamError::Protocol(
            "the upstream kept asking for input".into(),
        ))
    }

    /// Asks the client every input request (as server-to-client requests on its stream, with the
    /// capability checks of any relayed request) and collects the results by key.
    async fn ask_client(
        &self,
        asked: &Value,
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, String> {
        let Value::Object(asked) = asked else {
            return Ok(Map::new());
        };
        if hooks.sink.is_none() {
            return Err("the upstream needs input this request cannot ask the client for".into());
        }
        let mut waits = Vec::new();
        for (key, request) in asked {
            let (tx, rx) = oneshot::channel::<Vec<u8>>();
            let responder = Responder::new(
                json!(key),
                Box::new(move |body| {
                    Box::pin(async move {
                        let _ = tx.send(body);
                        Ok(())
                    })
                }),
            );
            let mut msg = Map::new();
            msg.insert("jsonrpc".into(), json!("2.0"));
            msg.insert("id".into(), json!(key));
            if let Some(m) = request.get("method") {
                msg.insert("method".into(), m.clone());
            }
            if let Some(p) = request.get("params") {
                msg.insert("params".into(), p.clone());
            }
            hooks.deliver(Inbound::Request(msg, responder));
            waits.push((key.clone(), rx));
        }
        let patience = self.upcalls.timeout() + Duration::from_secs(5);
        let answers = tokio::time::timeout(
            patience,
            join_all(
                waits
                    .into_iter()
                    .map(|(k, rx)| async move { (k, rx.await) }),
            ),
        )
        .await
        .map_err(|_| {
            "the client did not answer the upstream's input requests in time".to_owned()
        })?;
        let mut out = Map::new();
        for (key, body) in answers {
            let body = body.map_err(|_| format!("input request {key} was dropped"))?;
            let msg: Value = serde_json::from_slice(&body)
                .map_err(|_| format!("input request {key} got a malformed answer"))?;
            match (msg.get("result"), msg.pointer("/error/message")) {
                (Some(r), _) => {
                    out.insert(key, r.clone());
                }
                (None, m) => {
                    return Err(format!(
                        "the client could not answer input request {key}: {}",
                        m.and_then(Value::as_str).unwrap_or("no result")
                    ));
                }
            }
        }
        Ok(out)
    }
}
