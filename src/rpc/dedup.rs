//! Duplicate suppression by `_unique_id`, like oslo.messaging's `_MsgIdCache`.
//!
//! A broker redelivers a message whose ack was lost (for example when the
//! connection dropped); the same `_unique_id` must then be handled only once.
//! oslo keeps the last 16 ids per listener; we keep more because we receive
//! more concurrently, and the memory is trivial.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// A bounded set of recently seen message ids.
pub struct SeenIds {
    capacity: usize,
    inner: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl SeenIds {
    /// Remembers up to `capacity` ids; the oldest are forgotten first.
    pub fn new(capacity: usize) -> Self {
        SeenIds { capacity: capacity.max(1), inner: Mutex::new((VecDeque::new(), HashSet::new())) }
    }

    /// Records `id`; returns `false` when it was already seen (a duplicate).
    pub fn first_time(&self, id: &str) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (order, set) = &mut *guard;
        if set.contains(id) {
            return false;
        }
        if order.len() >= self.capacity
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        order.push_back(id.to_string());
        set.insert(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_detected_and_old_ids_forgotten() {
        let seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c")); // evicts a
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("c"));
    }
}
