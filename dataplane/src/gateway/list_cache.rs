//! Cached answers of stateless upstreams, as their `ttlMs` and `cacheScope` allow: a `public`
//! answer serves every caller of the Target, a `private` one only the caller it was fetched for.

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

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    target: Arc<str>,
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
        if !crate::era::is_cacheable(method) {
            return None;
        }
        let request = request_digest(method, params);
        let now = Instant::now();
        let map = self.lock();
        [Some(*owner), None].into_iter().find_map(|o| {
            let key = Key {
                target: target.clone(),
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
        if !crate::era::is_cacheable(method) {
            return;
        }
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
