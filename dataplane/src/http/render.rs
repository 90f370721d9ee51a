//! The router's answers (`mcp::answer::Answer`) as HTTP responses: JSON with its status, the
//! session's resumable SSE streams, and plain SSE events.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::era;
use crate::jsonrpc;
use crate::mcp::answer::Answer;
use crate::mcp::rate_limit::RATE_LIMITED_OUTCOME;
use crate::mcp::streams::{Frame, RETRY_MS};

/// The HTTP response for one of the router's answers.
pub(crate) fn answer(answer: Answer) -> Response {
    match answer {
        Answer::Json { message, outcome } => json_reply(message, outcome),
        Answer::StatelessJson(message) => {
            (status_of(&message), axum::Json(message)).into_response()
        }
        Answer::Stream { priming, frames } => sse_response(priming, frames),
        Answer::Events(messages) => plain_sse(messages),
    }
}

/// A reply sent as plain JSON: 200, or for a rate-limit refusal 429 with `Retry-After` (its
/// `data.retryAfter`, at least 1), since the HTTP status can say it too.
pub(crate) fn json_reply(reply: jsonrpc::Outbound, outcome: &str) -> Response {
    if outcome != RATE_LIMITED_OUTCOME {
        return (StatusCode::OK, axum::Json(reply)).into_response();
    }
    let secs = reply
        .as_tree()
        .and_then(|r| r.pointer("/error/data/retryAfter"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        axum::Json(reply),
    )
        .into_response()
}

/// The HTTP status of a plain-JSON response: the revision's transport errors (header mismatch,
/// missing capability, unsupported revision) are 400s, an unknown method a 404.
fn status_of(reply: &Value) -> StatusCode {
    match reply.pointer("/error/code").and_then(Value::as_i64) {
        Some(era::HEADER_MISMATCH | era::MISSING_CAPABILITY | era::UNSUPPORTED_VERSION) => {
            StatusCode::BAD_REQUEST
        }
        Some(jsonrpc::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// An SSE response: the priming event (when the client's protocol revision knows them), then
/// each frame until `End` or the connection drops.
pub(crate) fn sse_response(priming: Option<String>, frames: mpsc::Receiver<Frame>) -> Response {
    let first = priming.map(|id| Bytes::from(format!("id: {id}\nretry: {RETRY_MS}\ndata: \n\n")));
    let rest = futures::stream::unfold(frames, |mut rx| async move {
        match rx.recv().await {
            Some(Frame::Event { id, data }) => {
                let text = format!("id: {id}\nevent: message\ndata: {data}\n\n");
                Some((Ok::<_, Infallible>(Bytes::from(text)), rx))
            }
            Some(Frame::End) | None => None,
        }
    });
    let body =
        futures::StreamExt::chain(futures::stream::iter(first.map(Ok::<_, Infallible>)), rest);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// An SSE response of plain events (no ids: the stateless revision does not resume streams),
/// one per message, until the messages end; an empty message is written as a keep-alive comment.
pub(crate) fn plain_sse<S>(messages: S) -> Response
where
    S: futures::Stream<Item = String> + Send + 'static,
{
    let body = futures::StreamExt::map(messages, |data| {
        let frame = if data.is_empty() {
            Bytes::from_static(b":\n\n")
        } else {
            Bytes::from(format!("event: message\ndata: {data}\n\n"))
        };
        Ok::<_, Infallible>(frame)
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_events_carry_no_ids_and_an_empty_message_is_a_keep_alive_comment() {
        let messages = futures::stream::iter(["{\"a\":1}".to_owned(), String::new()]);
        let resp = plain_sse(messages);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        assert_eq!(body, "event: message\ndata: {\"a\":1}\n\n:\n\n");
    }
}
