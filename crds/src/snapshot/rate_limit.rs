//! A Policy's rate limit as dataplanes enforce it: a token bucket of `burst` tokens refilled at
//! `requests` per `interval`, one per caller (and tool), on each dataplane.

use serde::{Deserialize, Serialize};

/// Shortest and longest accepted interval.
const MIN_INTERVAL_MS: u64 = 1_000;
const MAX_INTERVAL_MS: u64 = 24 * 3_600_000;

/// One bucket per caller and tool, or per caller and Target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScope {
    #[default]
    Tool,
    Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateSpec {
    pub requests: u32,
    pub interval_ms: u64,
    pub burst: u32,
    pub per: RateLimitScope,
}

impl RateSpec {
    /// `requests` per `interval` (`30s`, `5m`, `1h`), `burst` at once (default `requests`).
    pub fn new(
        requests: u32,
        interval: &str,
        burst: Option<u32>,
        per: RateLimitScope,
    ) -> Result<Self, String> {
        if requests == 0 || requests > 1_000_000 {
            return Err(format!(
                "rateLimit.requests {requests} is outside 1..=1000000"
            ));
        }
        let burst = burst.unwrap_or(requests);
        if burst == 0 || burst > 1_000_000 {
            return Err(format!("rateLimit.burst {burst} is outside 1..=1000000"));
        }
        Ok(Self {
            requests,
            interval_ms: parse_interval(interval)?,
            burst,
            per,
        })
    }

    /// Nanoseconds between two tokens.
    pub fn emission_ns(&self) -> u64 {
        (self.interval_ms.saturating_mul(1_000_000) / u64::from(self.requests.max(1))).max(1)
    }

    /// The interval as written back to people (`60s`).
    pub fn interval_text(&self) -> String {
        format!("{}s", self.interval_ms / 1000)
    }
}

/// `30s`, `5m`, `1h`: a positive whole number and a unit, 1s..=24h.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    let bad = || format!("rateLimit.interval {s:?} is not <n>s, <n>m or <n>h between 1s and 24h");
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let ms = match unit {
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
        return Err(bad());
    }
    Ok(ms)
}
