//! Dependencies: which objects are local (sealed in the store or held as small results),
//! which parked tasks wait for which of them, and which were asked from elsewhere.
//!
//! A task is parked with the arguments it misses and leaves when the last one arrives. An
//! object that leaves the store (eviction) is no longer local; the scheduler parks the
//! queued tasks that take it again and asks for it (a pull), once however many wait.

use std::collections::{HashMap, HashSet};

use rayd_common::id::{ObjectId, TaskId};

use super::task::Task;

#[derive(Debug, Default)]
pub struct Dependencies {
    local: HashSet<ObjectId>,
    /// Parked tasks and how many of their arguments are still missing.
    waiting: HashMap<TaskId, (Task, usize)>,
    /// Object -> the parked tasks that miss it.
    waiters: HashMap<ObjectId, Vec<TaskId>>,
    /// Objects asked from elsewhere, not local yet.
    pulling: HashSet<ObjectId>,
}

impl Dependencies {
    pub fn is_local(&self, id: &ObjectId) -> bool {
        self.local.contains(id)
    }

    /// The arguments of `task` that are not local.
    pub fn missing(&self, task: &Task) -> Vec<ObjectId> {
        task.dependencies()
            .into_iter()
            .filter(|id| !self.local.contains(id))
            .collect()
    }

    /// Parks `task` until every object of `missing` (not empty, each once) is local.
    pub fn park(&mut self, task: Task, missing: Vec<ObjectId>) {
        debug_assert!(!missing.is_empty());
        for id in &missing {
            self.waiters.entry(*id).or_default().push(task.id);
        }
        self.waiting.insert(task.id, (task, missing.len()));
    }

    /// `id` is local now: returns the parked tasks that have every argument, and whether
    /// it was being pulled (the pull can stop).
    pub fn arrived(&mut self, id: ObjectId) -> (Vec<Task>, bool) {
        self.local.insert(id);
        let pulled = self.pulling.remove(&id);
        let mut ready = Vec::new();
        for task_id in self.waiters.remove(&id).unwrap_or_default() {
            if let Some((_, missing)) = self.waiting.get_mut(&task_id) {
                *missing -= 1;
                if *missing == 0 {
                    if let Some((task, _)) = self.waiting.remove(&task_id) {
                        ready.push(task);
                    }
                }
            }
        }
        (ready, pulled)
    }

    /// `id` left the store; returns whether it was local.
    pub fn departed(&mut self, id: &ObjectId) -> bool {
        self.local.remove(id)
    }

    /// Notes that `id` is wanted from elsewhere; true when nobody asked for it yet (the
    /// caller then starts the pull).
    pub fn want(&mut self, id: ObjectId) -> bool {
        !self.local.contains(&id) && self.pulling.insert(id)
    }

    /// The pull of `id` ended without bringing it (its task runs again instead): the next
    /// `want` starts another.
    pub fn pull_ended(&mut self, id: &ObjectId) {
        self.pulling.remove(id);
    }

    /// Whether `id` is being pulled.
    pub fn is_pulling(&self, id: &ObjectId) -> bool {
        self.pulling.contains(id)
    }

    /// Whether a parked task waits for `id`.
    pub fn awaited(&self, id: &ObjectId) -> bool {
        self.waiters.contains_key(id)
    }

    /// Whether the task `id` is parked here.
    pub fn contains(&self, id: &TaskId) -> bool {
        self.waiting.contains_key(id)
    }

    /// Takes out the parked tasks for which `pick` holds (they will not run).
    pub fn take_where(&mut self, pick: impl Fn(&Task) -> bool) -> Vec<Task> {
        let ids: Vec<TaskId> = self
            .waiting
            .iter()
            .filter(|(_, (task, _))| pick(task))
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Takes a parked task out (it will not run).
    pub fn remove(&mut self, task: &TaskId) -> Option<Task> {
        self.waiting.remove(task).map(|(task, _)| task)
    }

    /// How many tasks are parked.
    pub fn parked(&self) -> usize {
        self.waiting.len()
    }
}
