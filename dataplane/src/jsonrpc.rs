//! JSON-RPC 2.0 envelopes as MCP uses them: classify one message (request, notification,
//! response), keep the rest of the object untouched for pass-through, and build error replies.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// An upstream's answer to one request. A plain result (`{"jsonrpc", "id", "result"}` and
/// nothing else) keeps `result` as the upstream's bytes, checked to be JSON but never built
/// into a `Value` tree (issue #24: the tree and its allocations were ~12 % of a call); anything
/// else (an `error`, extra members) is the reply object as before.
#[derive(Debug, Clone)]
pub enum UpstreamReply {
    /// The upstream's `result`, as it sent it.
    Result(Box<RawValue>),
    /// The whole reply object (`result` or `error`, and whatever else the upstream put there).
    Object(Map<String, Value>),
}

impl UpstreamReply {
    /// Whether the reply carries an `error`.
    pub fn is_error(&self) -> bool {
        self.contains_key("error")
    }

    /// Whether the reply object has member `key` (`result`, `error`, ...).
    pub fn contains_key(&self, key: &str) -> bool {
        match self {
            Self::Result(_) => key == "result",
            Self::Object(o) => o.contains_key(key),
        }
    }

    /// A member of the reply as a tree (a raw `result` is parsed for the caller).
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Self::Result(raw) if key == "result" => serde_json::from_str(raw.get()).ok(),
            Self::Result(_) => None,
            Self::Object(o) => o.get(key).cloned(),
        }
    }

    /// The reply object as a tree, for a caller that reads or rewrites it.
    pub fn into_object(self) -> Map<String, Value> {
        match self {
            Self::Object(o) => o,
            Self::Result(raw) => {
                let mut o = Map::new();
                // Checked JSON when read, so this parse does not fail.
                let result = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                o.insert("result".into(), result);
                o
            }
        }
    }

    /// The reply object, made a tree first if it was not.
    pub fn object_mut(&mut self) -> &mut Map<String, Value> {
        if let Self::Result(_) = self {
            let taken = std::mem::replace(self, Self::Object(Map::new()));
            *self = Self::Object(taken.into_object());
        }
        match self {
            Self::Object(o) => o,
            Self::Result(_) => unreachable!("made a tree just above"),
        }
    }
}

impl From<Map<String, Value>> for UpstreamReply {
    fn from(o: Map<String, Value>) -> Self {
        Self::Object(o)
    }
}

/// Reads one upstream message that should answer our request `id`: `Ok(None)` when it is a
/// message of another id (or no reply at all); an error when it is not a JSON object.
pub fn read_reply(bytes: &[u8], id: u64) -> Result<Option<UpstreamReply>, serde_json::Error> {
    let envelope: Envelope<'_> = serde_json::from_slice(bytes)?;
    let answers = envelope.id.as_ref().and_then(Value::as_u64) == Some(id);
    match envelope {
        Envelope {
            result: Some(raw),
            others: false,
            ..
        } if answers => Ok(Some(UpstreamReply::Result(raw.to_owned()))),
        _ if !answers => Ok(None),
        // An error or extra members: the whole object, exactly as before.
        _ => {
            let object: Map<String, Value> = serde_json::from_slice(bytes)?;
            let replies = object.contains_key("result") || object.contains_key("error");
            Ok(replies.then_some(UpstreamReply::Object(object)))
        }
    }
}

