//! The references this process holds to the objects it put itself, so that an object
//! goes from the store when the last of them goes, as in Ray.
//!
//! Only a `ray.put` whose ID never left this process is freed this way: once its ID is
//! passed to a task (or an actor), or pickled into anything (a value, another object, a
//! copy), another process may hold it, and without distributed reference counting
//! nothing here can tell when that one lets go; such an object stays until the store
//! spills or evicts it, as every object did before. Task results are not tracked either
//! (their task may still be running, or may be run again from its lineage).
//!
//! The language binding tells the registry about every handle it makes or drops
//! ([`referenced`], [`released`]); IDs it does not track cost one atomic load, or one
//! map lookup while any put is tracked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rayd_common::id::ObjectId;
use rayd_plasma_client::PlasmaClient;

#[derive(Default)]
struct Registry {
    /// Handles alive in this process, per tracked put.
    handles: HashMap<ObjectId, u32>,
    /// The store connection of the core worker that made the puts (gone with it).
    store: Weak<PlasmaClient>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// How many puts are tracked: the fast path for everything else.
static TRACKED: AtomicUsize = AtomicUsize::new(0);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let registry = registry.get_or_insert_with(Registry::default);
    let result = f(registry);
    TRACKED.store(registry.handles.len(), Ordering::Relaxed);
    result
}

/// A core worker starts: its puts are freed through `store`. Puts of an earlier core
/// worker of this process are forgotten (their store may be gone).
pub(crate) fn attach(store: &Arc<PlasmaClient>) {
    with(|r| {
        r.handles.clear();
        r.store = Arc::downgrade(store);
    });
}

/// `id` was just put by this process: its first handle is about to be made.
pub(crate) fn put(id: ObjectId) {
    with(|r| {
        r.handles.insert(id, 0);
    });
}

/// A handle of `id` was made (a put's, a copy, or one made from its bytes).
pub fn referenced(id: &ObjectId) {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return;
    }
    with(|r| {
        if let Some(count) = r.handles.get_mut(id) {
            *count += 1;
        }
    });
}

/// A handle of `id` went; the object is freed when it was the last one.
pub fn released(id: &ObjectId) {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let store = with(|r| {
        let count = r.handles.get_mut(id)?;
        *count = count.saturating_sub(1);
        if *count > 0 {
            return None;
        }
        r.handles.remove(id);
        r.store.upgrade()
    });
    if let Some(store) = store {
        store.delete_quietly(std::slice::from_ref(id));
    }
}

/// `id` left this process (a task's argument, or pickled): it is never freed from here.
pub fn shared(id: &ObjectId) {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return;
    }
    with(|r| {
        r.handles.remove(id);
    });
}

/// Whether `id` is a put of this process that would be freed with its last handle.
pub fn is_tracked(id: &ObjectId) -> bool {
    TRACKED.load(Ordering::Relaxed) > 0 && with(|r| r.handles.contains_key(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is one per process: its cases run in one test, in order.
    #[test]
    fn handles_are_counted_and_shared_ids_are_forgotten() {
        let a = ObjectId::random();
        let b = ObjectId::random();
        let other = ObjectId::random();
        put(a);
        referenced(&a);
        referenced(&a); // a copy
        referenced(&other);
        assert!(is_tracked(&a));
        assert!(!is_tracked(&other));
        released(&a);
        assert!(is_tracked(&a), "one handle is left");
        released(&a);
        assert!(
            !is_tracked(&a),
            "the last handle went: freed (no store here)"
        );

        put(b);
        referenced(&b);
        shared(&b);
        assert!(!is_tracked(&b), "passed on: never freed from here");
        released(&b);
        assert_eq!(TRACKED.load(Ordering::Relaxed), 0);
    }
}
