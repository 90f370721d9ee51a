//! Cached answers of stateless upstreams, as their `ttlMs` and `cacheScope` allow: a `public`
//! answer serves every caller of the Target, a `private` one only the caller it was fetched for.
//! What an upstream announces as changed (`notifications/*/list_changed`,
//! `notifications/resources/updated`) is dropped when the announcement arrives, whatever its
//! TTL said, and a new snapshot (a Target's URL or credentials may have changed) empties it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reflow_crds::Fingerprint;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Entries kept; a full cache starts over.
const MAX_ENTRIES: usize = 4096;
/// The longest an answer is kept, whatever the upstream allows.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// The methods whose answers are kept ([`crate::era::is_cacheable`]), as static names.
const CACHED: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

fn cached_method(method: &str) -> Option<&'static str> {
    CACHED
        .into_iter()
        .find(|m| *m == method && crate::era::is_cacheable(m))
}

/// The cached methods an upstream notification makes stale.
fn staled_by(notification: &str) -> &'static [&'static str] {
    match notification {
        "notifications/tools/list_changed" => &["tools/list"],
        "notifications/prompts/list_changed" => &["prompts/list"],
        "notifications/resources/list_changed" => &["resources/list", "resources/templates/list"],
        "notifications/resources/updated" => &["resources/read"],
        _ => &[],
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    target: Arc<str>,
    method: &'static str,
    /// Method and params (cursor, URI), `_meta` excluded.
    request: [u8; 32],
    /// `None` for a public answer.
    owner: Option<Fingerprint>,
}

/// Each answer and when it stops being fresh.
type Entries = HashMap<Key, (Instant, Map<String, Value>)>;

#[derive(Default)]
pub(crate) struct ListCache(Mutex<Entries>);

fn request_digest(method: &str, params: &Value) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    if let Value::Object(p) = params {
        // Keys in order (serde_json's map is sorted); `_meta` only says who asks.
        for (k, v) in p.iter().filter(|(k, _)| *k != "_meta") {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.to_string().as_bytes());
            h.update([0]);
        }
    }
    h.finalize().into()
}

