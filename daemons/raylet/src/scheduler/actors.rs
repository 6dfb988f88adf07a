//! The actors whose creation task reached this raylet: each is bound to a worker of its
//! own, runs its methods one at a time in submission order, and holds resources for life
//! when it asked for them (otherwise each call takes one CPU while it runs). Up to
//! [`PIPELINE_DEPTH`] calls whose arguments are local are sent to the actor's worker ahead
//! of time, so it goes from one call to the next without waiting for the raylet; a call's
//! resources are taken when it starts. A dead actor's worker is replaced and the
//! constructor run again while `max_restarts` allows; after that, and after `ray.kill`,
//! pending and later calls fail with actor-died errors.
//!
//! This module owns the actors' state; the scheduler decides when their calls run.

use std::collections::{HashMap, VecDeque};

use rayd_common::id::{ActorId, JobId, ObjectId};

use super::task::Task;
use super::ConnId;
use rayd_common::resources::{Amounts, Held};

/// Method calls sent to an actor's worker beyond the one it runs.
pub const PIPELINE_DEPTH: usize = 16;

/// Where an actor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorState {
    /// Its creation task waits for arguments, resources or a worker (again, on restart).
    Pending,
    /// Bound to a worker (its constructor may still be running).
    Alive,
    Dead(String),
}

impl ActorState {
    /// The name the GCS actor table stores.
    pub fn name(&self) -> &'static str {
        match self {
            ActorState::Pending => "pending",
            ActorState::Alive => "alive",
            ActorState::Dead(_) => "dead",
        }
    }
}

#[derive(Debug)]
pub struct Actor {
    pub job: JobId,
    pub creation: Task,
    pub state: ActorState,
    pub worker: Option<ConnId>,
    /// Resources held for life (creation asked for them explicitly).
    pub held: Option<Held>,
    /// Method calls not sent to the worker yet, in submission order.
    pub queue: VecDeque<Task>,
    /// A method (or the constructor) runs on its worker now.
    pub running: bool,
    /// Calls sent to the worker to run after the running one, in order.
    pub inflight: VecDeque<Task>,
    pub restarts_left: u32,
}

/// What a worker's death means for its actor.
#[derive(Debug)]
pub struct Died {
    /// The creation task to run again (a restart), or the reason the actor is dead.
    pub restart: Result<Task, String>,
    /// Resources the actor held for life, to give back.
    pub held: Option<Held>,
    /// Calls that can no longer run (the actor is dead), to fail with the reason.
    pub failed: Vec<Task>,
}

/// The actors of this node.
#[derive(Debug, Default)]
pub struct Actors {
    actors: HashMap<ActorId, Actor>,
}

pub fn actor_id_of(task: &Task) -> Option<ActorId> {
    ActorId::from_slice(&task.spec.actor_id).ok()
}

impl Actors {
    /// Registers the actor that `creation` makes; returns the task to schedule (with no
    /// resources unless the actor holds them for life).
    pub fn create(&mut self, id: ActorId, mut creation: Task) -> Task {
        if !creation.spec.actor_holds_resources {
            creation.resources = Amounts::new();
        }
        self.actors.insert(
            id,
            Actor {
                job: creation.job,
                creation: creation.clone(),
                state: ActorState::Pending,
                worker: None,
                held: None,
                queue: VecDeque::new(),
                running: false,
                inflight: VecDeque::new(),
                restarts_left: creation.spec.max_restarts,
            },
        );
        creation
    }

    /// Forgets an actor (it moved to another node before it started here).
    pub fn remove(&mut self, id: &ActorId) -> Option<Actor> {
        self.actors.remove(id)
    }

    pub fn get(&self, id: &ActorId) -> Option<&Actor> {
        self.actors.get(id)
    }

    pub fn get_mut(&mut self, id: &ActorId) -> Option<&mut Actor> {
        self.actors.get_mut(id)
    }

