//! Actors on this node: each is bound to a worker of its own, runs its methods one at a
//! time in submission order, and holds resources for life when it asked for them
//! (otherwise each method call takes one CPU while it runs). Up to [`PIPELINE_DEPTH`]
//! calls whose arguments are local are sent to the actor's worker ahead of time, so the
//! worker goes from one call to the next without waiting for the raylet; the resources of
//! a call are taken when it starts (when the one before it is done). A dead actor's worker is
//! replaced and the constructor run again while `max_restarts` allows; after that, and
//! after `ray.kill`, pending and later calls fail with actor-died errors.

use std::collections::VecDeque;

use rayd_common::id::{ActorId, JobId};
use rayd_common::value;
use rayd_gcs::ActorInfo;

use super::{ConnId, Connection, Peer, Scheduler, Task, WorkerState};
use crate::gcs::GcsWrite;
use crate::resources::{Amounts, Held};

/// Method calls sent to an actor's worker beyond the one it runs.
const PIPELINE_DEPTH: usize = 16;

/// Where an actor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ActorState {
    /// Its creation task waits for arguments, resources or a worker (again, on restart).
    Pending,
    /// Bound to a worker (its constructor may still be running).
    Alive,
    Dead(String),
}

impl ActorState {
    fn name(&self) -> &'static str {
        match self {
            ActorState::Pending => "pending",
            ActorState::Alive => "alive",
            ActorState::Dead(_) => "dead",
        }
    }
}

/// An actor whose creation task reached this raylet.
#[derive(Debug)]
pub(super) struct Actor {
    job: JobId,
    creation: Task,
    pub(super) state: ActorState,
    worker: Option<ConnId>,
    /// Resources held for life (creation asked for them explicitly).
    held: Option<Held>,
    /// Method calls not dispatched yet, in submission order.
    queue: VecDeque<Task>,
    /// A method (or the constructor) runs on its worker now.
    running: bool,
    /// Calls sent to the worker to run after the running one, in order.
    inflight: VecDeque<Task>,
    restarts_left: u32,
}

fn actor_id_of(task: &Task) -> Option<ActorId> {
    ActorId::from_slice(&task.spec.actor_id).ok()
}

impl Scheduler {
    fn record_actor(&self, id: ActorId) {
        let Some(actor) = self.actors.get(&id) else {
            return;
        };
        let worker = actor
            .worker
            .and_then(|conn| self.conns.get(&conn))
            .and_then(|c| match &c.peer {
                Peer::Worker(w) => Some(w.id),
                _ => None,
            });
        let _ = self.gcs.send(GcsWrite::Actor(ActorInfo {
            actor_id: id,
            job_id: actor.job,
            node: Some(self.settings.node_id),
            worker,
            state: actor.state.name().to_string(),
        }));
    }

    /// An actor's creation task arrived: register the actor, then schedule the task like
    /// any other (its resources are those it holds for life, if any).
    pub(super) fn create_actor(&mut self, mut task: Task) {
        let Some(id) = actor_id_of(&task) else {
            log::warn!(task:% = task.id; "refusing an actor creation without an actor id");
            return;
        };
        if !task.spec.actor_holds_resources {
            task.resources = Amounts::new();
        }
        self.actors.insert(
            id,
            Actor {
                job: task.job,
                creation: task.clone(),
                state: ActorState::Pending,
                worker: None,
                held: None,
                queue: VecDeque::new(),
                running: false,
                inflight: VecDeque::new(),
                restarts_left: task.spec.max_restarts,
            },
        );
        self.record_actor(id);
        self.submit(task);
    }

