//! How an MCPInstance reports: its `Ready` condition, a status written only when it changed (a
//! write's own watch event would otherwise start the next reconcile), and a Warning Event.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use reflow_crds::api::{Condition, InstancePhase, InstanceStatus, MCPInstance};
use serde_json::json;
use tracing::debug;

use super::MANAGER;

pub(super) fn condition(
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Some(now.to_string()),
    }
}

/// `next` with each condition's `lastTransitionTime` taken from `previous` where that
/// condition's status did not change: only a transition moves the time.
pub fn settle(previous: Option<&InstanceStatus>, mut next: InstanceStatus) -> InstanceStatus {
    for c in &mut next.conditions {
        if let Some(p) = previous
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|p| p.type_ == c.type_ && p.status == c.status)
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
    next
}

/// Writes `status` unless the instance already says exactly that; a Failed status with a new
/// reason also gets a Warning Event (once per transition, not per reconcile).
pub(super) async fn write(
    client: &Client,
    inst: &MCPInstance,
    status: InstanceStatus,
) -> Result<(), kube::Error> {
    let previous = inst.status.as_ref();
    let status = settle(previous, status);
    if previous == Some(&status) {
        return Ok(());
    }
    let api: Api<MCPInstance> =
        Api::namespaced(client.clone(), &inst.namespace().unwrap_or_default());
    api.patch_status(
        &inst.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    let reason_of = |s: &InstanceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let was = previous
        .filter(|p| p.phase == InstancePhase::Failed)
        .and_then(reason_of)
        .map(|(r, _)| r);
    if status.phase == InstancePhase::Failed
        && let Some((reason, message)) = reason_of(&status)
        && was.as_ref() != Some(&reason)
    {
        warn_event(client, inst, &reason, &message).await;
    }
    Ok(())
}

/// An Event is a courtesy next to the condition: failing to publish one is only logged.
async fn warn_event(client: &Client, inst: &MCPInstance, reason: &str, message: &str) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &inst.object_ref(&())).await {
        debug!(error = %e, "cannot publish an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time_and_a_flip_moves_it() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        let failed = |now| InstanceStatus {
            phase: InstancePhase::Failed,
            conditions: vec![condition(false, "TargetNotFound", "m".into(), Some(1), now)],
            ..InstanceStatus::default()
        };
        let before = failed(t0);
        assert_eq!(settle(Some(&before), failed(t1)), before);
        let running = InstanceStatus {
            phase: InstancePhase::Running,
            conditions: vec![condition(true, "Running", "m".into(), Some(1), t1)],
            ..InstanceStatus::default()
        };
        let after = settle(Some(&before), running.clone());
        assert_eq!(after, running);
    }
}
