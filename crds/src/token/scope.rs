//! Token scopes: what a gateway API token narrows its holder to. A scope only ever removes
//! access that policies grant; it never adds any.
//!
//! The scope travels in the token's private `reflow` claim:
//!
//! ```json
//! "reflow": {
//!   "targets": ["dev-tools/search", "dev-tools/git*"],
//!   "permissions": ["list"],
//!   "sourceRanges": ["10.0.0.0/8", "127.0.0.1"],
//!   "window": "08:00-18:00"
//! }
//! ```
//!
//! * `targets`: anchored globs over `namespace/name`; other targets are invisible.
//! * `permissions`: `list` (initialize, ping, every `*/list`, `*/templates/list`) and `call`
//!   (tools/call, resources/read and subscriptions, prompts/get, completion/complete).
//! * `sourceRanges`: the request's peer address (after trusted-proxy handling) must be inside.
//! * `window`: a daily UTC window (`start-end`, may wrap past midnight).
//!
//! Every key is optional; an absent key does not narrow. An unknown key or a malformed value
//! refuses the token: a narrowing the gateway does not understand must not be ignored.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use crate::glob::Glob;
use serde_json::Value;

use super::cidr::Cidr;

/// The private claim carrying the scope.
pub const SCOPE_CLAIM: &str = "reflow";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("the token scope claim `reflow` must be an object")]
    NotAnObject,
    #[error("the token scope has an unknown key `{0}`")]
    UnknownKey(String),
    #[error("the token scope's `{0}` is malformed")]
    Malformed(&'static str),
}

/// What a request needs from the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    List,
    Call,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Call => "call",
        }
    }

    /// The permission an MCP method needs. Methods the gateway answers locally or that only
    /// enumerate are `list`; anything that runs or reads something is `call`.
    pub fn for_method(method: &str) -> Self {
        match method {
            "tools/call"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "prompts/get"
            | "completion/complete" => Self::Call,
            _ => Self::List,
        }
    }
}

/// Why a request falls outside its token's scope. Safe to return to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutOfScope {
    #[error("the token is not valid from this address")]
    Source,
    #[error("the token is not valid at this time of day")]
    Window,
    #[error("the token does not grant the `{}` permission", .0.as_str())]
    Permission(Permission),
}

impl OutOfScope {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Source => "scope_source",
            Self::Window => "scope_window",
            Self::Permission(_) => "scope_permission",
        }
    }
}

/// A daily UTC window in minutes since midnight; `start > end` wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    start: u32,
    end: u32,
}

