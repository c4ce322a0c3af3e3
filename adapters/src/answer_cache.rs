//! A small, bounded cache of the API server's answers (TokenReview, SubjectAccessReview), keyed by a hash of what
//! was asked, so tokens are never kept. Shared by the secure metrics server and the REST API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Answers kept, each until its own deadline. At most `capacity` are kept: when full, expired ones are dropped,
/// and if none has expired, all are (a flood of made-up tokens cannot grow it).
pub(crate) struct AnswerCache<V> {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], (Instant, V)>>,
}

impl<V: Clone> AnswerCache<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The answer kept for `key`, unless it expired.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).filter(|(until, _)| *until > Instant::now()).map(|(_, v)| v.clone())
    }

    /// How many answers are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Keeps `value` for `ttl`.
    pub(crate) fn put(&self, key: [u8; 32], value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (now + ttl, value));
    }
}

/// The key of a question made of `parts` (separated, so `["ab", "c"]` and `["a", "bc"]` differ).
pub(crate) fn key(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}