impl ListCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh answer for `owner` (its private one first, then a public one), with `ttlMs`
    /// counting what is left.
    pub(crate) fn get(
        &self,
        target: &Arc<str>,
        method: &str,
        params: &Value,
        owner: &Fingerprint,
    ) -> Option<Map<String, Value>> {
        let method = cached_method(method)?;
        let request = request_digest(method, params);
        let now = Instant::now();
        let map = self.lock();
        [Some(*owner), None].into_iter().find_map(|o| {
            let key = Key {
                target: target.clone(),
                method,
                request,
                owner: o,
            };
            let (until, reply) = map.get(&key)?;
            let left = until.checked_duration_since(now)?;
            let mut reply = reply.clone();
            if let Some(Value::Object(r)) = reply.get_mut("result") {
                r.insert(
                    "ttlMs".into(),
                    json!(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                );
            }
            Some(reply)
        })
    }

    /// Keeps `reply` if its result allows caching (`ttlMs` > 0).
    pub(crate) fn put(
        &self,
        target: &Arc<str>,
        method: &str,
        params: &Value,
        owner: &Fingerprint,
        reply: &Map<String, Value>,
    ) {
        let Some(method) = cached_method(method) else {
            return;
        };
        let Some(result) = reply.get("result") else {
            return;
        };
        let ttl = result.get("ttlMs").and_then(Value::as_u64).unwrap_or(0);
        if ttl == 0 {
            return;
        }
        // Anything but an explicit "public" is private: never shared by mistake.
        let public = result.get("cacheScope").and_then(Value::as_str) == Some("public");
        let key = Key {
            target: target.clone(),
            method,
            request: request_digest(method, params),
            owner: (!public).then_some(*owner),
        };
        let until = Instant::now() + Duration::from_millis(ttl).min(MAX_TTL);
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, (until, reply.clone()));
    }

    /// Drops what `notification` from `target`'s upstream says has changed (every caller's
    /// copy: an upstream announces a change once, on whichever stream it has).
    pub(crate) fn forget_changed(&self, target: &str, notification: &Map<String, Value>) {
        let method = notification
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("");
        let stale = staled_by(method);
        if stale.is_empty() {
            return;
        }
        self.lock()
            .retain(|k, _| !(&*k.target == target && stale.contains(&k.method)));
    }

    /// Drops everything (a new snapshot).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(user: &str) -> Fingerprint {
        reflow_crds::Identity::new(user, Vec::<String>::new(), Vec::<String>::new()).fingerprint()
    }

    fn reply(scope: &str, ttl: u64, tag: &str) -> Map<String, Value> {
        json!({"result": {"tools": [{"name": tag}], "ttlMs": ttl, "cacheScope": scope}})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_private_answer_is_never_served_to_another_caller() {
        let cache = ListCache::default();
        let t: Arc<str> = Arc::from("ns/t");
        let p = json!({"_meta": {"x": 1}});
        cache.put(
            &t,
            "tools/list",
            &p,
            &fp("alice"),
            &reply("private", 60_000, "a"),
        );
        assert!(cache.get(&t, "tools/list", &p, &fp("bob")).is_none());
        let hit = cache
            .get(&t, "tools/list", &json!({}), &fp("alice"))
            .unwrap();
        assert_eq!(hit["result"]["tools"][0]["name"], "a");
        assert!(hit["result"]["ttlMs"].as_u64().unwrap() <= 60_000);
    }

    #[test]
    fn a_public_answer_serves_everyone_and_unmarked_or_zero_ttl_ones_are_not_kept() {
        let cache = ListCache::default();
        let t: Arc<str> = Arc::from("ns/t");
        let p = json!({});
        cache.put(
            &t,
            "tools/list",
            &p,
            &fp("alice"),
            &reply("public", 60_000, "pub"),
        );
        assert!(cache.get(&t, "tools/list", &p, &fp("bob")).is_some());
        assert!(cache.get(&t, "prompts/list", &p, &fp("bob")).is_none());
        let other: Arc<str> = Arc::from("ns/other");
        cache.put(
            &other,
            "tools/list",
            &p,
            &fp("alice"),
            &reply("public", 0, "zero"),
        );
        assert!(cache.get(&other, "tools/list", &p, &fp("alice")).is_none());
        let mut unmarked = reply("public", 60_000, "u");
        if let Some(Value::Object(r)) = unmarked.get_mut("result") {
            r.remove("cacheScope");
        }
        cache.put(&other, "tools/list", &p, &fp("alice"), &unmarked);
        assert!(cache.get(&other, "tools/list", &p, &fp("bob")).is_none());
        assert!(cache.get(&other, "tools/list", &p, &fp("alice")).is_some());
        assert!(cache.get(&t, "tools/call", &p, &fp("alice")).is_none());
    }

    fn note(method: &str) -> Map<String, Value> {
        json!({"jsonrpc": "2.0", "method": method})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn an_announced_change_drops_that_list_of_that_target_for_every_caller() {
        let cache = ListCache::default();
        let (t, other): (Arc<str>, Arc<str>) = (Arc::from("ns/t"), Arc::from("ns/other"));
        let p = json!({});
        for (target, method, who) in [
            (&t, "tools/list", "alice"),
            (&t, "tools/list", "bob"),
            (&t, "prompts/list", "alice"),
            (&t, "resources/list", "alice"),
            (&t, "resources/templates/list", "alice"),
            (&other, "tools/list", "alice"),
        ] {
            cache.put(target, method, &p, &fp(who), &reply("private", 60_000, "x"));
        }
        let cached = |target: &Arc<str>, method: &str, who: &str| {
            cache.get(target, method, &p, &fp(who)).is_some()
        };
        cache.forget_changed("ns/t", &note("notifications/message"));
        assert!(cached(&t, "tools/list", "alice"));
        cache.forget_changed("ns/t", &note("notifications/tools/list_changed"));
        assert!(!cached(&t, "tools/list", "alice") && !cached(&t, "tools/list", "bob"));
        assert!(cached(&t, "prompts/list", "alice"), "other lists stay");
        assert!(cached(&other, "tools/list", "alice"), "other targets stay");
        cache.forget_changed("ns/t", &note("notifications/resources/list_changed"));
        assert!(!cached(&t, "resources/list", "alice"));
        assert!(!cached(&t, "resources/templates/list", "alice"));
        assert!(cached(&t, "prompts/list", "alice"));
        cache.clear();
        assert!(!cached(&t, "prompts/list", "alice") && !cached(&other, "tools/list", "alice"));
    }

    #[test]
    fn a_resource_update_drops_the_targets_cached_reads() {
        let cache = ListCache::default();
        let t: Arc<str> = Arc::from("ns/t");
        let read = json!({"uri": "test://a"});
        cache.put(
            &t,
            "resources/read",
            &read,
            &fp("a"),
            &reply("public", 60_000, "r"),
        );
        cache.put(
            &t,
            "resources/list",
            &json!({}),
            &fp("a"),
            &reply("public", 60_000, "l"),
        );
        let mut updated = note("notifications/resources/updated");
        updated.insert("params".into(), json!({"uri": "test://a"}));
        cache.forget_changed("ns/t", &updated);
        assert!(cache.get(&t, "resources/read", &read, &fp("a")).is_none());
        assert!(
            cache
                .get(&t, "resources/list", &json!({}), &fp("a"))
                .is_some()
        );
    }

    #[test]
    fn different_cursors_are_different_answers() {
        let cache = ListCache::default();
        let t: Arc<str> = Arc::from("ns/t");
        cache.put(
            &t,
            "tools/list",
            &json!({"cursor": "1"}),
            &fp("a"),
            &reply("public", 60_000, "p1"),
        );
        assert!(
            cache
                .get(&t, "tools/list", &json!({"cursor": "2"}), &fp("a"))
                .is_none()
        );
        assert!(
            cache
                .get(&t, "tools/list", &json!({"cursor": "1"}), &fp("a"))
                .is_some()
        );
    }
}
