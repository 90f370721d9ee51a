//! The process pool: which child serves a call (its isolation key), process limits, restart
//! backoff after a crash, and the sweeper that stops idle and over-age children.
//!
//! Isolation key = Target + its command/args/env + boundary + credential fingerprint
//! (+ session id for a stateful Target). Boundary: `shared` → one for everyone; `perUser` → the
//! user name; `perGroup` → the caller's whole sorted set of groups; `perRole` → the whole sorted
//! set of roles. Whatever the boundary, two callers whose resolved credentials differ never share
//! a child, because the fingerprint of those credentials is part of the key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reflow_crds::snapshot::Isolation;
use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials, StdioSandbox, Upstream};
use reflow_crds::{Fingerprint, Identity, SealingKey};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use super::backoff::{HEALTHY_UPTIME, RestartBackoff};
use super::env::ChildEnv;
use super::process::{ChildProcess, ChildSpec, Unrouted};
use super::{ChildSandbox, NamespaceMode, SandboxMode, StdioConfig, StdioError, sandbox};
use crate::upstream::upcall;
use crate::upstream::{CallHooks, Inbound, ToSessions, Unprompted};

/// Who may share a child, before credentials are considered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Boundary {
    Shared,
    Roles(Arc<[Arc<str>]>),
    Groups(Arc<[Arc<str>]>),
    User(Arc<str>),
}

/// Everything that must be equal for two calls to share one child.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IsolationKey {
    pub target: Arc<str>,
    /// Digest of command, args and the Target's env: a changed spec gets a new child.
    pub spec: [u8; 32],
    pub boundary: Boundary,
    pub credentials: Fingerprint,
    /// Stateful Targets: the gateway session the child belongs to.
    pub session: Option<Arc<str>>,
}

impl IsolationKey {
    pub fn new(
        target: &CompiledTarget,
        target_key: &Arc<str>,
        identity: &Identity,
        creds: &ResolvedCredentials,
        session: &str,
    ) -> Self {
        let boundary = match target.isolation {
            Isolation::Shared => Boundary::Shared,
            Isolation::PerRole => Boundary::Roles(identity.roles.clone()),
            Isolation::PerGroup => Boundary::Groups(identity.groups.clone()),
            Isolation::PerUser => Boundary::User(identity.user.clone()),
        };
        Self {
            target: target_key.clone(),
            spec: spec_digest(&target.upstream),
            boundary,
            credentials: creds.fingerprint,
            session: target.stateful.then(|| Arc::from(session)),
        }
    }
}

fn spec_digest(upstream: &Upstream) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    if let Upstream::Stdio {
        command,
        args,
        env,
        sandbox,
    } = upstream
    {
        put(command);
        put(&format!("{sandbox:?}"));
        for a in args {
            put(a);
        }
        for (k, v) in env {
            put(k);
            put(v);
        }
    }
    h.finalize().into()
}

/// Counters for `/metrics` (monotonic, except `live`).
#[derive(Debug, Default)]
pub struct StdioStats {
    pub live: AtomicU64,
    pub spawned: AtomicU64,
    pub crashed: AtomicU64,
    pub limit_refusals: AtomicU64,
    pub unrouted: AtomicU64,
    pub stopped_idle: AtomicU64,
    pub stopped_max_age: AtomicU64,
    /// Children spawned without namespaces because `auto` found the kernel does not allow them.
    pub unnamespaced: AtomicU64,
}

struct SlotState {
    child: Option<Arc<ChildProcess>>,
    idle: Duration,
    max_age: Option<Duration>,
    restarts: RestartBackoff,
    /// Taken out of the pool by the sweeper: look the key up again.
    removed: bool,
}

struct Slot {
    state: AsyncMutex<SlotState>,
}

