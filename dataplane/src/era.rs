//! The stateless 2026-07-28 revision's wire vocabulary, shared by both sides of the gateway:
//! `_meta` keys, the mirrored `Mcp-Method`/`Mcp-Name` headers and their Base64 sentinel, results.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// The stateless revision: no `initialize`, no session, `_meta` on every request.
pub const STATELESS: &str = "2026-07-28";
/// Every revision the gateway serves downstream, newest first (what `server/discover` lists).
pub const SERVED: [&str; 4] = [STATELESS, "2025-11-25", "2025-06-18", "2025-03-26"];

pub const META_PROTOCOL: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";

pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";

/// HTTP headers that disagree with the body, or required ones missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// The request needs a client capability it did not declare.
pub const MISSING_CAPABILITY: i64 = -32021;
/// A revision the server does not serve; `data` lists the supported ones.
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// The methods whose results carry `ttlMs` and `cacheScope` (`CacheableResult`).
pub fn is_cacheable(method: &str) -> bool {
    matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

/// The methods whose results may be `input_required` (multi round-trip requests).
pub fn allows_input_required(method: &str) -> bool {
    matches!(method, "tools/call" | "prompts/get" | "resources/read")
}

/// The body value `Mcp-Name` mirrors: `params.name` or `params.uri`, for the methods that need it.
pub fn mirrored_name<'a>(method: &str, params: Option<&'a Value>) -> Option<&'a str> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    params?.get(field)?.as_str()
}

/// A header value for `text`: as is when it is plain visible ASCII, else the Base64 sentinel.
pub fn encode_header_value(text: &str) -> String {
    let sentinel = text.starts_with("=?base64?") && text.ends_with("?=");
    let unsafe_text = text.is_empty()
        || text.bytes().any(|b| !(0x20..=0x7e).contains(&b))
        || text.starts_with(' ')
        || text.ends_with(' ');
    let plain = !unsafe_text && !sentinel;
    if plain {
        text.to_owned()
    } else {
        format!("=?base64?{}?=", B64.encode(text.as_bytes()))
    }
}

/// The text a header value carries (the Base64 sentinel decoded); `None` when it is malformed.
pub fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(B64.decode(encoded).ok()?).ok(),
        None => Some(raw.to_owned()),
    }
}

/// What a stateless request says about its client in `params._meta`.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub protocol_version: Option<String>,
    pub capabilities: Option<Value>,
    pub client_info: Option<Value>,
}

impl RequestMeta {
    pub fn of(params: Option<&Value>) -> Self {
        let meta = params.and_then(|p| p.get("_meta"));
        let get = |k: &str| meta.and_then(|m| m.get(k)).cloned();
        Self {
            protocol_version: get(META_PROTOCOL).and_then(|v| v.as_str().map(str::to_owned)),
            capabilities: get(META_CAPABILITIES),
            client_info: get(META_CLIENT_INFO),
        }
    }
}

/// Adds the stateless `_meta` a request to a 2026-07-28 upstream must carry (what the gateway's
/// client may receive as input requests), keeping what the client's own `_meta` said otherwise.
pub fn with_request_meta(params: Option<&Value>, capabilities: &Value) -> Value {
    let mut params = match params {
        Some(Value::Object(p)) => p.clone(),
        _ => Map::new(),
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(META_PROTOCOL.into(), json!(STATELESS));
        meta.insert(META_CAPABILITIES.into(), capabilities.clone());
        meta.insert(
            META_CLIENT_INFO.into(),
            json!({"name": "reflow", "version": env!("CARGO_PKG_VERSION")}),
        );
    }
    Value::Object(params)
}

/// The gateway's identity, for a result's `_meta`.
pub fn server_info() -> Value {
    json!({"name": "reflow", "version": env!("CARGO_PKG_VERSION")})
}

/// Whether `result` is an interim `input_required` result.
pub fn is_input_required(result: &Value) -> bool {
    result.get("resultType").and_then(Value::as_str) == Some("input_required")
}

/// Makes a result a 2026-07-28 one: `resultType` (`complete` unless it says otherwise) and the
/// gateway's `serverInfo` in `_meta`. Results of older upstreams omit `resultType`, which the
/// revision defines as `complete`.
pub fn stamp_result(result: &mut Map<String, Value>) {
    result
        .entry("resultType")
        .or_insert_with(|| json!("complete"));
    let meta = result
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(META_SERVER_INFO.into(), server_info());
    }
}

/// The `UnsupportedProtocolVersion` error for `requested`.
pub fn unsupported_version(id: &Value, requested: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": UNSUPPORTED_VERSION,
            "message": format!("Unsupported protocol version: {requested}"),
            "data": {"requested": requested, "supported": SERVED},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip_and_only_unsafe_ones_are_encoded() {
        for text in [
            "get_weather",
            "file:///a b",
            "Hello, 世界",
            " padded ",
            "a\nb",
            "=?base64?x?=",
        ] {
            let enc = encode_header_value(text);
            assert_eq!(decode_header_value(&enc).as_deref(), Some(text), "{text:?}");
        }
        assert_eq!(encode_header_value("get_weather"), "get_weather");
        assert_eq!(
            encode_header_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn stamping_keeps_an_input_required_result_and_names_the_gateway() {
        let mut done = Map::new();
        stamp_result(&mut done);
        assert_eq!(done["resultType"], "complete");
        assert_eq!(done["_meta"][META_SERVER_INFO]["name"], "reflow");
        let mut interim = json!({"resultType": "input_required"})
            .as_object()
            .cloned()
            .unwrap();
        stamp_result(&mut interim);
        assert!(is_input_required(&Value::Object(interim)));
    }

    #[test]
    fn request_meta_is_added_without_losing_the_callers_own_keys() {
        let p = json!({"name": "t", "_meta": {"progressToken": 7}});
        let out = with_request_meta(Some(&p), &json!({"sampling": {}}));
        assert_eq!(out["_meta"]["progressToken"], 7);
        assert_eq!(out["_meta"][META_PROTOCOL], STATELESS);
        assert_eq!(out["_meta"][META_CAPABILITIES]["sampling"], json!({}));
        assert_eq!(out["name"], "t");
    }
}
