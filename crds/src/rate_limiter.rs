//! Rate-limit buckets of one dataplane: one token bucket per (Target, Policy, user[, tool]),
//! kept as its theoretical arrival time (GCRA, the token bucket's one-number form). Memory is
//! bounded: a full bucket is the same as none and is dropped first; beyond the cap the buckets
//! nearest to full go, so a caller with many identities or names cannot grow the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::snapshot::RateLimitScope;
use crate::snapshot::rate_limit::RateSpec;

/// Buckets held per shard before the fullest are dropped (16 shards: 65,536 buckets in all).
const SHARD_CAP: usize = 4096;
const SHARDS: usize = 16;

/// Who a bucket belongs to. Every part is compared in full: two callers never share one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketKey {
    target: Arc<str>,
    policy: Arc<str>,
    user: Arc<str>,
    /// Empty for a per-Target limit.
    item: Box<str>,
}

/// A refused call: which Policy, and when its bucket next has a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub policy: Arc<str>,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for `Retry-After`, never 0.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

pub struct RateLimiter {
    epoch: Instant,
    shards: Vec<Mutex<HashMap<BucketKey, u64>>>,
    /// Picks the shard from the user: keyed per process, so callers cannot aim at one shard.
    spread: std::hash::RandomState,
    cap: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_cap(SHARD_CAP)
    }
}

impl RateLimiter {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            spread: std::hash::RandomState::new(),
            cap: cap.max(1),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one token from each limit's bucket, or none at all: a call refused by one limit
    /// is not charged to the others.
    pub fn check(
        &self,
        target: &Arc<str>,
        user: &Arc<str>,
        item: &str,
        limits: &[(Arc<str>, RateSpec)],
    ) -> Result<(), Limited> {
        let now = self.now_ns();
        let keys: Vec<(BucketKey, &RateSpec)> = limits
            .iter()
            .map(|(policy, spec)| {
                let key = BucketKey {
                    target: target.clone(),
                    policy: policy.clone(),
                    user: user.clone(),
                    item: match spec.per {
                        RateLimitScope::Tool => item.into(),
                        RateLimitScope::Target => "".into(),
                    },
                };
                (key, spec)
            })
            .collect();
        // Look first, charge after: all or nothing.
        for (key, spec) in &keys {
            let tat = self.shard(key).get(key).copied().unwrap_or(0);
            if let Some(wait) = wait_ns(tat, now, spec) {
                return Err(Limited {
                    policy: key.policy.clone(),
                    retry_after: Duration::from_nanos(wait),
                });
            }
        }
        for (key, spec) in keys {
            let emission = spec.emission_ns();
            let mut shard = self.shard(&key);
            if shard.len() >= self.cap && !shard.contains_key(&key) {
                evict(&mut shard, now, self.cap);
            }
            let tat = shard.entry(key).or_insert(0);
            *tat = (*tat).max(now).saturating_add(emission);
        }
        Ok(())
    }