impl Slot {
    fn new(restarts: RestartBackoff) -> Self {
        Self {
            state: AsyncMutex::new(SlotState {
                child: None,
                idle: Duration::ZERO,
                max_age: None,
                restarts,
                removed: false,
            }),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_target: HashMap<Arc<str>, usize>,
}

pub struct StdioPool {
    config: StdioConfig,
    /// Where children send what belongs to no call (a stateful Target's child: its session;
    /// a shared child: resource updates for its subscribers).
    to_sessions: ToSessions,
    home_root: PathBuf,
    slots: Mutex<HashMap<IsolationKey, Arc<Slot>>>,
    counts: Arc<Mutex<Counts>>,
    stats: Arc<StdioStats>,
    next_instance: AtomicU64,
}

/// How a child is started and initialized for one caller.
pub struct Start<'a> {
    pub target: &'a CompiledTarget,
    pub creds: &'a ResolvedCredentials,
    pub key: &'a SealingKey,
    pub protocol_version: &'a str,
    /// The gateway session calling: the child's messages about its calls go back to it.
    pub session: Option<&'a str>,
}

impl StdioPool {
    /// A pool, with its sweeper running on the current runtime (if any) for as long as the
    /// pool lives.
    pub fn new(config: StdioConfig, to_sessions: ToSessions) -> Arc<Self> {
        let pool = Arc::new(Self {
            home_root: config.home_root(),
            config,
            to_sessions,
            slots: Mutex::default(),
            counts: Arc::default(),
            stats: Arc::default(),
            next_instance: AtomicU64::new(1),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            let every = Duration::from_millis(pool.config.sweep_ms.max(10));
            rt.spawn(sweep_loop(weak, every));
        }
        pool
    }

    /// The sandbox of a new child, or `None` (said loudly) when the Target or the gateway
    /// config turned it off.
    fn sandbox_for(&self, target: &StdioSandbox, label: &str) -> Option<ChildSandbox> {
        if !target.enforce {
            warn!(child = %label, "STDIO server runs UNSANDBOXED: its Target sets sandbox.mode off");
            return None;
        }
        if self.config.sandbox == SandboxMode::Off {
            warn!(child = %label, "STDIO server runs UNSANDBOXED: gateway.stdio.sandbox is off");
            return None;
        }
        let mut namespaces = target.namespaces.unwrap_or(self.config.namespaces);
        if namespaces == NamespaceMode::Auto {
            namespaces = match sandbox::namespaces_available() {
                Ok(()) => NamespaceMode::Required,
                Err(why) => {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        warn!(reason = %why, "STDIO children run without their own PID and mount namespaces (namespaces: auto); Landlock, seccomp and rlimits still apply");
                    });
                    self.stats.unnamespaced.fetch_add(1, Ordering::Relaxed);
                    NamespaceMode::Off
                }
            };
        }
        Some(ChildSandbox {
            settings: target.clone(),
            protected: self.config.protected.clone(),
            namespaces,
        })
    }

    pub fn config(&self) -> &StdioConfig {
        &self.config
    }

    /// A message of a child that nobody took: counted, then refused (a request) or dropped.
    pub fn drop_unrouted(&self, inbound: Inbound) {
        drop_unrouted(&self.stats, inbound);
    }

    pub fn stats(&self) -> &StdioStats {
        &self.stats
    }

