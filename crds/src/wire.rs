//! The controller ⇄ dataplane wire: frames of `GET /v1/snapshots/watch` (newline-delimited
//! JSON, one frame per line) and the report a dataplane posts after each snapshot it receives.
//! Shared here so the controller and the dataplane never depend on each other.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::snapshot::Snapshot;

/// Long-lived stream of [`WatchFrame`]s, one JSON object per line.
pub const WATCH_PATH: &str = "/v1/snapshots/watch";
/// `POST` an [`AppliedReport`] here after each snapshot frame.
pub const APPLIED_PATH: &str = "/v1/snapshots/applied";
/// Names the dataplane on the watch request (its pod name, or a generated id).
pub const DATAPLANE_HEADER: &str = "x-reflow-dataplane";
/// The content type of the watch stream.
pub const NDJSON: &str = "application/x-ndjson";

/// What a line of the watch stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FrameKind {
    /// The full snapshot, sent on connect and on every change.
    Snapshot,
    /// Keeps idle connections observable.
    Heartbeat,
}

/// One line of the watch stream. A plain struct rather than a tagged enum: the snapshot stays
/// raw (serde cannot buffer a `RawValue` through an internally tagged enum), so a receiver can
/// report the version and hash of a snapshot it refuses.
#[derive(Debug, Serialize, Deserialize)]
pub struct WatchFrame {
    #[serde(rename = "type")]
    pub kind: FrameKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Box<RawValue>>,
}

impl WatchFrame {
    /// The frame for `snapshot`, as one line (newline included).
    pub fn snapshot_line(snapshot: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
        let raw = RawValue::from_string(serde_json::to_string(snapshot)?)?;
        let mut line = serde_json::to_vec(&WatchFrame {
            kind: FrameKind::Snapshot,
            version: Some(snapshot.version()),
            hash: Some(snapshot.hash().to_owned()),
            snapshot: Some(raw),
        })?;
        line.push(b'\n');
        Ok(line)
    }

    pub fn heartbeat_line() -> Vec<u8> {
        b"{\"type\":\"heartbeat\"}\n".to_vec()
    }

    /// Validates the snapshot inside a `snapshot` frame: the content hash must match, routing
    /// must be unambiguous, and the frame's version and hash must agree with the snapshot's.
    pub fn open_snapshot(version: u64, hash: &str, raw: &RawValue) -> Result<Snapshot, String> {
        let snapshot: Snapshot = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        if snapshot.version() != version || snapshot.hash() != hash {
            return Err(format!(
                "frame says version {version} hash {hash}, snapshot says version {} hash {}",
                snapshot.version(),
                snapshot.hash()
            ));
        }
        Ok(snapshot)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Validated and now serving.
    Applied,
    /// Failed validation; the dataplane keeps serving its last good snapshot.
    Refused,
}

/// What a dataplane did with the snapshot `version`/`hash` (its `Programmed` vote).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedReport {
    pub dataplane: String,
    pub version: u64,
    pub hash: String,
    pub outcome: Outcome,
    /// Why a snapshot was refused (never contains credential values: only parse errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(line: &[u8]) -> WatchFrame {
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn a_snapshot_frame_round_trips_and_validates() {
        let snap = Snapshot::empty().with_version(7);
        let line = WatchFrame::snapshot_line(&snap).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let f = frame(&line);
        assert_eq!(f.kind, FrameKind::Snapshot);
        assert_eq!(f.version, Some(7));
        let opened = WatchFrame::open_snapshot(
            7,
            f.hash.as_deref().unwrap(),
            f.snapshot.as_deref().unwrap(),
        )
        .unwrap();
        assert_eq!(opened, snap);
    }

    #[test]
    fn a_tampered_snapshot_or_a_lying_frame_is_refused() {
        let snap = Snapshot::empty().with_version(3);
        let text = serde_json::to_string(&snap).unwrap();
        let tampered = text.replace(snap.hash(), &"0".repeat(64));
        let raw = RawValue::from_string(tampered).unwrap();
        let e = WatchFrame::open_snapshot(3, &"0".repeat(64), &raw).unwrap_err();
        assert!(e.contains("hash mismatch"), "{e}");

        let raw = RawValue::from_string(text).unwrap();
        let e = WatchFrame::open_snapshot(4, snap.hash(), &raw).unwrap_err();
        assert!(e.contains("frame says version 4"), "{e}");
    }

    #[test]
    fn heartbeats_and_reports_have_a_stable_shape() {
        let hb = frame(&WatchFrame::heartbeat_line());
        assert_eq!(hb.kind, FrameKind::Heartbeat);
        assert!(hb.snapshot.is_none());
        let r = AppliedReport {
            dataplane: "dp-1".into(),
            version: 2,
            hash: "ab".into(),
            outcome: Outcome::Refused,
            message: Some("bad".into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["outcome"], "refused");
        assert_eq!(serde_json::from_value::<AppliedReport>(v).unwrap(), r);
    }
}
