//! Leader election on a coordination.k8s.io/v1 Lease: every replica serves snapshots, only the
//! holder writes status. Optimistic concurrency (resourceVersion) makes takeovers race-free.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// What one election round decided.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nobody holds it yet: create it.
    Create(Lease),
    /// Ours, or expired: write this version (renew or take over).
    Replace(Lease),
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Pure decision for one round, given the current Lease (if any) and the time.
pub fn step(current: Option<&Lease>, cfg: &LeaseConfig, now: Timestamp) -> Step {
    let seconds = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let fresh = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(lease) = current else {
        return Step::Create(Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(fresh(0, None)),
        });
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let mut next = lease.clone();
    if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
        next.spec = Some(fresh(transitions, spec.acquire_time));
        return Step::Replace(next);
    }
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = match (spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => {
            renewed.0 + Duration::from_secs(u64::try_from(secs).unwrap_or(0)) < now
        }
        _ => true,
    };
    if holder.is_empty() || expired {
        next.spec = Some(fresh(transitions + 1, None));
        Step::Replace(next)
    } else {
        Step::Follow { holder }
    }
}

/// One round against the API. `Ok(true)` when this replica holds the lease afterwards.
pub async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    match step(current.as_ref(), cfg, Timestamp::now()) {
        Step::Create(l) => api.create(&PostParams::default(), &l).await.map(|_| true),
        Step::Replace(l) => api
            .replace(&cfg.name, &PostParams::default(), &l)
            .await
            .map(|_| true),
        Step::Follow { .. } => Ok(false),
    }
}

/// How often a replica that does not lead checks the Lease: a released Lease is taken within
/// this time (renewals by the holder stay at `renew_every`).
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The Lease handed back on shutdown: no holder and a one-second duration, so another replica
/// takes over at its next check instead of waiting out the old holder's term.
pub fn released(current: &Lease, cfg: &LeaseConfig, now: Timestamp) -> Option<Lease> {
    let spec = current.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return None;
    }
    let mut next = current.clone();
    next.spec = Some(LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..spec.clone()
    });
    Some(next)
}

/// Releases the Lease if this replica holds it (call after status writers have stopped).
pub async fn release(client: Client, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let Some(current) = api.get_opt(&cfg.name).await? else {
        return Ok(false);
    };
    match released(&current, cfg, Timestamp::now()) {
        Some(next) => api
            .replace(&cfg.name, &PostParams::default(), &next)
            .await
            .map(|_| true),
        None => Ok(false),
    }
}

/// Runs the election forever; the receiver says whether this replica leads right now. A
/// conflict (another replica won the race) or an API error counts as not leading, so status
/// writes stop before the lease could have passed to someone else.
pub fn spawn(
    client: Client,
    cfg: LeaseConfig,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let span = info_span!("lease", name = %cfg.name, identity = %cfg.identity);
    let task = tokio::spawn(
        async move {
            loop {
                let leading = match round(&api, &cfg).await {
                    Ok(l) => l,
                    Err(kube::Error::Api(s)) if s.code == 409 => false,
                    Err(e) => {
                        warn!(error = %e, "lease round failed");
                        false
                    }
                };
                if leading != *tx.borrow() {
                    info!(leading, "leadership changed");
                }
                tx.send_replace(leading);
                let wait = if leading {
                    cfg.renew_every
                } else {
                    cfg.renew_every.min(FOLLOW_EVERY)
                };
                tokio::time::sleep(wait).await;
            }
        }
        .instrument(span),
    );
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "reflow".into(),
            name: "reflow-controller".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn held_by(id: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("reflow-controller".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(id.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn create_renew_follow_and_take_over() {
        let now = Timestamp::now();
        let Step::Create(l) = step(None, &cfg("a"), now) else {
            panic!("expected create")
        };
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("a"));

        let Step::Replace(l) = step(Some(&held_by("a", now)), &cfg("a"), now) else {
            panic!("expected renew")
        };
        assert_eq!(l.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(l.spec.unwrap().lease_transitions, Some(2));

        assert_eq!(
            step(Some(&held_by("b", now)), &cfg("a"), now),
            Step::Follow { holder: "b".into() }
        );

        let stale = now - Duration::from_secs(16);
        let Step::Replace(l) = step(Some(&held_by("b", stale)), &cfg("a"), now) else {
            panic!("expected takeover")
        };
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(
            l.metadata.resource_version.as_deref(),
            Some("7"),
            "optimistic concurrency"
        );
    }

    #[test]
    fn a_released_lease_is_free_for_the_next_replica_at_once() {
        let now = Timestamp::now();
        let held = held_by("a", now);
        let free = released(&held, &cfg("a"), now).expect("a holds it");
        assert_eq!(
            free.spec.as_ref().and_then(|s| s.holder_identity.clone()),
            None
        );
        assert!(
            released(&held, &cfg("b"), now).is_none(),
            "only the holder releases"
        );
        assert!(matches!(
            step(Some(&free), &cfg("b"), now),
            Step::Replace(_)
        ));
    }
}