    /// Live children (spawned and not yet exited).
    pub fn live(&self) -> usize {
        self.lock_counts().total
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<IsolationKey, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request to the child for `key`, starting it (once) if needed.
    pub async fn call(
        &self,
        key: &IsolationKey,
        start: &Start<'_>,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, StdioError> {
        let child = self.acquire(key, start).await?;
        let timeout = Duration::from_millis(u64::from(start.target.timeouts.request_ms));
        child
            .request_with(method, params, timeout, hooks, start.session)
            .await
    }

    /// The live child for `key`; spawns and initializes one if there is none.
    pub async fn acquire(
        &self,
        key: &IsolationKey,
        start: &Start<'_>,
    ) -> Result<Arc<ChildProcess>, StdioError> {
        loop {
            let slot = self
                .lock_slots()
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Slot::new(self.config.backoff())))
                .clone();
            let mut st = slot.state.lock().await;
            if st.removed {
                continue;
            }
            if let Some(child) = st.child.clone() {
                if child.is_alive() {
                    // Marked used now, so the sweeper does not take it before the request lands.
                    child.touch();
                    return Ok(child);
                }
                st.restarts.child_gone(&child);
                st.child = None;
            }
            st.restarts.wait().await?;
            let child = match self.start(key, start).await {
                Ok(c) => c,
                Err(e) => {
                    if !matches!(e, StdioError::Limit { .. }) {
                        st.restarts.failed();
                    }
                    return Err(e);
                }
            };
            st.idle = Duration::from_secs(u64::from(start.target.lifetimes.idle_seconds));
            st.max_age = start
                .target
                .lifetimes
                .max_seconds
                .map(|s| Duration::from_secs(u64::from(s)));
            st.child = Some(child.clone());
            return Ok(child);
        }
    }

    /// Reserves a process slot, spawns the child and initializes it.
    async fn start(
        &self,
        key: &IsolationKey,
        start: &Start<'_>,
    ) -> Result<Arc<ChildProcess>, StdioError> {
        let Upstream::Stdio {
            command,
            args,
            env,
            sandbox,
        } = &start.target.upstream
        else {
            return Err(StdioError::Spawn("the target is not a stdio target".into()));
        };
        self.reserve(&key.target)?;
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let home = self.home_root.join(format!("{instance}"));
        let child_env = match ChildEnv::for_target(&home, env, start.creds, start.key) {
            Ok(e) => e,
            Err(e) => {
                self.release(&key.target);
                return Err(e.into());
            }
        };
        let counts = Arc::downgrade(&self.counts);
        let stats = Arc::downgrade(&self.stats);
        let target = key.target.clone();
        let on_exit = Box::new(move |expected: bool| {
            if let Some(c) = counts.upgrade() {
                release_in(&c, &target);
            }
            if let Some(s) = stats.upgrade() {
                s.live.fetch_sub(1, Ordering::Relaxed);
                if !expected {
                    s.crashed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let unrouted_stats = Arc::downgrade(&self.stats);
        let to_sessions = self.to_sessions.clone();
        // Only a stateful Target's child belongs to one session; a shared one's stray
        // messages have no owner, unless the gateway knows who asked for them.
        let owner = key.session.clone();
        let from = key.target.clone();
        let label = format!("{}#{instance}", key.target);
        let child_label = label.clone();
        let unrouted: Unrouted = Arc::new(move |inbound: Inbound| {
            let message = match &owner {
                Some(session) => Unprompted::Session {
                    session: session.to_string(),
                    target: from.clone(),
                    inbound,
                },
                None => Unprompted::Shared {
                    child: child_label.clone(),
                    target: from.clone(),
                    inbound,
                },
            };
            // Nobody receiving any more (the gateway is going away): counted and refused here.
            if let Err(left) = to_sessions.try_send(message)
                && let Some(s) = unrouted_stats.upgrade()
            {
                let (Unprompted::Session { inbound, .. } | Unprompted::Shared { inbound, .. }) =
                    left;
                drop_unrouted(&s, inbound);
            }
        });
        let spec = ChildSpec {
            command: command.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: child_env,
            home: Some(home),
            sandbox: self.sandbox_for(sandbox, &label),
            label: label.clone(),
            stderr_lines_per_second: self.config.stderr_lines_per_second,
            unrouted: Some(unrouted),
            on_exit: Some(on_exit),
        };
        let child = match ChildProcess::spawn(spec) {
            Ok(c) => c,
            Err(e) => {
                self.release(&key.target);
                return Err(e);
            }
        };
        self.stats.live.fetch_add(1, Ordering::Relaxed);
        self.stats.spawned.fetch_add(1, Ordering::Relaxed);
        info!(child = %label, pid = child.pid(), "STDIO server started");
        self.initialize_child(child, &label, start).await
    }

    /// Initializes a fresh child; one that does not answer in time is stopped.
    async fn initialize_child(
        &self,
        child: Arc<ChildProcess>,
        label: &str,
        start: &Start<'_>,
    ) -> Result<Arc<ChildProcess>, StdioError> {
        // A child may serve many sessions: it is told the gateway can relay every kind of
        // request (elicitation in both modes: an empty object would mean form only), and the
        // gateway refuses per session what that client did not declare.
        let params = crate::upstream::handshake::initialize_params(
            start.protocol_version,
            &json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}}),
            crate::upstream::handshake::GATEWAY,
        );
        let init_timeout = Duration::from_millis(u64::from(start.target.timeouts.init_ms));
        match child.initialize(&params, init_timeout).await {
            Ok(_) => Ok(child),
            Err(e) => {
                warn!(child = %label, error = %e, "STDIO server failed to initialize; stopping it");
                child.stop(self.config.grace()).await;
                Err(match e {
                    StdioError::Timeout(t) => {
                        StdioError::Initialize(format!("no answer to initialize within {t:?}"))
                    }
                    other => other,
                })
            }
        }
    }

    fn reserve(&self, target: &Arc<str>) -> Result<(), StdioError> {
        let mut c = self.lock_counts();
        if c.total >= self.config.max_processes {
            self.stats.limit_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(StdioError::Limit {
                scope: "global",
                max: self.config.max_processes,
            });
        }
        let per = c.per_target.get(target).copied().unwrap_or(0);
        if per >= self.config.max_processes_per_target {
            self.stats.limit_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(StdioError::Limit {
                scope: "per-target",
                max: self.config.max_processes_per_target,
            });
        }
        c.total += 1;
        *c.per_target.entry(target.clone()).or_default() += 1;
        Ok(())
    }

    fn release(&self, target: &Arc<str>) {
        release_in(&self.counts, target);
    }

    /// Stops the children of a stateful session (its DELETE or expiry).
    pub async fn end_session(&self, session: &str) {
        let slots = self.take_slots(|k| k.session.as_deref() == Some(session));
        self.stop_slots(slots, "session ended").await;
    }

    /// Stops every child (gateway shutdown).
    pub async fn shutdown(&self) {
        let slots = self.take_slots(|_| true);
        self.stop_slots(slots, "shutdown").await;
    }

    fn take_slots(&self, pick: impl Fn(&IsolationKey) -> bool) -> Vec<Arc<Slot>> {
        let mut map = self.lock_slots();
        let keys: Vec<IsolationKey> = map.keys().filter(|k| pick(k)).cloned().collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    }

    async fn stop_slots(&self, slots: Vec<Arc<Slot>>, why: &'static str) {
        let grace = self.config.grace();
        let stops = slots.into_iter().map(|slot| async move {
            let child = {
                let mut st = slot.state.lock().await;
                st.removed = true;
                st.child.take()
            };
            if let Some(c) = child {
                debug!(child = c.label(), why, "stopping STDIO server");
                c.stop(grace).await;
            }
        });
        futures::future::join_all(stops).await;
    }

    /// One sweep: stops children idle longer than their Target's idle TTL, retires those older
    /// than its max lifetime (new calls get a fresh child; the old one stops once drained), and
    /// forgets slots with nothing left to remember.
    fn sweep(&self) {
        let entries: Vec<(IsolationKey, Arc<Slot>)> = self
            .lock_slots()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let grace = self.config.grace();
        for (key, slot) in entries {
            // Busy slots (a call is starting the child) are looked at next time.
            let Ok(mut st) = slot.state.try_lock() else {
                continue;
            };
            let Some(child) = st.child.clone() else {
                let backoff_over = st
                    .restarts
                    .retry_at()
                    .is_none_or(|at| at.elapsed() >= self.config.grace() + HEALTHY_UPTIME);
                if backoff_over {
                    st.removed = true;
                    self.lock_slots().remove(&key);
                }
                continue;
            };
            let idle = child.in_flight() == 0 && child.idle_for() >= st.idle;
            let old = st.max_age.is_some_and(|max| child.age() >= max);
            if !child.is_alive() && child.stop_requested() {
                st.removed = true;
                st.child = None;
                self.lock_slots().remove(&key);
            } else if child.is_alive() && idle {
                info!(child = child.label(), idle = ?child.idle_for(), "stopping idle STDIO server");
                self.stats.stopped_idle.fetch_add(1, Ordering::Relaxed);
                st.removed = true;
                st.child = None;
                self.lock_slots().remove(&key);
                tokio::spawn(async move { child.stop(grace).await });
            } else if child.is_alive() && old {
                info!(child = child.label(), age = ?child.age(), "retiring STDIO server at its max lifetime");
                self.stats.stopped_max_age.fetch_add(1, Ordering::Relaxed);
                st.child = None;
                let drain = Duration::from_secs(60);
                tokio::spawn(async move {
                    let deadline = Instant::now() + drain;
                    while child.in_flight() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    child.stop(grace).await;
                });
            }
        }
    }
}