    fn shard(&self, key: &BucketKey) -> std::sync::MutexGuard<'_, HashMap<BucketKey, u64>> {
        use std::hash::BuildHasher;
        let i = (self.spread.hash_one(&key.user) as usize) % self.shards.len();
        // A panic while holding the lock leaves plain numbers behind; keep using them.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets held now (all shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// How long until `tat` admits one more call under `spec`, or `None` if it does now.
fn wait_ns(tat: u64, now: u64, spec: &RateSpec) -> Option<u64> {
    let tolerance = spec
        .emission_ns()
        .saturating_mul(u64::from(spec.burst.saturating_sub(1)));
    let earliest = tat.saturating_sub(tolerance);
    (earliest > now).then(|| earliest - now)
}

/// Makes room: full buckets (arrival time passed) are dropped; if that frees less than an
/// eighth, the buckets nearest to full go too. Amortised O(1) per insert.
fn evict(shard: &mut HashMap<BucketKey, u64>, now: u64, cap: usize) {
    shard.retain(|_, tat| *tat > now);
    let target = cap - cap / 8;
    if shard.len() <= target {
        return;
    }
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let cut = shard.len() - target;
    tats.select_nth_unstable(cut - 1);
    let threshold = tats[cut - 1];
    let mut removed = 0;
    shard.retain(|_, tat| {
        if removed < cut && *tat <= threshold {
            removed += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u32, interval_ms: u64, burst: u32, per: RateLimitScope) -> RateSpec {
        RateSpec {
            requests,
            interval_ms,
            burst,
            per,
        }
    }

    fn lim(per: RateLimitScope) -> Vec<(Arc<str>, RateSpec)> {
        vec![(Arc::from("p"), spec(2, 60_000, 2, per))]
    }

    #[test]
    fn burst_then_refusal_with_retry_hint_per_user_and_tool() {
        let rl = RateLimiter::default();
        let (t, alice, bob) = (Arc::from("ns/t"), Arc::from("alice"), Arc::from("bob"));
        let l = lim(RateLimitScope::Tool);
        assert!(rl.check(&t, &alice, "a", &l).is_ok());
        assert!(rl.check(&t, &alice, "a", &l).is_ok());
        let refused = rl.check(&t, &alice, "a", &l).unwrap_err();
        assert_eq!(&*refused.policy, "p");
        assert!(refused.retry_after > Duration::from_secs(29));
        assert!(refused.retry_after <= Duration::from_secs(30));
        assert_eq!(refused.retry_after_secs(), 30);
        // Another tool, another user: their own buckets.
        assert!(rl.check(&t, &alice, "b", &l).is_ok());
        assert!(rl.check(&t, &bob, "a", &l).is_ok());
        // Per Target: one bucket for all tools.
        let l = lim(RateLimitScope::Target);
        assert!(rl.check(&t, &bob, "x", &l).is_ok());
        assert!(rl.check(&t, &bob, "y", &l).is_ok());
        assert!(rl.check(&t, &bob, "z", &l).is_err());
    }

    #[test]
    fn a_refusal_charges_no_other_limit() {
        let rl = RateLimiter::default();
        let (t, u) = (Arc::from("ns/t"), Arc::from("u"));
        let tight = (Arc::from("tight"), spec(1, 60_000, 1, RateLimitScope::Tool));
        let loose = (Arc::from("loose"), spec(3, 60_000, 3, RateLimitScope::Tool));
        assert!(
            rl.check(&t, &u, "a", &[tight.clone(), loose.clone()])
                .is_ok()
        );
        for _ in 0..5 {
            assert!(
                rl.check(&t, &u, "a", &[tight.clone(), loose.clone()])
                    .is_err()
            );
        }
        // The refused calls took nothing from `loose`: two tokens remain.
        assert!(rl.check(&t, &u, "a", std::slice::from_ref(&loose)).is_ok());
        assert!(rl.check(&t, &u, "a", std::slice::from_ref(&loose)).is_ok());
        assert!(rl.check(&t, &u, "a", std::slice::from_ref(&loose)).is_err());
    }

    #[test]
    fn refills_over_time() {
        let rl = RateLimiter::default();
        let (t, u) = (Arc::from("ns/t"), Arc::from("u"));
        let l = vec![(Arc::from("p"), spec(1, 1_000, 1, RateLimitScope::Tool))];
        assert!(rl.check(&t, &u, "a", &l).is_ok());
        let wait = rl.check(&t, &u, "a", &l).unwrap_err().retry_after;
        std::thread::sleep(wait + Duration::from_millis(20));
        assert!(rl.check(&t, &u, "a", &l).is_ok());
    }

    #[test]
    fn many_identities_cannot_grow_the_table() {
        let rl = RateLimiter::with_cap(64);
        let t = Arc::from("ns/t");
        let l = lim(RateLimitScope::Tool);
        for i in 0..100_000 {
            let u: Arc<str> = Arc::from(format!("user-{i}"));
            assert!(rl.check(&t, &u, &format!("tool-{i}"), &l).is_ok());
        }
        assert!(rl.len() <= 64 * SHARDS, "{}", rl.len());
    }
}
