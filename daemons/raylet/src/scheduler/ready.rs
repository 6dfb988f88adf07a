//! Tasks whose arguments are local, queued by resource shape: every task of a shape fits
//! exactly when the first does, so a scheduling pass looks at one task per shape, not one
//! per queued task.
//!
//! The queues also count, per object, the queued tasks that take it as an argument, so
//! that an object leaving the store finds the tasks to take back without a scan when none
//! takes it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rayd_common::id::{ObjectId, TaskId};

use super::task::{Shape, Task};

#[derive(Debug, Default)]
pub struct ReadyQueues {
    queues: BTreeMap<Shape, VecDeque<Task>>,
    /// Object -> how many queued tasks take it.
    args: HashMap<ObjectId, u32>,
    len: usize,
}

impl ReadyQueues {
    /// Queues `task` at the back, or at the front (a retry, a task taken back).
    pub fn push(&mut self, task: Task, first: bool) {
        self.count_args(&task, true);
        self.len += 1;
        let queue = self.queues.entry(task.shape()).or_default();
        if first {
            queue.push_front(task);
        } else {
            queue.push_back(task);
        }
    }

    fn count_args(&mut self, task: &Task, add: bool) {
        for id in task.dependencies() {
            if add {
                *self.args.entry(id).or_insert(0) += 1;
            } else if let Some(n) = self.args.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.args.remove(&id);
                }
            }
        }
    }

    /// The shapes that have queued tasks, in order.
    pub fn shapes(&self) -> Vec<Shape> {
        self.queues.keys().cloned().collect()
    }

    pub fn front(&self, shape: &Shape) -> Option<&Task> {
        self.queues.get(shape).and_then(VecDeque::front)
    }

    pub fn queued(&self, shape: &Shape) -> usize {
        self.queues.get(shape).map_or(0, VecDeque::len)
    }

    /// Takes the first task of `shape`.
    pub fn pop(&mut self, shape: &Shape) -> Option<Task> {
        let queue = self.queues.get_mut(shape)?;
        let task = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(shape);
        }
        let task = task?;
        self.len -= 1;
        self.count_args(&task, false);
        Some(task)
    }

    /// Takes out every queued task for which `pick` holds.
    pub fn take_where(&mut self, mut pick: impl FnMut(&Task) -> bool) -> Vec<Task> {
        let mut taken = Vec::new();
        for queue in self.queues.values_mut() {
            let (out, keep): (VecDeque<Task>, VecDeque<Task>) =
                std::mem::take(queue).into_iter().partition(|t| pick(t));
            *queue = keep;
            taken.extend(out);
        }
        self.queues.retain(|_, q| !q.is_empty());
        for task in &taken {
            self.len -= 1;
            self.count_args(task, false);
        }
        taken
    }

    /// Takes out the queued tasks that take `id` as an argument.
    pub fn take_dependents(&mut self, id: &ObjectId) -> Vec<Task> {
        if !self.args.contains_key(id) {
            return Vec::new();
        }
        self.take_where(|t| t.dependencies().contains(id))
    }

    /// Takes out the task `id`, if queued.
    pub fn remove(&mut self, id: &TaskId) -> Option<Task> {
        self.take_where(|t| t.id == *id).pop()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
