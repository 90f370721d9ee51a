//! `kubernetes` Targets: the caller's MCPInstance, asked of the controller's instance API (ensure,
//! polled with backoff while it starts, bounded), cached per instance with its endpoint and bridge
//! token, and its use reported to the controller (throttled, in the background).
//!
//! The dataplane holds no Kubernetes credentials: the controller creates the instance and hands
//! back the per-instance bridge token, which lives only in [`Instance`] (never logged or shown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reflow_crds::instance_wire::{
    ENSURE_PATH, EnsureRequest, EnsureResponse, USED_PATH, UsedRequest,
};
use reflow_crds::snapshot::PodTransport;
use reflow_crds::snapshot::{CompiledTarget, Upstream};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{Instrument, debug, info, warn};

use super::stdio::{Boundary, IsolationKey};
use crate::session::UpstreamState;

/// Longest controller message passed on to a client.
const MAX_MESSAGE: usize = 300;
/// Cached instances (and use timestamps) kept before unused entries are dropped; a dropped one
/// costs one ensure, which the controller answers at once for a running instance.
const MAX_CACHED: usize = 10_000;

/// `gateway.instances` in the config file (camelCase keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct InstancesConfig {
    /// Longest a call waits for its instance (the pod starting included) before failing.
    pub ready_timeout_ms: u64,
    /// Longest one request to the controller's instance API may take.
    pub request_timeout_ms: u64,
    /// First wait between ensure calls while the instance starts; doubles up to `poll_max_ms`.
    pub poll_initial_ms: u64,
    pub poll_max_ms: u64,
    /// Use of one instance is reported to the controller at most this often.
    pub used_interval_ms: u64,
    /// Longest a list (tools/list, …) waits for a `kubernetes` Target whose instance is not
    /// ready: past it the list answers with the other Targets' items (issue #18 item 3).
    pub list_wait_ms: u64,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            ready_timeout_ms: 120_000,
            request_timeout_ms: 5_000,
            poll_initial_ms: 250,
            poll_max_ms: 5_000,
            used_interval_ms: 30_000,
            list_wait_ms: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "kubernetes Targets need the controller: this gateway runs from a manifests folder (start it with --controller)"
    )]
    NoController,
    #[error("the controller refused the instance (HTTP {status}){message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach the controller's instance API: {0}")]
    Unreachable(String),
    #[error("the instance did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("the controller sent an invalid answer: {0}")]
    Protocol(String),
}

impl InstanceError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoController => "instance_no_controller",
            Self::Refused { .. } => "instance_refused",
            Self::Unreachable(_) => "instance_unreachable",
            Self::NotReady(_) => "instance_not_ready",
            Self::Protocol(_) => "instance_protocol",
        }
    }
}

/// Where the controller's API is and how to authenticate to it (controller mode only).
#[derive(Clone)]
pub struct ControllerApi {
    /// Base URL, e.g. `http://reflow-controller:9090`.
    pub url: String,
    pub token: SecretString,
}

/// One running instance as this dataplane reaches it.
pub struct Instance {
    pub name: String,
    namespace: String,
    /// The Target as a Streamable HTTP upstream at the instance's endpoint (timeouts and
    /// everything else kept), so the ordinary upstream client serves it.
    pub target: CompiledTarget,
    /// The bridge token; sent only to bridges (`pod.transport: stdio`), which demand it.
    token: Option<SecretString>,
    /// Shared by every session served by this instance: the bridge keeps no sessions.
    pub state: AsyncMutex<UpstreamState>,
}

impl Instance {
    pub fn bridge_token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose_secret())
    }
}

type Cell = Arc<AsyncMutex<Option<Arc<Instance>>>>;

pub struct Instances {
    config: InstancesConfig,
    api: OnceLock<ControllerApi>,
    http: reqwest::Client,
    /// By `namespace/target/isolationKey`; one ensure in flight per key.
    cells: Mutex<HashMap<String, Cell>>,
    /// When each instance's use was last reported.
    reported: Arc<Mutex<HashMap<String, Instant>>>,
}

