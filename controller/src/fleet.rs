//! The dataplanes this replica serves: who has a watch stream open and which snapshot each last
//! applied or refused. Turned into the `Programmed` condition (applied by N of M dataplanes),
//! together with the dataplanes other replicas serve (their rosters, see `roster`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reflow_crds::observed::{ObservedReport, TargetObservation};
use reflow_crds::wire::{AppliedReport, Outcome};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Dataplane {
    streams: usize,
    last: Option<AppliedReport>,
    /// When its last stream ended: it may still serve what it last applied (static stability),
    /// so it stays counted for [`RECENT`].
    gone_since: Option<Instant>,
    /// Its latest observation report (replaced whole by the next one) and when it came.
    observed: Option<(Instant, Vec<TargetObservation>)>,
}

/// How long a dataplane that lost its stream stays counted: long enough that one cut off from
/// the controller (still serving an older snapshot) keeps `Programmed` from claiming all applied.
pub const RECENT: Duration = Duration::from_secs(120);

/// Shared by the watch server (connect/disconnect, reports) and the status writer (reads).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Mutex<BTreeMap<String, Dataplane>>>,
    changed: watch::Sender<u64>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// Where the dataplanes stand for one snapshot hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Programmed {
    /// Connected dataplanes that applied the snapshot.
    pub applied: usize,
    /// Connected dataplanes.
    pub connected: usize,
    /// Connected dataplanes that refused it, with their reason.
    pub refused: Vec<(String, String)>,
    /// Dataplanes seen within [`RECENT`] but disconnected now, last on another snapshot: they
    /// may still serve it. Counted in `connected`, not in `applied`.
    pub stale: Vec<String>,
}

/// One dataplane as `/v1/status` shows it (and as replica rosters carry it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneView {
    pub name: String,
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<AppliedReport>,
    /// Its latest observations of the Targets' upstreams (carried in rosters so the lease
    /// holder writes `Ready` from every replica's dataplanes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<TargetObservation>,
}

