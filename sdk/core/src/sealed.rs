//! Which objects are sealed in the local store, learned from the store's event stream, so
//! that `wait` blocks on a condition variable instead of polling the store.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rayd_common::id::ObjectId;
use rayd_plasma::client::{EventKind, Subscription};

use crate::CoreError;

#[derive(Debug, Default)]
struct Known {
    sealed: HashSet<ObjectId>,
    closed: bool,
}

/// The set of sealed objects since subscribing, kept current by a thread.
#[derive(Debug, Clone)]
pub(crate) struct SealedObjects {
    inner: Arc<(Mutex<Known>, Condvar)>,
}

impl SealedObjects {
    /// Subscribes to the store at `socket` and follows its events on a thread.
    pub fn follow(socket: &Path) -> Result<Self, CoreError> {
        let mut subscription = Subscription::connect(socket)?;
        let inner: Arc<(Mutex<Known>, Condvar)> = Arc::default();
        let shared = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("rayd-sealed".into())
            .spawn(move || {
                let (known, changed) = &*shared;
                loop {
                    let event = subscription.next(None);
                    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        Ok(Some(event)) if event.kind == EventKind::Sealed => {
                            known.sealed.insert(event.id);
                        }
                        Ok(Some(event)) => {
                            known.sealed.remove(&event.id);
                        }
                        Ok(None) => continue,
                        Err(_) => {
                            known.closed = true;
                            changed.notify_all();
                            return;
                        }
                    }
                    changed.notify_all();
                }
            })
            .map_err(CoreError::Runtime)?;
        Ok(Self { inner })
    }

    /// Marks objects found sealed by asking the store directly (sealed before subscribing).
    pub fn insert(&self, id: ObjectId) {
        let (known, _) = &*self.inner;
        known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sealed
            .insert(id);
    }

    /// Waits until at least `wanted` of `ids` are sealed or `timeout` passes; returns which are.
    pub fn wait(&self, ids: &[ObjectId], wanted: usize, timeout: Option<Duration>) -> Vec<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (known, changed) = &*self.inner;
        let mut guard = known.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let ready: Vec<bool> = ids.iter().map(|id| guard.sealed.contains(id)).collect();
            if ready.iter().filter(|r| **r).count() >= wanted || guard.closed {
                return ready;
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return ready,
                },
                None => Duration::from_secs(3600),
            };
            guard = changed
                .wait_timeout(guard, remaining)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
