//! JSON-RPC 2.0 envelopes as MCP uses them: classify one message (request, notification,
//! response), keep the rest of the object untouched for pass-through, and build error replies.

use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP's "resource not found".
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// Implementation-defined server error: the upstream could not answer.
pub const UPSTREAM_ERROR: i64 = -32000;

/// Why a body is not one acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("batches are not supported (protocol 2025-06-18 and later)")]
    Batch,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl EnvelopeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Parse(_) => "parse",
            Self::Batch => "batch",
            Self::Invalid(_) => "invalid",
        }
    }

    /// The error reply for this failure (id is null: it could not be read reliably).
    pub fn to_response(&self) -> Value {
        let code = match self {
            Self::Parse(_) => PARSE_ERROR,
            Self::Batch | Self::Invalid(_) => INVALID_REQUEST,
        };
        error(&Value::Null, code, &self.to_string())
    }
}

/// A request: only id, method and params are read; `object` keeps every field as received so
/// unknown fields and `_meta` pass through when it is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub method: String,
    pub object: Map<String, Value>,
}

impl Request {
    pub fn params(&self) -> Option<&Value> {
        self.object.get("params")
    }

    /// A string field of `params` (e.g. `name`, `uri`).
    pub fn param_str(&self, field: &str) -> Option<&str> {
        self.params()?.get(field)?.as_str()
    }

    /// The params object, created if absent, for rewriting before forwarding.
    pub fn params_mut(&mut self) -> &mut Map<String, Value> {
        let p = self
            .object
            .entry("params")
            .or_insert_with(|| Value::Object(Map::new()));
        if !p.is_object() {
            *p = Value::Object(Map::new());
        }
        match p {
            Value::Object(m) => m,
            _ => unreachable!("params was just made an object"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Notification {
        method: String,
        object: Map<String, Value>,
    },
    /// A client's answer to a server-initiated request.
    Response(Map<String, Value>),
}

/// Parses one HTTP body into one message; arrays (batches) are refused.
pub fn parse(body: &[u8]) -> Result<Message, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::Parse(e.to_string()))?;
    classify(value)
}

pub fn classify(value: Value) -> Result<Message, EnvelopeError> {
    let object = match value {
        Value::Object(o) => o,
        Value::Array(_) => return Err(EnvelopeError::Batch),
        _ => return Err(EnvelopeError::Invalid("a message must be a JSON object")),
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(EnvelopeError::Invalid("jsonrpc must be \"2.0\""));
    }
    let id = object.get("id").cloned();
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(EnvelopeError::Invalid("id must be a string or an integer"));
    }
    match (object.get("method"), id) {
        (Some(Value::String(m)), Some(id)) => Ok(Message::Request(Request {
            id,
            method: m.clone(),
            object,
        })),
        (Some(Value::String(m)), None) => Ok(Message::Notification {
            method: m.clone(),
            object,
        }),
        (Some(_), _) => Err(EnvelopeError::Invalid("method must be a string")),
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => {
            Ok(Message::Response(object))
        }
        (None, _) => Err(EnvelopeError::Invalid("no method, result or error")),
    }
}

pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub fn parse_error(detail: &str) -> Value {
    error(&Value::Null, PARSE_ERROR, &format!("parse error: {detail}"))
}

pub fn invalid_request(id: &Value, detail: &str) -> Value {
    error(id, INVALID_REQUEST, detail)
}

pub fn method_not_found(id: &Value, method: &str) -> Value {
    error(id, METHOD_NOT_FOUND, &format!("method not found: {method}"))
}

pub fn invalid_params(id: &Value, detail: &str) -> Value {
    error(id, INVALID_PARAMS, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests_notifications_and_responses() {
        let r = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","x":1}"#);
        match r {
            Ok(Message::Request(req)) => {
                assert_eq!(req.id, json!(7));
                assert_eq!(req.method, "tools/list");
                assert_eq!(req.object.get("x"), Some(&json!(1)));
            }
            other => panic!("not a request: {other:?}"),
        }
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Message::Response(_))
        ));
    }

    #[test]
    fn refuses_batches_garbage_and_bad_ids() {
        assert_eq!(parse(b"[]"), Err(EnvelopeError::Batch));
        assert!(matches!(parse(b"{nope"), Err(EnvelopeError::Parse(_))));
        assert_eq!(
            parse(b"{nope").unwrap_err().to_response()["error"]["code"],
            json!(-32700)
        );
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
            Err(EnvelopeError::Invalid(_))
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(EnvelopeError::Invalid(_))
        ));
    }

    #[test]
    fn params_mut_keeps_other_fields() {
        let Ok(Message::Request(mut r)) =
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a_b","_meta":{"k":1}}}"#)
        else {
            panic!("not a request")
        };
        r.params_mut().insert("name".into(), json!("b"));
        assert_eq!(r.params(), Some(&json!({"name":"b","_meta":{"k":1}})));
    }
}