impl DailyWindow {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-')?;
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h < 24 && m < 60 && !t.trim().starts_with('+')).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a)?, minutes(b)?);
        (start != end).then_some(Self { start, end })
    }

    /// Whether `unix_secs` (UTC) falls inside the window (start inclusive, end exclusive).
    pub fn contains(&self, unix_secs: u64) -> bool {
        let minute = ((unix_secs / 60) % (24 * 60)) as u32;
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TokenScope {
    targets: Option<Vec<Glob>>,
    list: bool,
    call: bool,
    permissions_limited: bool,
    sources: Option<Vec<Cidr>>,
    window: Option<DailyWindow>,
}

static UNRESTRICTED: LazyLock<Arc<TokenScope>> = LazyLock::new(|| Arc::new(TokenScope::default()));

impl TokenScope {
    /// The scope that narrows nothing (tokens without a `reflow` claim, other authenticators).
    pub fn unrestricted() -> Arc<Self> {
        UNRESTRICTED.clone()
    }

    pub fn is_unrestricted(&self) -> bool {
        self.targets.is_none()
            && !self.permissions_limited
            && self.sources.is_none()
            && self.window.is_none()
    }

    /// Reads the `reflow` claim (`None` when absent).
    pub fn from_claim(claim: Option<&Value>) -> Result<Self, ScopeError> {
        let obj = match claim {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(obj)) => obj,
            Some(_) => return Err(ScopeError::NotAnObject),
        };
        let mut scope = Self::default();
        for (key, value) in obj {
            match key.as_str() {
                "targets" => {
                    let globs = strings(value, "targets")?
                        .into_iter()
                        .map(|s| Glob::new(s).map_err(|_| ScopeError::Malformed("targets")))
                        .collect::<Result<Vec<_>, _>>()?;
                    scope.targets = Some(globs);
                }
                "permissions" => {
                    scope.permissions_limited = true;
                    for p in strings(value, "permissions")? {
                        match p {
                            "list" => scope.list = true,
                            "call" => scope.call = true,
                            _ => return Err(ScopeError::Malformed("permissions")),
                        }
                    }
                }
                "sourceRanges" => {
                    let ranges = strings(value, "sourceRanges")?
                        .into_iter()
                        .map(|s| s.parse::<Cidr>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| ScopeError::Malformed("sourceRanges"))?;
                    scope.sources = Some(ranges);
                }
                "window" => {
                    let w = value
                        .as_str()
                        .and_then(DailyWindow::parse)
                        .ok_or(ScopeError::Malformed("window"))?;
                    scope.window = Some(w);
                }
                other => return Err(ScopeError::UnknownKey(other.chars().take(64).collect())),
            }
        }
        Ok(scope)
    }

    /// Request-level checks: the peer address and the time of day. A source-limited token on a
    /// server that cannot see the peer address is refused.
    pub fn admits(&self, peer: Option<IpAddr>, now_unix_secs: u64) -> Result<(), OutOfScope> {
        if let Some(ranges) = &self.sources {
            match peer {
                Some(ip) if super::cidr::any_contains(ranges, ip) => {}
                _ => return Err(OutOfScope::Source),
            }
        }
        if let Some(w) = &self.window
            && !w.contains(now_unix_secs)
        {
            return Err(OutOfScope::Window);
        }
        Ok(())
    }

    pub fn permits(&self, permission: Permission) -> Result<(), OutOfScope> {
        let granted = !self.permissions_limited
            || match permission {
                Permission::List => self.list || self.call,
                Permission::Call => self.call,
            };
        if granted {
            Ok(())
        } else {
            Err(OutOfScope::Permission(permission))
        }
    }

    /// Whether the target `namespace/name` is inside the scope.
    pub fn allows_target(&self, namespace: &str, name: &str) -> bool {
        match &self.targets {
            None => true,
            Some(globs) => {
                let key = format!("{namespace}/{name}");
                globs.iter().any(|g| g.matches(&key))
            }
        }
    }

    /// The claim value for these restrictions (for minting).
    pub fn claim(
        targets: &[String],
        permissions: &[String],
        source_ranges: &[String],
        window: Option<&str>,
    ) -> Result<Option<Value>, ScopeError> {
        let mut obj = serde_json::Map::new();
        if !targets.is_empty() {
            obj.insert("targets".into(), targets.into());
        }
        if !permissions.is_empty() {
            obj.insert("permissions".into(), permissions.into());
        }
        if !source_ranges.is_empty() {
            obj.insert("sourceRanges".into(), source_ranges.into());
        }
        if let Some(w) = window {
            obj.insert("window".into(), w.into());
        }
        if obj.is_empty() {
            return Ok(None);
        }
        let value = Value::Object(obj);
        // Refuse to mint what the gateway would refuse to accept.
        Self::from_claim(Some(&value))?;
        Ok(Some(value))
    }
}