/// Keeps a dataplane counted as connected while its watch stream lives.
pub struct Connection {
    fleet: Fleet,
    name: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut map = self.fleet.lock();
        if let Some(d) = map.get_mut(&self.name) {
            d.streams = d.streams.saturating_sub(1);
            if d.streams == 0 {
                d.gone_since = Some(Instant::now());
            }
        }
        drop(map);
        self.fleet.bump();
    }
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Dataplane>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, d| d.gone_since.is_none_or(|t| t.elapsed() < RECENT));
        map
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ticks whenever a dataplane connects, disconnects or reports.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn connect(&self, name: &str) -> Connection {
        let mut map = self.lock();
        let d = map.entry(name.to_owned()).or_default();
        d.streams += 1;
        d.gone_since = None;
        drop(map);
        self.bump();
        Connection {
            fleet: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Records a report. Reports from dataplanes with no open stream are ignored: they are not
    /// part of M, and counting them would let a departed dataplane vote.
    pub fn report(&self, report: AppliedReport) -> bool {
        let mut map = self.lock();
        let Some(d) = map.get_mut(&report.dataplane).filter(|d| d.streams > 0) else {
            return false;
        };
        d.last = Some(report);
        drop(map);
        self.bump();
        true
    }

    /// Records an observation report (already validated), replacing the dataplane's previous
    /// one; like applied reports, only from a dataplane with an open stream. Ticks only when
    /// it differs, so a dataplane re-sending the same report starts no status pass.
    pub fn observe(&self, report: ObservedReport) -> bool {
        let mut map = self.lock();
        let Some(d) = map.get_mut(&report.dataplane).filter(|d| d.streams > 0) else {
            return false;
        };
        let same = d
            .observed
            .as_ref()
            .is_some_and(|(_, o)| *o == report.targets);
        if !same {
            d.observed = Some((Instant::now(), report.targets));
        }
        drop(map);
        if !same {
            self.bump();
        }
        true
    }

    /// Every counted dataplane's observations, per Target.
    pub fn observed(&self) -> crate::target_status::Observed {
        self.observed_with(&[])
    }

    /// Observations of this replica's dataplanes and of `peers` (other replicas' rosters). A
    /// dataplane on both counts once, with this replica's report; peers' reports count as
    /// older than local ones (their arrival time is not known here).
    pub fn observed_with(&self, peers: &[DataplaneView]) -> crate::target_status::Observed {
        let map = self.lock();
        let older = Instant::now()
            .checked_sub(RECENT)
            .unwrap_or_else(Instant::now);
        let mut all: BTreeMap<String, (Instant, Vec<TargetObservation>)> = map
            .iter()
            .map(|(name, d)| {
                let (at, obs) = d.observed.clone().unwrap_or((older, Vec::new()));
                (name.clone(), (at, obs))
            })
            .collect();
        drop(map);
        for peer in peers {
            all.entry(peer.name.clone())
                .or_insert_with(|| (older, peer.observed.clone()));
        }
        let mut out = crate::target_status::Observed {
            dataplanes: all.len(),
            ..Default::default()
        };
        for (name, (at, targets)) in &all {
            for t in targets {
                out.targets
                    .entry((t.namespace.clone(), t.name.clone()))
                    .or_default()
                    .push(crate::target_status::Seen {
                        dataplane: name.clone(),
                        at: *at,
                        observation: t.clone(),
                    });
            }
        }
        out
    }

    pub fn programmed(&self, hash: &str) -> Programmed {
        self.programmed_with(hash, &[])
    }

    /// `Programmed` over this replica's dataplanes and `peers` (other replicas' rosters). A
    /// dataplane listed twice (it moved between replicas) counts once, with its newest report.
    pub fn programmed_with(&self, hash: &str, peers: &[DataplaneView]) -> Programmed {
        let mut all: BTreeMap<String, (bool, Option<AppliedReport>)> = self
            .lock()
            .iter()
            .map(|(name, d)| (name.clone(), (d.streams > 0, d.last.clone())))
            .collect();
        for peer in peers {
            let (live, slot) = all.entry(peer.name.clone()).or_default();
            *live |= peer.connected;
            let newer = match (&*slot, &peer.last) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(mine), Some(theirs)) => theirs.version > mine.version,
            };
            if newer {
                *slot = peer.last.clone();
            }
        }
        let mut p = Programmed {
            connected: all.len(),
            ..Programmed::default()
        };
        for (name, (live, last)) in &all {
            match last {
                Some(r) if r.hash == hash && r.outcome == Outcome::Applied => p.applied += 1,
                Some(r) if r.hash == hash && *live => p.refused.push((
                    name.clone(),
                    r.message.clone().unwrap_or_else(|| "refused".to_owned()),
                )),
                _ if !*live => p.stale.push(name.clone()),
                _ => {}
            }
        }
        p
    }

    pub fn view(&self) -> Vec<DataplaneView> {
        self.lock()
            .iter()
            .map(|(name, d)| DataplaneView {
                name: name.clone(),
                connected: d.streams > 0,
                last: d.last.clone(),
                observed: d
                    .observed
                    .as_ref()
                    .map(|(_, o)| o.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dp: &str, hash: &str, outcome: Outcome) -> AppliedReport {
        AppliedReport {
            dataplane: dp.into(),
            version: 1,
            hash: hash.into(),
            outcome,
            message: (outcome == Outcome::Refused).then(|| "hash mismatch".into()),
        }
    }

    #[test]
    fn n_of_m_counts_only_connected_dataplanes_on_the_current_hash() {
        let fleet = Fleet::default();
        let mut ticks = fleet.subscribe();
        assert!(!fleet.report(report("ghost", "h1", Outcome::Applied)));
        let a = fleet.connect("a");
        let b = fleet.connect("b");
        let _c = fleet.connect("c");
        assert!(ticks.has_changed().unwrap());
        ticks.mark_unchanged();
        assert!(fleet.report(report("a", "h1", Outcome::Applied)));
        assert!(ticks.has_changed().unwrap());
        fleet.report(report("b", "h0", Outcome::Applied));
        fleet.report(report("c", "h1", Outcome::Refused));
        let p = fleet.programmed("h1");
        assert_eq!((p.applied, p.connected), (1, 3));
        assert_eq!(p.refused, vec![("c".into(), "hash mismatch".into())]);

        // A second stream from the same dataplane keeps it connected until both end.
        let a2 = fleet.connect("a");
        drop(a);
        assert_eq!(fleet.programmed("h1").applied, 1);
        drop(a2);
        drop(b);
        // Issue #18 item 5: both stay counted for a while. `a` had applied h1 and still serves
        // it; `b`, cut off on h0, may still serve the older snapshot: not all applied.
        let p = fleet.programmed("h1");
        assert_eq!((p.applied, p.connected), (1, 3));
        assert_eq!(p.stale, vec!["b".to_owned()]);
        assert_eq!(fleet.view().iter().filter(|d| d.connected).count(), 1);
        // A report from a disconnected dataplane is not taken; reconnecting it counts again.
        assert!(!fleet.report(report("b", "h1", Outcome::Applied)));
        let _b = fleet.connect("b");
        assert!(fleet.report(report("b", "h1", Outcome::Applied)));
        let p = fleet.programmed("h1");
        assert_eq!((p.applied, p.connected, p.stale.len()), (2, 3, 0));
    }

    #[test]
    fn peers_rosters_join_the_count_and_a_moved_dataplane_counts_once() {
        let fleet = Fleet::default();
        let _a = fleet.connect("a");
        fleet.report(report("a", "h1", Outcome::Applied));
        let peer = |name: &str, version: u64, hash: &str, outcome| DataplaneView {
            name: name.into(),
            connected: true,
            observed: Vec::new(),
            last: Some(AppliedReport {
                version,
                ..report(name, hash, outcome)
            }),
        };
        let peers = [
            peer("b", 1, "h1", Outcome::Applied),
            peer("c", 1, "h1", Outcome::Refused),
            DataplaneView {
                name: "d".into(),
                connected: true,
                last: None,
                observed: Vec::new(),
            },
            // `a` reconnected here from another replica whose roster still has an old report.
            peer("a", 0, "h0", Outcome::Applied),
        ];
        let p = fleet.programmed_with("h1", &peers);
        assert_eq!((p.applied, p.connected), (2, 4));
        assert_eq!(p.refused, vec![("c".into(), "hash mismatch".into())]);
        // A newer report from a peer wins over this replica's older one.
        let p = fleet.programmed_with("h1", &[peer("a", 9, "h1", Outcome::Refused)]);
        assert_eq!((p.applied, p.connected, p.refused.len()), (0, 1, 1));
    }

    fn observation(name: &str, reachable: bool) -> TargetObservation {
        TargetObservation {
            namespace: "ns".into(),
            name: name.into(),
            reachable,
            reason: None,
            error: None,
            tools: None,
        }
    }

    /// Issue #18 item 4: observations count only from dataplanes with a stream, replace the
    /// previous report whole, tick only on change, and join peers' without double counting.
    #[test]
    fn observations_replace_per_dataplane_and_join_peers() {
        let fleet = Fleet::default();
        let report = |dp: &str, targets| ObservedReport {
            dataplane: dp.into(),
            targets,
        };
        assert!(!fleet.observe(report("ghost", vec![observation("t", true)])));
        let _a = fleet.connect("a");
        let mut ticks = fleet.subscribe();
        ticks.mark_unchanged();
        assert!(fleet.observe(report(
            "a",
            vec![observation("t", true), observation("u", false)]
        )));
        assert!(ticks.has_changed().unwrap());
        ticks.mark_unchanged();
        assert!(fleet.observe(report(
            "a",
            vec![observation("t", true), observation("u", false)]
        )));
        assert!(!ticks.has_changed().unwrap(), "the same report is no news");
        assert!(fleet.observe(report("a", vec![observation("t", false)])));
        let o = fleet.observed();
        assert_eq!(o.dataplanes, 1);
        assert_eq!(
            o.targets.len(),
            1,
            "the new report replaced the old one whole"
        );
        assert!(
            !o.targets[&("ns".into(), "t".into())][0]
                .observation
                .reachable
        );

        let peer = |name: &str, reachable| DataplaneView {
            name: name.into(),
            connected: true,
            last: None,
            observed: vec![observation("t", reachable)],
        };
        let o = fleet.observed_with(&[peer("b", true), peer("a", true)]);
        assert_eq!(o.dataplanes, 2);
        let seen = &o.targets[&("ns".into(), "t".into())];
        let who: Vec<(&str, bool)> = seen
            .iter()
            .map(|s| (s.dataplane.as_str(), s.observation.reachable))
            .collect();
        assert_eq!(
            who,
            [("a", false), ("b", true)],
            "a's own report wins over a peer's copy"
        );
        assert!(
            fleet.view()[0].observed.len() == 1,
            "rosters carry observations"
        );
    }
}