    /// Why a call to `id` cannot run (the actor is unknown or dead), if it cannot.
    pub fn refusal(&self, id: &ActorId) -> Option<String> {
        match self.actors.get(id).map(|a| &a.state) {
            None => Some(format!("actor {id} is unknown on this node")),
            Some(ActorState::Dead(reason)) => Some(reason.clone()),
            Some(_) => None,
        }
    }

    /// Queues a method call behind the actor's earlier ones (see [`Self::refusal`]).
    pub fn enqueue(&mut self, id: ActorId, mut task: Task) {
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        task.resources = if actor.creation.spec.actor_holds_resources {
            Amounts::new()
        } else {
            Amounts::from([("CPU".to_string(), 1.0)])
        };
        actor.queue.push_back(task);
    }

    /// The creation task is about to run on `conn`: the worker becomes the actor's.
    pub fn bind(&mut self, id: ActorId, conn: ConnId) {
        if let Some(actor) = self.actors.get_mut(&id) {
            actor.worker = Some(conn);
            actor.state = ActorState::Alive;
            actor.running = true;
        }
    }

    /// Alive actors whose next call has every argument (per `local`).
    pub fn with_runnable_call(&self, local: impl Fn(&Task) -> bool) -> Vec<ActorId> {
        self.actors
            .iter()
            .filter(|(_, a)| a.state == ActorState::Alive && a.worker.is_some())
            .filter(|(_, a)| a.queue.front().is_some_and(&local))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The actor's worker died (or its actor was killed and its process is gone), maybe
    /// in the middle of `running`.
    pub fn worker_died(&mut self, id: ActorId, reason_if_dead: String) -> Option<Died> {
        let actor = self.actors.get_mut(&id)?;
        actor.worker = None;
        actor.running = false;
        // Calls sent ahead never started: they run on the restarted actor, or fail with it.
        while let Some(task) = actor.inflight.pop_back() {
            actor.queue.push_front(task);
        }
        let held = actor.held.take();
        let restart = match &actor.state {
            ActorState::Dead(reason) => Err(reason.clone()),
            _ if actor.restarts_left > 0 => {
                actor.restarts_left -= 1;
                actor.state = ActorState::Pending;
                Ok(actor.creation.clone())
            }
            _ => Err(reason_if_dead),
        };
        let failed = match &restart {
            Ok(_) => Vec::new(),
            Err(reason) => {
                actor.state = ActorState::Dead(reason.clone());
                actor.queue.drain(..).collect()
            }
        };
        Some(Died {
            restart,
            held,
            failed,
        })
    }

    /// `ray.kill`, or its driver left: the actor is dead, without restarts; returns its
    /// queued calls (to fail) and its worker, if bound.
    pub fn kill(&mut self, id: ActorId, reason: String) -> Option<(Vec<Task>, Option<ConnId>)> {
        let actor = self.actors.get_mut(&id)?;
        actor.restarts_left = 0;
        actor.state = ActorState::Dead(reason);
        Some((actor.queue.drain(..).collect(), actor.worker))
    }

    /// Every actor known here.
    pub fn ids(&self) -> Vec<ActorId> {
        self.actors.keys().copied().collect()
    }

    /// The live actors of `job`.
    pub fn of_job(&self, job: JobId) -> Vec<ActorId> {
        self.actors
            .iter()
            .filter(|(_, a)| a.job == job && !matches!(a.state, ActorState::Dead(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the call `task` is queued or sent ahead (not finished).
    pub fn has_call(&self, task: &rayd_common::id::TaskId) -> bool {
        self.actors.values().any(|a| {
            a.queue
                .iter()
                .chain(a.inflight.iter())
                .any(|t| t.id == *task)
        })
    }

    /// Whether a queued call takes `object`.
    pub fn awaits(&self, object: &ObjectId) -> bool {
        self.actors
            .values()
            .any(|a| a.queue.iter().any(|t| t.dependencies().contains(object)))
    }
}
