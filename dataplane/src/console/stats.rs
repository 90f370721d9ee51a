//! Per-Target call figures for the admin charts: calls, errors, p50 and p99 latency per minute
//! over the last minutes, from Postgres (every replica's calls) or from the ring (this one's).

use std::collections::BTreeMap;

use crate::postgres::{self, MinuteStats};

use super::{Console, ConsoleError, audit_read};

/// Minutes the charts cover.
pub const WINDOW_MINUTES: i32 = 15;

/// One Target's series, one point per minute of the window (oldest first, zeros filled in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub calls: Vec<f64>,
    pub error_rate: Vec<f64>,
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Linear interpolation between closest ranks, as Postgres' percentile_cont.
    let rank = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Figures from raw events: (target, time_ms, duration_ms, error).
pub fn minute_stats_of(events: impl Iterator<Item = (String, i64, f64, bool)>) -> Vec<MinuteStats> {
    let mut buckets: BTreeMap<(String, i64), (Vec<f64>, i64)> = BTreeMap::new();
    for (target, t, d, err) in events {
        let b = buckets
            .entry((target, t - t.rem_euclid(60_000)))
            .or_default();
        b.0.push(d);
        b.1 += i64::from(err);
    }
    buckets
        .into_iter()
        .map(|((target, minute_ms), (mut ds, errors))| {
            ds.sort_by(f64::total_cmp);
            MinuteStats {
                target,
                minute_ms,
                calls: ds.len() as i64,
                errors,
                p50_ms: percentile(&ds, 0.5),
                p99_ms: percentile(&ds, 0.99),
            }
        })
        .collect()
}

/// Series per Target key for the window ending at `now_ms`.
pub fn series(stats: &[MinuteStats], now_ms: i64) -> BTreeMap<String, Series> {
    let end = now_ms - now_ms.rem_euclid(60_000);
    let n = WINDOW_MINUTES as usize;
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for s in stats {
        let age = (end - s.minute_ms) / 60_000;
        let Ok(age) = usize::try_from(age) else {
            continue;
        };
        if age >= n {
            continue;
        }
        let slot = n - 1 - age;
        let series = out.entry(s.target.clone()).or_insert_with(|| Series {
            calls: vec![0.0; n],
            error_rate: vec![0.0; n],
            p50: vec![0.0; n],
            p99: vec![0.0; n],
        });
        series.calls[slot] = s.calls as f64;
        series.error_rate[slot] = if s.calls > 0 {
            s.errors as f64 / s.calls as f64
        } else {
            0.0
        };
        series.p50[slot] = s.p50_ms;
        series.p99[slot] = s.p99_ms;
    }
    out
}

/// The window's figures from wherever the audit lives.
pub async fn load(
    console: &Console,
    now_ms: i64,
) -> Result<BTreeMap<String, Series>, ConsoleError> {
    let stats = match &console.parts.database {
        Some(db) => postgres::minute_stats(db, WINDOW_MINUTES).await?,
        None => {
            let since = now_ms - i64::from(WINDOW_MINUTES) * 60_000;
            let events = audit_read::ring_since(console, since);
            minute_stats_of(events.iter().filter_map(|e| {
                let target = e.target.clone()?;
                let err = e.outcome != "ok" && e.decision != Some("deny");
                Some((target, i64::try_from(e.time_ms).ok()?, e.duration_ms, err))
            }))
        }
    };
    Ok(series(&stats, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_percentiles_and_error_rates() {
        let t0: i64 = 30_000_000 * 60_000;
        let mut events: Vec<(String, i64, f64, bool)> = (1..=100)
            .map(|i| ("ns/a".to_owned(), t0 + 10, f64::from(i), i % 10 == 0))
            .collect();
        events.push(("ns/a".to_owned(), t0 - 60_000, 5.0, false));
        let stats = minute_stats_of(events.into_iter());
        assert_eq!(stats.len(), 2);
        let last = &stats[1];
        assert_eq!((last.calls, last.errors), (100, 10));
        assert!((last.p50_ms - 50.5).abs() < 1e-9, "{}", last.p50_ms);
        assert!((last.p99_ms - 99.01).abs() < 1e-9, "{}", last.p99_ms);
        let s = &series(&stats, t0 + 30_000)["ns/a"];
        assert_eq!(s.calls.len(), WINDOW_MINUTES as usize);
        assert_eq!(s.calls[s.calls.len() - 1], 100.0);
        assert_eq!(s.calls[s.calls.len() - 2], 1.0);
        assert!((s.error_rate[s.calls.len() - 1] - 0.1).abs() < 1e-9);
    }
}
