//! Per-object exponential backoff for failed reconciles (kube-runtime has none built in). I/O: none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Failure counts per object key, turned into delays that double from `base` up to `max`, with ±10% jitter so
/// that many objects failing together do not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_mins(5))
    }
}

impl Backoff {
    /// A backoff from `base` doubling to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { failures: Mutex::new(HashMap::new()), base, max }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failure(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = (*n - 1).min(20);
        let delay = self.base.saturating_mul(1 << exp).min(self.max);
        let jitter = rand::random_range(0.9..1.1);
        delay.mul_f64(jitter)
    }

    /// Forgets the failures of `key` after a success.
    pub fn success(&self, key: &str) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    /// How many consecutive failures `key` has.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap_and_resets_on_success() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let d: Vec<f64> = (0..6).map(|_| b.failure("a").as_secs_f64()).collect();
        for (got, want) in d.iter().zip([1.0, 2.0, 4.0, 8.0, 10.0, 10.0]) {
            assert!((got - want).abs() <= want * 0.1 + 1e-9, "{got} vs {want}");
        }
        assert_eq!(b.failures("b"), 0, "keys are independent");
        b.success("a");
        assert_eq!(b.failures("a"), 0);
        assert!(b.failure("a") <= Duration::from_millis(1100));
    }
}