/// A JSON array of strings, or the scope key is malformed.
fn strings<'a>(value: &'a Value, key: &'static str) -> Result<Vec<&'a str>, ScopeError> {
    let items = value.as_array().ok_or(ScopeError::Malformed(key))?;
    items
        .iter()
        .map(|v| v.as_str().ok_or(ScopeError::Malformed(key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope(v: Value) -> TokenScope {
        TokenScope::from_claim(Some(&v)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn scope_absent_claim_narrows_nothing() {
        let s = TokenScope::from_claim(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.is_unrestricted());
        assert_eq!(s.admits(None, 0), Ok(()));
        assert_eq!(s.permits(Permission::Call), Ok(()));
        assert!(s.allows_target("any", "thing"));
    }

    #[test]
    fn scope_targets_and_permissions_narrow() {
        let s = scope(json!({"targets": ["dev/search*"], "permissions": ["list"]}));
        assert!(s.allows_target("dev", "search"));
        assert!(s.allows_target("dev", "search-eu"));
        assert!(!s.allows_target("dev", "github"));
        assert!(!s.allows_target("prod", "search"));
        assert_eq!(s.permits(Permission::List), Ok(()));
        assert_eq!(
            s.permits(Permission::Call),
            Err(OutOfScope::Permission(Permission::Call))
        );
        let call_only = scope(json!({"permissions": ["call"]}));
        assert_eq!(call_only.permits(Permission::List), Ok(()));
        let none = scope(json!({"permissions": []}));
        assert!(none.permits(Permission::List).is_err());
    }

    #[test]
    fn scope_source_ranges_and_window() {
        let s = scope(json!({"sourceRanges": ["10.0.0.0/8"], "window": "22:00-06:00"}));
        let at = |h: u64, m: u64| 86_400 * 100 + h * 3600 + m * 60;
        assert_eq!(s.admits(ip("10.1.2.3"), at(23, 0)), Ok(()));
        assert_eq!(s.admits(ip("10.1.2.3"), at(5, 59)), Ok(()));
        assert_eq!(s.admits(ip("10.1.2.3"), at(6, 0)), Err(OutOfScope::Window));
        assert_eq!(
            s.admits(ip("192.168.0.1"), at(23, 0)),
            Err(OutOfScope::Source)
        );
        assert_eq!(
            s.admits(None, at(23, 0)),
            Err(OutOfScope::Source),
            "an unknown peer fails a source-limited token"
        );
        let day = scope(json!({"window": "09:00-17:30"}));
        assert!(day.admits(None, at(9, 0)).is_ok());
        assert!(day.admits(None, at(17, 30)).is_err());
        assert!(day.admits(None, at(8, 59)).is_err());
    }

    #[test]
    fn scope_malformed_claims_refuse_the_token() {
        for (bad, err) in [
            (json!("all"), ScopeError::NotAnObject),
            (json!({"targets": "x"}), ScopeError::Malformed("targets")),
            (json!({"targets": [1]}), ScopeError::Malformed("targets")),
            (json!({"targets": ["[a"]}), ScopeError::Malformed("targets")),
            (
                json!({"permissions": ["admin"]}),
                ScopeError::Malformed("permissions"),
            ),
            (
                json!({"sourceRanges": ["10/8"]}),
                ScopeError::Malformed("sourceRanges"),
            ),
            (
                json!({"window": "25:00-01:00"}),
                ScopeError::Malformed("window"),
            ),
            (
                json!({"window": "09:00-09:00"}),
                ScopeError::Malformed("window"),
            ),
            (
                json!({"tenants": ["a"]}),
                ScopeError::UnknownKey("tenants".into()),
            ),
        ] {
            assert_eq!(TokenScope::from_claim(Some(&bad)).err(), Some(err), "{bad}");
        }
    }

    #[test]
    fn scope_methods_map_to_permissions() {
        for m in [
            "tools/call",
            "resources/read",
            "prompts/get",
            "completion/complete",
        ] {
            assert_eq!(Permission::for_method(m), Permission::Call, "{m}");
        }
        for m in [
            "tools/list",
            "resources/templates/list",
            "ping",
            "initialize",
        ] {
            assert_eq!(Permission::for_method(m), Permission::List, "{m}");
        }
    }

    #[test]
    fn scope_minting_refuses_what_would_be_refused() {
        assert_eq!(TokenScope::claim(&[], &[], &[], None), Ok(None));
        assert!(TokenScope::claim(&[], &["write".into()], &[], None).is_err());
        let v = TokenScope::claim(
            &["dev/*".into()],
            &["list".into()],
            &[],
            Some("08:00-18:00"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            Some(json!({"targets": ["dev/*"], "permissions": ["list"], "window": "08:00-18:00"}))
        );
    }
}