/// The isolation key as the controller sees it: `<boundary digest>-<credential fingerprint>`,
/// both 16 hex digits. The fingerprint is spelled out so one instance name can never be reached
/// by callers whose resolved credentials differ (DESIGN §3 semantic 6); the boundary part keeps
/// users, group sets, role sets (and sessions of stateful Targets) apart.
pub fn instance_key(key: &IsolationKey) -> String {
    let mut h = Sha256::new();
    let mut put = |tag: u8, s: &str| {
        h.update([tag]);
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    put(b't', &key.target);
    match &key.boundary {
        Boundary::Shared => put(b's', ""),
        Boundary::User(u) => put(b'u', u),
        Boundary::Groups(gs) => {
            put(b'G', "");
            for g in gs.iter() {
                put(b'g', g);
            }
        }
        Boundary::Roles(rs) => {
            put(b'R', "");
            for r in rs.iter() {
                put(b'r', r);
            }
        }
    }
    if let Some(session) = &key.session {
        put(b'x', session);
    }
    let boundary = hex::encode(h.finalize());
    format!("{}-{}", &boundary[..16], &key.credentials.to_hex()[..16])
}

impl Instances {
    pub fn new(config: InstancesConfig) -> Self {
        // reqwest panics when building a client with no rustls provider; the dataplane uses
        // ring everywhere, and installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .unwrap_or_default();
        Self {
            config,
            api: OnceLock::new(),
            http,
            cells: Mutex::new(HashMap::new()),
            reported: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Serves `kubernetes` Targets through this controller; only the first call takes effect.
    pub fn use_controller(&self, api: ControllerApi) -> bool {
        self.api.set(api).is_ok()
    }

    fn cell(&self, key: &str) -> Cell {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if cells.len() >= MAX_CACHED && !cells.contains_key(key) {
            // Only the map holds an unused cell: no call is using or ensuring it.
            cells.retain(|_, c| Arc::strong_count(c) > 1);
        }
        cells.entry(key.to_owned()).or_default().clone()
    }

    /// The running instance for `req`, from the cache or ensured now; the whole wait (a slower
    /// concurrent ensure for the same key included) is bounded by `readyTimeoutMs`.
    pub async fn ready(
        &self,
        target: &CompiledTarget,
        req: &EnsureRequest,
    ) -> Result<Arc<Instance>, InstanceError> {
        let api = self.api.get().ok_or(InstanceError::NoController)?;
        let limit = Duration::from_millis(self.config.ready_timeout_ms);
        let deadline = Instant::now() + limit;
        let key = format!("{}/{}/{}", req.namespace, req.target, req.isolation_key);
        let cell = self.cell(&key);
        let work = async {
            let mut slot = cell.lock().await;
            if let Some(inst) = slot.as_ref() {
                return Ok(inst.clone());
            }
            let answer = self.ensure(api, req, deadline).await?;
            let inst = Arc::new(instance(target, req, answer)?);
            info!(instance = %inst.name, namespace = %req.namespace, "instance ready");
            *slot = Some(inst.clone());
            Ok(inst)
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| InstanceError::NotReady(limit))?
    }

    /// The cached instance for `req`, if there is one; never ensures (releasing what a session
    /// held must not start a pod).
    pub async fn cached(&self, req: &EnsureRequest) -> Option<Arc<Instance>> {
        let key = format!("{}/{}/{}", req.namespace, req.target, req.isolation_key);
        self.cell(&key).lock().await.clone()
    }

    /// Drops a cached instance that stopped answering (a replaced pod, a new token), so the next
    /// call ensures it again. A newer entry for the same key is left alone.
    pub async fn forget(&self, req: &EnsureRequest, stale: &Arc<Instance>) {
        let key = format!("{}/{}/{}", req.namespace, req.target, req.isolation_key);
        let cell = self.cell(&key);
        let mut slot = cell.lock().await;
        if slot.as_ref().is_some_and(|i| Arc::ptr_eq(i, stale)) {
            *slot = None;
        }
    }

    /// Tells the controller the instance is in use, at most every `usedIntervalMs`, off the
    /// request path (the call never waits for it).
    pub fn report_used(&self, inst: &Instance) {
        let Some(api) = self.api.get() else { return };
        let id = format!("{}/{}", inst.namespace, inst.name);
        let interval = Duration::from_millis(self.config.used_interval_ms);
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if reported
                .get(&id)
                .is_some_and(|last| now.duration_since(*last) < interval)
            {
                return;
            }
            if reported.len() >= MAX_CACHED {
                reported.retain(|_, last| now.duration_since(*last) < interval);
            }
            reported.insert(id.clone(), now);
        }
        let req = self
            .http
            .post(format!("{}{USED_PATH}", api.url.trim_end_matches('/')))
            .bearer_auth(api.token.expose_secret())
            .timeout(Duration::from_millis(self.config.request_timeout_ms))
            .json(&UsedRequest {
                namespace: inst.namespace.clone(),
                name: inst.name.clone(),
            });
        let reported = self.reported.clone();
        tokio::spawn(
            async move {
                let failed = match req.send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                    Err(e) => Some(e.without_url().to_string()),
                };
                if let Some(error) = failed {
                    warn!(instance = %id, %error, "cannot report instance use");
                    // Report again on the next call rather than a whole interval later.
                    reported
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            }
            .in_current_span(),
        );
    }

    /// Calls ensure until the instance runs (200), waiting with doubling backoff on 202.
    async fn ensure(
        &self,
        api: &ControllerApi,
        req: &EnsureRequest,
        deadline: Instant,
    ) -> Result<EnsureResponse, InstanceError> {
        let url = format!("{}{ENSURE_PATH}", api.url.trim_end_matches('/'));
        let per_request = Duration::from_millis(self.config.request_timeout_ms);
        let mut wait = Duration::from_millis(self.config.poll_initial_ms.max(1));
        let max_wait = Duration::from_millis(self.config.poll_max_ms.max(1));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let total = Duration::from_millis(self.config.ready_timeout_ms);
                return Err(InstanceError::NotReady(total));
            }
            let resp = self
                .http
                .post(&url)
                .bearer_auth(api.token.expose_secret())
                .timeout(per_request.min(left))
                .json(req)
                .send()
                .await
                .map_err(|e| {
                    InstanceError::Unreachable(if e.is_timeout() {
                        format!("no answer within {:?}", per_request.min(left))
                    } else {
                        e.without_url().to_string()
                    })
                })?;
            let status = resp.status();
            if status == StatusCode::ACCEPTED {
                debug!(instance_key = %req.isolation_key, "instance starting");
                if Instant::now() + wait >= deadline {
                    let total = Duration::from_millis(self.config.ready_timeout_ms);
                    return Err(InstanceError::NotReady(total));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(max_wait);
                continue;
            }
            if status == StatusCode::OK {
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| InstanceError::Unreachable(e.without_url().to_string()))?;
                return serde_json::from_slice(&bytes)
                    .map_err(|e| InstanceError::Protocol(e.to_string()));
            }
            // The controller's own refusals explain themselves (unknown Target, fingerprint
            // mismatch, folder mode); 500 and 502 may carry Kubernetes API internals, so those
            // stay in this log and the client gets the status only.
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.trim().chars().take(MAX_MESSAGE).collect();
            let internal = matches!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY
            );
            if internal {
                warn!(status = status.as_u16(), error = %text, "the controller could not ensure the instance");
            }
            let message = if internal || text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            };
            return Err(InstanceError::Refused {
                status: status.as_u16(),
                message,
            });
        }
    }
}

