//! The references this process holds to the objects it made itself (its puts, and the
//! results of the tasks it submitted), so that an object goes from the stores when nothing
//! here needs it any more, as in Ray.
//!
//! A `ray.put` of this process is needed while a handle of it (an `ObjectID`) lives here,
//! and while a task it was passed to (as a top-level argument) may still need it: until
//! each of that task's results has arrived here and no handle of the result is left (a
//! result whose handles remain may have to be made again from its lineage, which needs
//! the argument). A task's result that arrived here through the store goes when its last
//! handle does, from this node's store and from every other node's. A put whose ID was
//! pickled (into a value, another object, a copy), or passed to an actor's creation (a
//! restart runs it again) or to a task without results, may be needed anywhere for any
//! time: without distributed reference counting nothing here can tell when that ends, so
//! such a put stays until the store spills or evicts it, as every object did before. So
//! does a task result pickled or passed on, and one whose last handle went before it
//! arrived here, unless it holds puts (nothing here tells when, or whether, it will
//! arrive: counting it until then could keep its entry for good).
//!
//! The language binding tells the registry about every handle it makes or drops
//! ([`referenced`], [`released`]); IDs it does not track cost one atomic load, or one
//! map lookup while anything is tracked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rayd_common::id::ObjectId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_plasma_client::PlasmaClient;

use crate::raylet_client::RayletConnection;

/// Where the objects nothing here needs go: this node's store, and, for puts passed to
/// tasks (which may have pulled copies to other nodes) and task results, the raylet,
/// which has the other nodes drop their copies (as `ray.internal.free` does).
#[derive(Debug)]
pub(crate) struct Releaser {
    pub plasma: Arc<PlasmaClient>,
    pub raylet: Arc<RayletConnection>,
}

impl Releaser {
    fn release(&self, here: &[ObjectId], everywhere: &[ObjectId]) {
        self.plasma.delete_quietly(here);
        if everywhere.is_empty() {
            return;
        }
        let free = pb::Free {
            object_ids: everywhere.iter().map(|id| id.as_bytes().to_vec()).collect(),
            all_nodes: false,
        };
        if let Err(e) = self.raylet.send(pb::client_message::Kind::Free(free)) {
            log::debug!(objects = everywhere.len(); "cannot have other nodes drop freed objects: {e}");
        }
    }
}

#[derive(Debug)]
enum Kind {
    /// A `ray.put` of this process: freed when nothing holds it.
    Put {
        /// Results of tasks it was passed to that still hold it.
        holders: u32,
        /// Whether it was passed to a task (its copies may be on other nodes).
        passed: bool,
    },
    /// A result of a task this process submitted: it holds the puts its task took until
    /// it has arrived and its last handle went, and then goes itself if it came through
    /// the store.
    Result {
        arrived: bool,
        /// It arrived through this node's store (not only inline, in a message).
        in_store: bool,
        holds: Vec<ObjectId>,
    },
}

#[derive(Debug)]
struct Entry {
    /// Handles alive in this process.
    handles: u32,
    kind: Kind,
}

fn holds_puts(entry: &Entry) -> bool {
    matches!(&entry.kind, Kind::Result { holds, .. } if !holds.is_empty())
}

#[derive(Default)]
struct Registry {
    entries: HashMap<ObjectId, Entry>,
    /// How many of the entries are results that hold puts.
    holding: usize,
    /// The connections of the core worker that made the puts (gone with it).
    releaser: Weak<Releaser>,
}

/// The objects settled by one call: those to drop from this node's store, and those of
/// them whose copies elsewhere go too.
#[derive(Default)]
struct Freed {
    here: Vec<ObjectId>,
    everywhere: Vec<ObjectId>,
}

impl Registry {
    fn insert(&mut self, id: ObjectId, entry: Entry) {
        if holds_puts(&entry) {
            self.holding += 1;
        }
        if let Some(earlier) = self.entries.insert(id, entry) {
            self.holding -= usize::from(holds_puts(&earlier));
        }
    }

    fn remove(&mut self, id: &ObjectId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.holding -= usize::from(holds_puts(&entry));
        Some(entry)
    }