/// A child's message nobody can take: counted, then refused (a request) or dropped.
fn drop_unrouted(stats: &StdioStats, inbound: Inbound) {
    stats.unrouted.fetch_add(1, Ordering::Relaxed);
    debug!("message from a STDIO server dropped: no call or session to route it to");
    upcall::unroutable(inbound);
}

fn release_in(counts: &Mutex<Counts>, target: &Arc<str>) {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    c.total = c.total.saturating_sub(1);
    if let Some(n) = c.per_target.get_mut(target) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.per_target.remove(target);
        }
    }
}

async fn sweep_loop(pool: Weak<StdioPool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}

impl Drop for StdioPool {
    fn drop(&mut self) {
        // Children are killed on drop (kill_on_drop); their HOME folders go with the root.
        let _ = std::fs::remove_dir_all(&self.home_root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(isolation: Isolation, stateful: bool) -> CompiledTarget {
        CompiledTarget {
            namespace: "ns".into(),
            name: "t".into(),
            generation: None,
            prefix: "t".into(),
            upstream: Upstream::Stdio {
                command: "srv".into(),
                args: vec![],
                env: vec![],
                sandbox: Default::default(),
            },
            isolation,
            stateful,
            timeouts: Default::default(),
            lifetimes: Default::default(),
            policy: Default::default(),
            credentials: Default::default(),
            identity_forwarding: None,
            pinning: None,
            user_credential: None,
        }
    }

    fn key(t: &CompiledTarget, id: &Identity, session: &str) -> IsolationKey {
        let creds = t.credentials.resolve(id);
        IsolationKey::new(t, &Arc::from("ns/t"), id, &creds, session)
    }

    #[test]
    fn boundaries_choose_who_shares() {
        let alice = Identity::new("alice", ["dev", "ops"], ["admin"]);
        let bob = Identity::new("bob", ["ops", "dev"], ["admin"]);
        let carol = Identity::new("carol", ["dev"], ["viewer"]);
        let shared = target(Isolation::Shared, false);
        assert_eq!(key(&shared, &alice, "s1"), key(&shared, &carol, "s2"));
        let per_user = target(Isolation::PerUser, false);
        assert_ne!(key(&per_user, &alice, "s"), key(&per_user, &bob, "s"));
        assert_eq!(key(&per_user, &alice, "s1"), key(&per_user, &alice, "s2"));
        let per_group = target(Isolation::PerGroup, false);
        assert_eq!(key(&per_group, &alice, "s"), key(&per_group, &bob, "s"));
        assert_ne!(key(&per_group, &alice, "s"), key(&per_group, &carol, "s"));
        let per_role = target(Isolation::PerRole, false);
        assert_eq!(key(&per_role, &alice, "s"), key(&per_role, &bob, "s"));
        assert_ne!(key(&per_role, &alice, "s"), key(&per_role, &carol, "s"));
    }

    #[test]
    fn stateful_targets_key_by_session_and_specs_by_content() {
        let alice = Identity::new("alice", ["dev"], Vec::<String>::new());
        let stateful = target(Isolation::Shared, true);
        assert_ne!(key(&stateful, &alice, "s1"), key(&stateful, &alice, "s2"));
        let mut other = target(Isolation::Shared, false);
        let base = key(&other, &alice, "s");
        other.upstream = Upstream::Stdio {
            command: "srv".into(),
            args: vec!["--flag".into()],
            env: vec![],
            sandbox: Default::default(),
        };
        assert_ne!(base, key(&other, &alice, "s"));
    }
}
