//! Restart backoff for a child that keeps failing: the delay doubles per consecutive failure up
//! to a cap, and resets once a child had stayed up for a while. Shared by the pool and the bridge.

use std::time::{Duration, Instant};

use super::StdioError;
use super::process::ChildProcess;

/// A crashed child that had been up this long restarts without backoff.
pub const HEALTHY_UPTIME: Duration = Duration::from_secs(60);
/// A restart delay up to this long is waited out by the caller; a longer one fails fast.
const MAX_WAIT_FOR_RESTART: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RestartBackoff {
    base: Duration,
    max: Duration,
    failures: u32,
    retry_at: Option<Instant>,
}

impl RestartBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
            retry_at: None,
        }
    }

    /// The delay after `failures` consecutive failures.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A child that is gone: counts as a failure unless it was stopped on purpose.
    pub fn child_gone(&mut self, child: &ChildProcess) {
        if child.stop_requested() {
            return;
        }
        if child.age() >= HEALTHY_UPTIME {
            self.failures = 0;
        }
        self.failed();
    }

    /// A start that failed (spawn or initialize).
    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + self.delay(self.failures));
    }

    /// When the last failure's delay is over (None: no failure yet).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Waits out a short remaining delay; a long one is an error the caller can show.
    pub async fn wait(&self) -> Result<(), StdioError> {
        let Some(at) = self.retry_at else {
            return Ok(());
        };
        let wait = at.saturating_duration_since(Instant::now());
        if wait > MAX_WAIT_FOR_RESTART {
            return Err(StdioError::Restarting(wait));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_its_cap() {
        let b = RestartBackoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            (ms(1), ms(2), ms(3), ms(5), ms(40)),
            (100, 200, 400, 1000, 1000)
        );
    }

    #[tokio::test]
    async fn a_long_delay_fails_fast_and_a_short_one_is_waited() {
        let mut b = RestartBackoff::new(Duration::from_millis(20), Duration::from_secs(30));
        assert!(b.wait().await.is_ok());
        b.failed();
        let started = Instant::now();
        assert!(b.wait().await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(15));
        for _ in 0..10 {
            b.failed();
        }
        assert!(matches!(b.wait().await, Err(StdioError::Restarting(_))));
    }
}