    /// Drops `id`'s entry when nothing holds it any more, noting the objects to free.
    fn settle(&mut self, id: ObjectId, free: &mut Freed) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        let done = entry.handles == 0
            && match &entry.kind {
                Kind::Put { holders, .. } => *holders == 0,
                // Not arrived: its puts wait for it.
                Kind::Result { arrived, holds, .. } => *arrived || holds.is_empty(),
            };
        if !done {
            return;
        }
        match self.remove(&id).map(|e| e.kind) {
            Some(Kind::Put { passed, .. }) => {
                free.here.push(id);
                if passed {
                    free.everywhere.push(id);
                }
            }
            Some(Kind::Result {
                arrived,
                in_store,
                holds,
            }) => {
                // One that came inline only is in no store of this node, and its copy on
                // the node that ran it (if any) is that node's to keep while a worker
                // there reads it.
                if arrived && in_store {
                    free.here.push(id);
                    free.everywhere.push(id);
                }
                for put in holds {
                    if let Some(Entry {
                        kind: Kind::Put { holders, .. },
                        ..
                    }) = self.entries.get_mut(&put)
                    {
                        *holders = holders.saturating_sub(1);
                        self.settle(put, free);
                    }
                }
            }
            None => {}
        }
    }
}

impl Registry {
    /// Stops tracking `id`, which may now be needed anywhere for any time: a result's puts
    /// then are too (it may be made again from them), so they stop being tracked as well.
    fn give_up(&mut self, id: &ObjectId) {
        if let Some(Entry {
            kind: Kind::Result { holds, .. },
            ..
        }) = self.remove(id)
        {
            for put in holds {
                self.remove(&put);
            }
        }
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// How many objects are tracked: the fast path for everything else.
static TRACKED: AtomicUsize = AtomicUsize::new(0);
/// How many tracked results hold puts: while none does, a result that arrives in a
/// message (in no store here) settles nothing, and its arrival is not worth the lock.
static HOLDING: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on the registry, then frees the puts it settled.
fn with<R>(f: impl FnOnce(&mut Registry, &mut Freed) -> R) -> R {
    let mut free = Freed::default();
    let (result, releaser) = {
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let registry = registry.get_or_insert_with(Registry::default);
        let result = f(registry, &mut free);
        TRACKED.store(registry.entries.len(), Ordering::Relaxed);
        HOLDING.store(registry.holding, Ordering::Relaxed);
        #[cfg(test)]
        tests::FREED.lock().unwrap().extend(
            free.here
                .iter()
                .map(|id| (*id, free.everywhere.contains(id))),
        );
        let releaser = (!free.here.is_empty())
            .then(|| registry.releaser.upgrade())
            .flatten();
        (result, releaser)
    };
    if let Some(releaser) = releaser {
        releaser.release(&free.here, &free.everywhere);
    }
    result
}

/// Whether anything is tracked (else every call here returns at once).
pub(crate) fn tracking() -> bool {
    TRACKED.load(Ordering::Relaxed) > 0
}

/// A core worker starts: its puts are freed through `releaser`. Objects of an earlier
/// core worker of this process are forgotten (their store may be gone).
pub(crate) fn attach(releaser: &Arc<Releaser>) {
    with(|r, _| {
        r.entries.clear();
        r.holding = 0;
        r.releaser = Arc::downgrade(releaser);
    });
}

/// `id` was just put by this process: its first handle is about to be made.
pub(crate) fn put(id: ObjectId) {
    with(|r, _| {
        r.insert(
            id,
            Entry {
                handles: 0,
                kind: Kind::Put {
                    holders: 0,
                    passed: false,
                },
            },
        );
    });
}

/// A task is about to be submitted with `args` (its top-level object arguments) and
/// `results`; `rerunnable` when the task may run again after its results arrived (an
/// actor's creation, run again at each restart). Each result's first handle is counted
/// here, before the task can finish (its result could arrive, and seem unneeded, before
/// the submitter made the handle): the handle the submitter makes of each result takes
/// that count over, without calling [`referenced`].
pub(crate) fn submitted(args: &[ObjectId], results: &[ObjectId], rerunnable: bool) {
    let tracks_results = !results.is_empty() && !rerunnable;
    if !tracks_results && (!tracking() || args.is_empty()) {
        return;
    }
    with(|r, _| {
        // A result passed on may have to be made again while that task waits for it: it
        // keeps the puts its own task took.
        for id in args {
            if matches!(
                r.entries.get(id),
                Some(Entry {
                    kind: Kind::Result { .. },
                    ..
                })
            ) {
                r.give_up(id);
            }
        }
        let puts: Vec<ObjectId> = args
            .iter()
            .filter(|id| {
                matches!(
                    r.entries.get(id),
                    Some(Entry {
                        kind: Kind::Put { .. },
                        ..
                    })
                )
            })
            .copied()
            .collect();
        if !tracks_results {
            // Nothing tells when such a task no longer needs them.
            for put in &puts {
                r.remove(put);
            }
            return;
        }
        for put in &puts {
            if let Some(Entry {
                kind: Kind::Put { holders, passed },
                ..
            }) = r.entries.get_mut(put)
            {
                *holders += results.len() as u32;
                *passed = true;
            }
        }
        for result in results {
            r.insert(
                *result,
                Entry {
                    handles: 1,
                    kind: Kind::Result {
                        arrived: false,
                        in_store: false,
                        holds: puts.clone(),
                    },
                },
            );
        }
    });
}

/// A task whose `results` [`submitted`] counted could not be submitted: no handle of them
/// will be made, and the puts they hold are not needed for them.
pub(crate) fn withdrawn(results: &[ObjectId]) {
    if !tracking() {
        return;
    }
    with(|r, free| {
        for id in results {
            if let Some(Entry {
                handles,
                kind: Kind::Result { arrived, .. },
            }) = r.entries.get_mut(id)
            {
                // Never made: settled as if it arrived inline (nothing of it to free).
                *handles = 0;
                *arrived = true;
                r.settle(*id, free);
            }
        }
    });
}

/// A result of a task submitted here arrived (its task will not run again unless it is
/// lost): `in_store` when through this node's store.
pub(crate) fn arrived(id: &ObjectId, in_store: bool) {
    arrived_all(std::slice::from_ref(id), in_store);
}

/// [`arrived`] for each of `ids`, in one go.
pub(crate) fn arrived_all(ids: &[ObjectId], in_store: bool) {
    if !tracking() {
        return;
    }
    with(|r, free| {
        for id in ids {
            if let Some(Entry {
                kind:
                    Kind::Result {
                        arrived,
                        in_store: stored,
                        ..
                    },
                ..
            }) = r.entries.get_mut(id)
            {
                *arrived = true;
                *stored |= in_store;
                r.settle(*id, free);
            }
        }
    });
}

/// Whether a result that arrives in a message may settle anything (it holds puts): else
/// its arrival need not be told (its entry goes with its last handle).
pub(crate) fn awaits_messages() -> bool {
    HOLDING.load(Ordering::Relaxed) > 0
}

/// A handle of `id` was made (a put's, a result's, a copy, or one made from its bytes).
pub fn referenced(id: &ObjectId) {
    if !tracking() {
        return;
    }
    with(|r, _| {
        if let Some(entry) = r.entries.get_mut(id) {
            entry.handles += 1;
        }
    });
}

/// A handle of `id` went; what nothing needs any more is freed.
pub fn released(id: &ObjectId) {
    if !tracking() {
        return;
    }
    with(|r, free| {
        if let Some(entry) = r.entries.get_mut(id) {
            entry.handles = entry.handles.saturating_sub(1);
            r.settle(*id, free);
        }
    });
}

/// `id` was pickled, so it may be held anywhere: a put is never freed from here, and a
/// result keeps the puts its task took.
pub fn shared(id: &ObjectId) {
    if !tracking() {
        return;
    }
    with(|r, _| r.give_up(id));
}

/// Whether `id` is tracked (a put of this process, or a result of a task it submitted).
pub fn is_tracked(id: &ObjectId) -> bool {
    tracking() && with(|r, _| r.entries.contains_key(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the registry freed: (object, from every node too).
    pub(super) static FREED: Mutex<Vec<(ObjectId, bool)>> = Mutex::new(Vec::new());

    fn freed() -> Vec<(ObjectId, bool)> {
        std::mem::take(&mut *FREED.lock().unwrap())
    }

    // The registry is one per process: its cases run in one test, in order.
    #[test]
    fn puts_go_with_their_last_handle_and_the_results_of_the_tasks_they_were_passed_to() {
        let (a, b, other) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
        put(a);
        referenced(&a);
        referenced(&a); // a copy
        referenced(&other);
        assert!(is_tracked(&a) && !is_tracked(&other));
        released(&a);
        assert!(is_tracked(&a), "one handle is left");
        released(&a);
        assert!(!is_tracked(&a), "the last handle went");
        assert_eq!(
            freed(),
            vec![(a, false)],
            "freed here only: never passed on"
        );

        // Pickled: never freed from here.
        put(b);
        referenced(&b);
        shared(&b);
        released(&b);
        assert!(!is_tracked(&b));
        assert_eq!(freed(), vec![]);

        // Passed to a task: held until its result arrived and has no handle left.
        let (arg, result) = (ObjectId::random(), ObjectId::random());
        put(arg);
        referenced(&arg);
        submitted(&[arg, other], &[result], false); // counts the handle made of `result`
        released(&arg);
        assert!(is_tracked(&arg), "its task's result has not arrived");
        arrived(&result, true);
        assert!(is_tracked(&arg), "its task's result still has a handle");
        released(&result);
        assert!(!is_tracked(&arg) && !is_tracked(&result));
        assert_eq!(
            freed(),
            vec![(result, true), (arg, true)],
            "the result and its argument, from every node"
        );

        // A result that came inline only is in no store here.
        let result = ObjectId::random();
        submitted(&[], &[result], false);
        arrived(&result, false);
        released(&result);
        assert!(!is_tracked(&result));
        assert_eq!(freed(), vec![]);

        // A result that arrives before its handle is made is not taken for unneeded.
        let result = ObjectId::random();
        submitted(&[], &[result], false);
        arrived(&result, true);
        assert!(is_tracked(&result), "its handle is counted already");
        assert_eq!(freed(), vec![]);
        released(&result);
        assert_eq!(freed(), vec![(result, true)]);

        // A task that could not be submitted: its put is freed with its last handle.
        let (arg, result) = (ObjectId::random(), ObjectId::random());
        put(arg);
        referenced(&arg);
        submitted(&[arg], &[result], false);
        withdrawn(&[result]);
        assert!(!is_tracked(&result));
        released(&arg);
        assert_eq!(freed(), vec![(arg, true)]);

        // A result dropped before it arrived (the task may not have run yet).
        let (arg, result) = (ObjectId::random(), ObjectId::random());
        put(arg);
        referenced(&arg);
        submitted(&[arg], &[result], false);
        released(&result);
        released(&arg);
        assert!(is_tracked(&arg), "the task may not have run");
        arrived(&result, true);
        assert!(!is_tracked(&arg));
        assert_eq!(
            freed(),
            vec![(result, true), (arg, true)],
            "the result too: counted until it arrived, for its argument's sake"
        );

        // A result passed on keeps its arguments for good; so does an actor's creation.
        let (arg, result, creation_arg) =
            (ObjectId::random(), ObjectId::random(), ObjectId::random());
        put(arg);
        referenced(&arg);
        submitted(&[arg], &[result], false);
        shared(&result);
        released(&arg);
        put(creation_arg);
        referenced(&creation_arg);
        submitted(&[creation_arg], &[ObjectId::random()], true);
        released(&creation_arg);
        assert!(!is_tracked(&creation_arg), "never freed: no longer counted");
        assert!(
            !is_tracked(&arg),
            "held for good by a result passed on: no longer counted"
        );

        // A result passed to another task: it keeps its own task's puts for good.
        let (arg, result) = (ObjectId::random(), ObjectId::random());
        put(arg);
        referenced(&arg);
        submitted(&[arg], &[result], false);
        let next = ObjectId::random();
        submitted(&[result], &[next], false);
        assert!(
            !is_tracked(&arg) && !is_tracked(&result),
            "never freed: no longer counted"
        );
        released(&arg);
        arrived(&result, true);
        released(&result);
        released(&next);
        assert_eq!(freed(), vec![]);
        assert_eq!(TRACKED.load(Ordering::Relaxed), 0, "nothing left behind");
    }
}