    /// A method call arrived: queue it behind the actor's earlier calls.
    pub(super) fn submit_actor_task(&mut self, mut task: Task) {
        let Some(id) = actor_id_of(&task) else {
            log::warn!(task:% = task.id; "refusing an actor task without an actor id");
            return;
        };
        let reason = match self.actors.get(&id).map(|a| &a.state) {
            None => Some(format!(
                "actor {id} is unknown on node {}",
                self.settings.node_id
            )),
            Some(ActorState::Dead(reason)) => Some(reason.clone()),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason);
            return;
        }
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        task.resources = if actor.creation.spec.actor_holds_resources {
            Amounts::new()
        } else {
            Amounts::from([("CPU".to_string(), 1.0)])
        };
        actor.queue.push_back(task);
        self.dispatch_actor_methods();
    }

    /// The creation task is about to run on `conn`: the worker becomes the actor's.
    pub(super) fn bind_actor(&mut self, conn: ConnId, task: &Task) {
        let Some(id) = actor_id_of(task) else { return };
        if let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        {
            worker.actor = Some(id);
        }
        if let Some(actor) = self.actors.get_mut(&id) {
            actor.worker = Some(conn);
            actor.state = ActorState::Alive;
            actor.running = true;
        }
        self.record_actor(id);
    }

    /// The resource instances an actor holds for life, for its method calls.
    pub(super) fn actor_resource_ids(
        &self,
        task: &Task,
    ) -> Option<std::collections::HashMap<String, rayd_common::proto::raylet::v1::ResourceIds>>
    {
        if task.spec.actor_creation {
            return None;
        }
        let actor = self.actors.get(&actor_id_of(task)?)?;
        actor.held.as_ref().map(Held::resource_ids)
    }

    /// Sends each idle actor the next call whose arguments are local and whose resources
    /// fit, and each busy one (past its constructor) calls to run next, up to the depth.
    pub(super) fn dispatch_actor_methods(&mut self) {
        let ready: Vec<(ActorId, bool)> = self
            .actors
            .iter()
            .filter(|(_, a)| a.state == ActorState::Alive)
            .filter_map(|(id, a)| {
                let head = a.queue.front()?;
                if !head.dependencies().iter().all(|d| self.local.contains(d)) {
                    return None;
                }
                if a.running {
                    let pipelining =
                        a.inflight.len() < PIPELINE_DEPTH && !self.runs_constructor(a.worker?);
                    pipelining.then_some((*id, true))
                } else {
                    self.resources.fits(&head.resources).then_some((*id, false))
                }
            })
            .collect();
        for (id, ahead) in ready {
            let Some(actor) = self.actors.get_mut(&id) else {
                continue;
            };
            let (Some(conn), Some(task)) = (actor.worker, actor.queue.pop_front()) else {
                continue;
            };
            if ahead {
                self.send_call_ahead(id, conn, task);
            } else {
                actor.running = true;
                self.dispatch(conn, task);
            }
        }
    }

    fn runs_constructor(&self, conn: ConnId) -> bool {
        matches!(
            self.conns.get(&conn).map(|c| &c.peer),
            Some(Peer::Worker(w)) if matches!(&w.state, WorkerState::Busy { task, .. } if task.spec.actor_creation)
        )
    }

    /// Sends a call to the actor's busy worker, to run after what it runs now.
    fn send_call_ahead(&mut self, id: ActorId, conn: ConnId, mut task: Task) {
        let resource_ids = self.actor_resource_ids(&task).unwrap_or_default();
        let assign = self.assignment(conn, &mut task, resource_ids);
        if let Some(actor) = self.actors.get_mut(&id) {
            actor.inflight.push_back(task);
        }
        self.send_frame(conn, assign);
    }

    /// The actor's worker finished its constructor or a method.
    pub(super) fn actor_task_done(&mut self, id: ActorId, task: &Task, held: Held, blocked: bool) {
        let Some(actor) = self.actors.get_mut(&id) else {
            self.give_back(&held, blocked);
            return;
        };
        actor.running = false;
        if task.spec.actor_creation && actor.creation.spec.actor_holds_resources {
            // Held for life; CPUs lent out while the constructor was blocked come back.
            if blocked {
                self.resources
                    .adjust("CPU", -held.amounts.get("CPU").copied().unwrap_or(0.0));
            }
            actor.held = Some(held);
        } else {
            self.give_back(&held, blocked);
        }
        // The worker starts the next call it was sent: it takes what the last one gave back.
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        let (Some(conn), Some(next)) = (actor.worker, actor.inflight.pop_front()) else {
            return;
        };
        actor.running = true;
        let held = self.resources.acquire(&next.resources);
        if let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        {
            worker.state = WorkerState::Busy {
                task: next,
                held,
                blocked: false,
            };
        }
    }

    /// The actor's worker went away, maybe in the middle of `running`.
    pub(super) fn actor_worker_died(&mut self, id: ActorId, running: Option<Task>, pid: u32) {
        let node = self.settings.node_id;
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        actor.worker = None;
        actor.running = false;
        // Calls sent ahead never started: they run on the restarted actor, or fail with it.
        while let Some(task) = actor.inflight.pop_back() {
            actor.queue.push_front(task);
        }
        if let Some(held) = actor.held.take() {
            self.resources.release(&held);
        }
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        let dead = match &actor.state {
            ActorState::Dead(reason) => Some(reason.clone()),
            _ if actor.restarts_left > 0 => None,
            _ => Some(format!(
                "the actor {id}'s process (pid {pid}) on node {node} died"
            )),
        };
        if let Some(task) = running.filter(|t| !t.spec.actor_creation) {
            let reason = dead.clone().unwrap_or_else(|| {
                format!("the actor {id}'s process (pid {pid}) died during this call; the actor restarts")
            });
            self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason);
        }
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        match dead {
            None => {
                actor.restarts_left -= 1;
                actor.state = ActorState::Pending;
                log::warn!(actor:% = id, pid, restarts_left = actor.restarts_left; "actor died; restarting it");
                let creation = actor.creation.clone();
                self.record_actor(id);
                self.make_ready(creation, true);
            }
            Some(reason) => {
                actor.state = ActorState::Dead(reason.clone());
                let queued: Vec<Task> = actor.queue.drain(..).collect();
                log::warn!(actor:% = id, pid, failed_calls = queued.len(); "actor died");
                for task in &queued {
                    self.store_errors(task, value::ERROR_ACTOR_DIED, &reason);
                }
                self.record_actor(id);
            }
        }
    }

    /// `ray.kill`: the actor dies now, without restarts.
    pub(super) fn kill_actor(&mut self, id: ActorId, reason: String) {
        let Some(actor) = self.actors.get_mut(&id) else {
            return;
        };
        actor.restarts_left = 0;
        actor.state = ActorState::Dead(reason.clone());
        let worker = actor.worker;
        let queued: Vec<Task> = actor.queue.drain(..).collect();
        for task in &queued {
            self.store_errors(task, value::ERROR_ACTOR_DIED, &reason);
        }
        match worker.and_then(|c| self.conns.get(&c)) {
            Some(Connection {
                peer: Peer::Worker(w),
                ..
            }) => {
                // Its disconnect then fails the call it was running.
                rayd_common::process::signal_pid(w.pid, nix::sys::signal::Signal::SIGKILL);
            }
            _ => {
                // Not placed yet: its creation task must not run any more.
                let creation = self.actors.get(&id).map(|a| a.creation.id);
                if let Some(creation) = creation {
                    for queue in self.ready.values_mut() {
                        queue.retain(|t| t.id != creation);
                    }
                    self.waiting.remove(&creation);
                }
                self.record_actor(id);
            }
        }
    }

    /// A driver went away: its actors die with it.
    pub(super) fn kill_job_actors(&mut self, job: JobId) {
        let ids: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.job == job && !matches!(a.state, ActorState::Dead(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.kill_actor(id, format!("the driver of actor {id}'s job exited"));
        }
    }
}