/// Checks a 200 answer and turns it into a reachable instance.
fn instance(
    target: &CompiledTarget,
    req: &EnsureRequest,
    answer: EnsureResponse,
) -> Result<Instance, InstanceError> {
    let Upstream::Kubernetes { pod, .. } = &target.upstream else {
        return Err(InstanceError::Protocol(
            "the Target is not a kubernetes Target".into(),
        ));
    };
    let endpoint = answer
        .endpoint
        .ok_or_else(|| InstanceError::Protocol("a ready instance needs an endpoint".into()))?;
    let token = match pod.transport {
        PodTransport::Stdio => Some(SecretString::from(
            answer
                .token
                .ok_or_else(|| InstanceError::Protocol("a ready instance needs a token".into()))?
                .expose()
                .to_owned(),
        )),
        PodTransport::StreamableHttp => None,
    };
    let mut reached = target.clone();
    reached.upstream = Upstream::StreamableHttp {
        url: endpoint.into(),
    };
    Ok(Instance {
        name: answer.name,
        namespace: req.namespace.clone(),
        target: reached,
        token,
        state: AsyncMutex::new(UpstreamState::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::Fingerprint;

    fn key(boundary: Boundary, fp: u8, session: Option<&str>) -> IsolationKey {
        IsolationKey {
            target: Arc::from("team/gh"),
            spec: [0; 32],
            boundary,
            credentials: Fingerprint([fp; 32]),
            session: session.map(Arc::from),
        }
    }

    fn valid(k: &str) -> bool {
        k.len() <= 40
            && k.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    }

    #[test]
    fn instance_keys_separate_boundaries_and_credentials_and_suit_the_controller() {
        let users = |u: &str| Boundary::User(Arc::from(u));
        let groups = |gs: &[&str]| Boundary::Groups(gs.iter().map(|g| Arc::from(*g)).collect());
        let alice = instance_key(&key(users("alice"), 1, None));
        assert!(valid(&alice), "{alice}");
        assert_eq!(alice, instance_key(&key(users("alice"), 1, None)));
        assert!(alice.ends_with(&Fingerprint([1; 32]).to_hex()[..16]));
        let others = [
            instance_key(&key(users("bob"), 1, None)),
            instance_key(&key(users("alice"), 2, None)),
            instance_key(&key(users("alice"), 1, Some("s1"))),
            instance_key(&key(Boundary::Shared, 1, None)),
            instance_key(&key(groups(&["alice"]), 1, None)),
            instance_key(&key(groups(&["a", "b"]), 1, None)),
            instance_key(&key(groups(&["ab"]), 1, None)),
        ];
        for (i, k) in others.iter().enumerate() {
            assert_ne!(*k, alice, "case {i}");
            assert!(valid(k), "{k}");
        }
        assert_ne!(
            others[5], others[6],
            "group sets do not collide by concatenation"
        );
    }
}
