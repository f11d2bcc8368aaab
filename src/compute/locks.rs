//! Per-instance serialisation: two operations on one instance never
//! interleave (nova-compute's `utils.synchronized(instance.uuid)`), while
//! different instances proceed concurrently. Entries live only while held
//! or awaited, so memory does not grow with the instances ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A lock per instance uuid.
#[derive(Default)]
pub struct InstanceLocks {
    map: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// Held while an operation runs on one instance.
pub struct InstanceGuard {
    uuid: String,
    map: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl InstanceLocks {
    /// Waits for and takes the lock of `uuid`.
    pub async fn lock(&self, uuid: &str) -> InstanceGuard {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(uuid.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        InstanceGuard { uuid: uuid.to_string(), map: self.map.clone(), guard: Some(guard) }
    }

    /// How many instances have an entry (held or awaited).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no instance is locked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.guard.take());
        // Only the map holds the mutex now: nobody waits, remove the entry.
        if map.get(&self.uuid).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.uuid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn same_instance_serialises_others_do_not() {
        let locks = Arc::new(InstanceLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("a").await;
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // A different instance is not blocked by "a".
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock("b")).await;
        assert!(other.is_ok());
        drop(other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert!(locks.is_empty());
    }
}
