//! `auto` transport detection: Streamable HTTP `initialize` first, legacy SSE when that POST fails
//! with a 4xx (the spec's backwards-compatibility rule); the answer is remembered per (target, url).

use std::collections::HashMap;
use std::sync::Mutex;

use reflow_crds::snapshot::CompiledTarget;
use tracing::debug;

use super::link::{Link, Transport};
use super::{InitParams, InjectedHeaders, SseError, UpstreamClient, UpstreamError};

/// Largest number of remembered targets; beyond it the cache starts over (it is only a hint).
const MAX_ENTRIES: usize = 4096;

/// Detected transports keyed by (`namespace/name`, url), so a changed url is detected afresh.
#[derive(Default)]
pub(crate) struct Detected(Mutex<HashMap<(String, String), Transport>>);

impl Detected {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Transport>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, target: &str, url: &str) -> Option<Transport> {
        self.lock()
            .get(&(target.to_owned(), url.to_owned()))
            .copied()
    }

    fn set(&self, target: &str, url: &str, transport: Transport) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert((target.to_owned(), url.to_owned()), transport);
    }

    fn forget(&self, target: &str, url: &str) {
        self.lock().remove(&(target.to_owned(), url.to_owned()));
    }
}

/// A 4xx from the Streamable HTTP `initialize` POST means "not this transport", except for
/// 401/403 which are about credentials and are reported as they are.
fn falls_back(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Status(s) if (400..500).contains(s) && *s != 401 && *s != 403)
}

/// The remembered transport no longer answers like it (the upstream changed): detect again.
fn wrong_transport(e: &UpstreamError) -> bool {
    falls_back(e) || matches!(e, UpstreamError::Sse(SseError::NotAStream(_)))
}

impl UpstreamClient {
    pub(super) async fn connect_auto(
        &self,
        target: &CompiledTarget,
        url: &str,
        headers: &InjectedHeaders,
        init: &InitParams,
    ) -> Result<Link, UpstreamError> {
        let key = target.key();
        let remembered = match self.detected.get(&key, url) {
            Some(Transport::StreamableHttp) => Some(
                self.initialize(target, headers, init)
                    .await
                    .map(Link::streamable),
            ),
            Some(Transport::Sse) => Some(self.connect_sse(target, url, headers, init).await),
            None => None,
        };
        match remembered {
            Some(Err(e)) if wrong_transport(&e) => {
                debug!(error = %e, "remembered transport failed; detecting again");
                self.detected.forget(&key, url);
            }
            Some(done) => return done,
            None => {}
        }
        let link = match self.initialize(target, headers, init).await {
            Ok(state) => Link::streamable(state),
            Err(e) if falls_back(&e) => {
                debug!(error = %e, "Streamable HTTP refused; trying legacy SSE");
                self.connect_sse(target, url, headers, init).await?
            }
            Err(e) => return Err(e),
        };
        if let Some(t) = link.transport() {
            self.detected.set(&key, url, t);
        }
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_auth_client_errors_fall_back() {
        for s in [400, 404, 405, 406, 415] {
            assert!(falls_back(&UpstreamError::Status(s)), "{s}");
        }
        for e in [
            UpstreamError::Status(401),
            UpstreamError::Status(403),
            UpstreamError::Status(500),
            UpstreamError::Connect,
            UpstreamError::Protocol("x".into()),
        ] {
            assert!(!falls_back(&e), "{e}");
        }
    }

    #[test]
    fn detection_is_remembered_per_target_and_url() {
        let d = Detected::default();
        d.set("t/a", "http://x/sse", Transport::Sse);
        assert_eq!(d.get("t/a", "http://x/sse"), Some(Transport::Sse));
        assert_eq!(d.get("t/a", "http://y/sse"), None);
        assert_eq!(d.get("t/b", "http://x/sse"), None);
        d.forget("t/a", "http://x/sse");
        assert_eq!(d.get("t/a", "http://x/sse"), None);
    }
}