/// The members of a reply this gateway reads without building a tree.
struct Envelope<'a> {
    id: Option<Value>,
    result: Option<&'a RawValue>,
    /// Members other than `jsonrpc`, `id` and `result` (`error`, `_meta`, ...).
    others: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum EnvelopeKey {
    Jsonrpc,
    Id,
    Result,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON-RPC message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut out = Envelope {
                    id: None,
                    result: None,
                    others: false,
                };
                // A repeated member: the last one counts, as in a `Value` tree.
                while let Some(key) = map.next_key::<EnvelopeKey>()? {
                    match key {
                        EnvelopeKey::Jsonrpc => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        EnvelopeKey::Id => out.id = Some(map.next_value()?),
                        EnvelopeKey::Result => out.result = Some(map.next_value()?),
                        EnvelopeKey::Other => {
                            out.others = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Members)
    }
}

/// A message for the client: a tree, or an upstream's raw `result` under the client's id
/// (serialized as `{"jsonrpc":"2.0","id":…,"result":…}` with the result's bytes as they came).
#[derive(Debug, Clone)]
pub enum Outbound {
    Tree(Value),
    Result { id: Value, result: Box<RawValue> },
}

impl Outbound {
    /// The reply to request `id` carrying an upstream's `answer` (the reply object keeps every
    /// member the upstream sent; `id` and `jsonrpc` are the gateway's).
    pub fn answer(id: &Value, answer: UpstreamReply) -> Self {
        match answer {
            UpstreamReply::Result(result) => Self::Result {
                id: id.clone(),
                result,
            },
            UpstreamReply::Object(mut o) => {
                o.insert("id".into(), id.clone());
                o.insert("jsonrpc".into(), json!("2.0"));
                Self::Tree(Value::Object(o))
            }
        }
    }

    /// The message as a tree when it is one (errors, rewritten replies); `None` for a raw result.
    pub fn as_tree(&self) -> Option<&Value> {
        match self {
            Self::Tree(v) => Some(v),
            Self::Result { .. } => None,
        }
    }

    /// As [`Self::as_tree`], mutable.
    pub fn as_tree_mut(&mut self) -> Option<&mut Value> {
        match self {
            Self::Tree(v) => Some(v),
            Self::Result { .. } => None,
        }
    }

    /// The message as a tree, parsing a raw result first (for a caller that rewrites it).
    pub fn tree_mut(&mut self) -> &mut Value {
        if let Self::Result { id, result } = self {
            let parsed = serde_json::from_str(result.get()).unwrap_or(Value::Null);
            *self = Self::Tree(json!({"jsonrpc": "2.0", "id": id, "result": parsed}));
        }
        match self {
            Self::Tree(v) => v,
            Self::Result { .. } => unreachable!("made a tree just above"),
        }
    }

    /// The raw result's text, when this is one.
    pub fn raw_result(&self) -> Option<&str> {
        match self {
            Self::Result { result, .. } => Some(result.get()),
            Self::Tree(_) => None,
        }
    }

    /// The message as a tree (parsing a raw result).
    pub fn into_tree(mut self) -> Value {
        std::mem::take(self.tree_mut())
    }
}

impl From<Value> for Outbound {
    fn from(v: Value) -> Self {
        Self::Tree(v)
    }
}

impl Serialize for Outbound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tree(v) => v.serialize(s),
            Self::Result { id, result } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("jsonrpc", "2.0")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("result", result)?;
                m.end()
            }
        }
    }
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

    #[test]
    fn a_plain_result_stays_bytes_and_takes_the_clients_id() {
        let body = br#"{"jsonrpc":"2.0","id":9,"result":{"z":1,"a":[1.50,"x"]}}"#;
        let Ok(Some(answer)) = read_reply(body, 9) else {
            panic!("no answer")
        };
        assert!(matches!(answer, UpstreamReply::Result(_)));
        assert!(!answer.is_error());
        let out = Outbound::answer(&json!("client-1"), answer);
        assert_eq!(out.raw_result(), Some(r#"{"z":1,"a":[1.50,"x"]}"#));
        let text = serde_json::to_string(&out).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","id":"client-1","result":{"z":1,"a":[1.50,"x"]}}"#
        );
        let parsed: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(parsed, out.clone().into_tree());
    }

    #[test]
    fn errors_and_extra_members_are_kept_as_trees() {
        let err = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"m"}}"#;
        let Ok(Some(answer)) = read_reply(err, 3) else {
            panic!("no answer")
        };
        assert!(answer.is_error());
        let out = Outbound::answer(&json!(1), answer);
        assert_eq!(
            out.as_tree(),
            Some(&json!({"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"m"}}))
        );
        let extra = br#"{"jsonrpc":"2.0","id":3,"result":{},"_meta":{"k":1}}"#;
        let Ok(Some(UpstreamReply::Object(o))) = read_reply(extra, 3) else {
            panic!("not a tree")
        };
        assert_eq!(o.get("_meta"), Some(&json!({"k":1})));
    }

    #[test]
    fn other_ids_notifications_and_garbage_are_told_apart() {
        assert!(matches!(
            read_reply(br#"{"jsonrpc":"2.0","id":4,"result":{}}"#, 5),
            Ok(None)
        ));
        assert!(matches!(
            read_reply(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#, 5),
            Ok(None)
        ));
        // An escaped member name is still that member.
        assert!(matches!(
            read_reply(br#"{"jsonrpc":"2.0","id":5,"res\u0075lt":[1]}"#, 5),
            Ok(Some(UpstreamReply::Result(_)))
        ));
        assert!(read_reply(b"[1]", 5).is_err());
        assert!(read_reply(br#"{"jsonrpc":"2.0","id":5,"result":{"#, 5).is_err());
        assert!(read_reply(br#"{"jsonrpc":"2.0","id":5,"result":tru}"#, 5).is_err());
        // An id that is the right number as a string is not ours.
        assert!(matches!(
            read_reply(br#"{"jsonrpc":"2.0","id":"5","result":{}}"#, 5),
            Ok(None)
        ));
    }

    #[test]
    fn a_raw_answer_reads_like_the_tree_it_stands_for() {
        let Ok(Some(mut answer)) = read_reply(br#"{"jsonrpc":"2.0","id":1,"result":{"a":1}}"#, 1)
        else {
            panic!("no answer")
        };
        assert!(answer.contains_key("result"));
        assert!(!answer.contains_key("error"));
        assert_eq!(answer.get("result"), Some(json!({"a":1})));
        answer.object_mut().insert("x".into(), json!(2));
        assert_eq!(
            Value::Object(answer.into_object()),
            json!({"result":{"a":1},"x":2})
        );
        let mut out = Outbound::Result {
            id: json!(7),
            result: RawValue::from_string("[1]".into()).unwrap_or_else(|_| unreachable!()),
        };
        assert!(out.as_tree().is_none());
        assert_eq!(
            out.tree_mut(),
            &json!({"jsonrpc":"2.0","id":7,"result":[1]})
        );
    }
}
