//! The scheduler core driven by scripted events: no sockets, no processes, no sleeps.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use prost::Message;
use rayd_common::id::{ActorId, FunctionId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use rayd_common::proto::common::v1 as common_pb;
use rayd_common::proto::raylet::v1 as pb;
use rayd_common::value;

use super::*;

/// A scheduler and a clock, with helpers that play the part of drivers and workers.
struct Harness {
    s: Scheduler,
    now: Instant,
    next_conn: ConnId,
    next_pid: u32,
    job: JobId,
    function: FunctionId,
}

fn amounts(pairs: &[(&str, f64)]) -> Amounts {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// What the effects of one step amount to, decoded.
#[derive(Debug, Default)]
struct Out {
    /// (connection, spec) of every AssignTask.
    assigned: Vec<(ConnId, common_pb::TaskSpec)>,
    other: Vec<(ConnId, pb::server_message::Kind)>,
    starts: usize,
    kills: Vec<u32>,
    /// (object, metadata) of every put.
    puts: Vec<(ObjectId, Vec<u8>)>,
    pulls: Vec<ObjectId>,
    states: Vec<(TaskId, TaskState)>,
    /// Kinds of the errors pushed to drivers.
    errors: Vec<&'static str>,
    /// (node, task) of every forward.
    forwards: Vec<(NodeId, TaskId)>,
    /// (home, task, number of small results) of every report to a task's home.
    returned: Vec<(NodeId, TaskId, usize)>,
    /// (home, task, node) of every report to a task's home that it was handed on.
    moved: Vec<(NodeId, TaskId, NodeId)>,
    stopped_pulls: Vec<ObjectId>,
    locate: Vec<ActorId>,
    /// (node, line) of every worker line sent to its driver's node.
    output_home: Vec<(NodeId, String)>,
    /// Tasks handed to a global scheduler.
    spills: Vec<TaskId>,
    /// (node, actor) of every kill asked of another node.
    remote_kills: Vec<(NodeId, ActorId)>,
    /// Objects whose copies on other nodes are to go.
    freed_elsewhere: Vec<ObjectId>,
    /// Objects to go from this node's store.
    deleted_here: Vec<ObjectId>,
}

impl Out {
    fn assigned_ids(&self) -> Vec<TaskId> {
        self.assigned
            .iter()
            .map(|(_, spec)| TaskId::from_slice(&spec.task_id).unwrap())
            .collect()
    }

    fn warnings(&self) -> usize {
        self.other
            .iter()
            .filter(|(_, k)| matches!(k, pb::server_message::Kind::Warning(_)))
            .count()
    }

    fn exits(&self) -> Vec<ConnId> {
        self.other
            .iter()
            .filter(|(_, k)| matches!(k, pb::server_message::Kind::Exit(_)))
            .map(|(c, _)| *c)
            .collect()
    }

    fn error_puts(&self, kind: &str) -> Vec<ObjectId> {
        self.puts
            .iter()
            .filter(|(_, m)| value::error_kind(m) == Some(kind))
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Harness {
    fn new(resources: &[(&str, f64)]) -> Self {
        let now = Instant::now();
        let settings = NodeSettings {
            node_id: NodeId::random(),
            node_ip_address: "127.0.0.1".into(),
            plasma_socket: "/nonexistent/plasma".into(),
            redis_address: "127.0.0.1:1".into(),
            redis_password: String::new(),
            min_workers: 0,
            task_ahead_max: Duration::from_millis(2),
        };
        Self {
            s: Scheduler::new(settings, amounts(resources), now),
            now,
            next_conn: 0,
            next_pid: 1000,
            job: JobId::random(),
            function: FunctionId::random(),
        }
    }

    fn step(&mut self, event: Event) -> Out {
        self.s.handle(self.now, event);
        self.drain()
    }

    fn drain(&mut self) -> Out {
        let mut out = Out::default();
        for effect in self.s.take_effects() {
            match effect {
                Effect::Send { conn, frame } => {
                    let message = pb::ServerMessage::decode(&frame[4..]).expect("a valid frame");
                    match message.kind.expect("a message kind") {
                        pb::server_message::Kind::AssignTask(assign) => {
                            out.assigned.push((conn, assign.spec.unwrap()))
                        }
                        kind => out.other.push((conn, kind)),
                    }
                }
                Effect::StartWorker => out.starts += 1,
                Effect::KillWorker { pid } => out.kills.push(pid),
                Effect::Put { id, object } => out.puts.push((id, object.metadata.to_vec())),
                Effect::Pull { id } => out.pulls.push(id),
                Effect::StopPull { id } => out.stopped_pulls.push(id),
                Effect::FreeElsewhere { ids, .. } => out.freed_elsewhere.extend(ids),
                Effect::DeleteHere { ids } => out.deleted_here.extend(ids),
                Effect::LocateActor { actor } => out.locate.push(actor),
                Effect::ForwardOutput { home, line, .. } => out.output_home.push((home, line)),
                Effect::Spill { spec, .. } => out.spills.push(id_of(&spec)),
                Effect::KillRemoteActor { node, actor, .. } => out.remote_kills.push((node, actor)),
                Effect::Forward { node, spec, .. } => out.forwards.push((node, id_of(&spec))),
                Effect::ReturnResults {
                    home,
                    task,
                    results,
                } => out.returned.push((home, task, results.len())),
                Effect::TaskMoved { home, task, node } => out.moved.push((home, task, node)),
                Effect::Gcs(GcsWrite::State(task, state)) => out.states.push((task, state)),
                Effect::Gcs(GcsWrite::Task(entry)) => {
                    let state = match entry.state.as_str() {
                        "waiting" => TaskState::Waiting,
                        other => panic!("unexpected first state {other}"),
                    };
                    out.states.push((entry.task_id, state));
                }
                Effect::Gcs(GcsWrite::Actor(_)) => {}
                Effect::Gcs(GcsWrite::Error { kind, .. }) => out.errors.push(kind),
            }
        }
        out
    }

    fn message(&mut self, conn: ConnId, message: pb::client_message::Kind) -> Out {
        self.step(Event::Message { conn, message })
    }

    fn connect(&mut self) -> ConnId {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.step(Event::Connected { conn });
        conn
    }

    /// A driver of the harness's job.
    fn driver(&mut self) -> ConnId {
        let conn = self.connect();
        let job = pb::JobConfig {
            job_id: self.job.as_bytes().to_vec(),
            ..Default::default()
        };
        self.message(
            conn,
            pb::client_message::Kind::Register(pb::Register {
                worker_id: Vec::new(),
                is_worker: false,
                pid: 1,
                job: Some(job),
            }),
        );
        conn
    }

    /// A worker process that starts and registers; returns its connection and pid and
    /// what its registration led to.
    fn worker(&mut self) -> (ConnId, u32, Out) {
        self.next_pid += 1;
        let pid = self.next_pid;
        self.step(Event::WorkerSpawned { pid });
        let conn = self.connect();
        let out = self.message(
            conn,
            pb::client_message::Kind::Register(pb::Register {
                worker_id: WorkerId::random().as_bytes().to_vec(),
                is_worker: true,
                pid,
                job: None,
            }),
        );
        (conn, pid, out)
    }

    fn spec(&self, resources: &[(&str, f64)]) -> common_pb::TaskSpec {
        common_pb::TaskSpec {
            task_id: TaskId::random_task().as_bytes().to_vec(),
            job_id: self.job.as_bytes().to_vec(),
            function_id: self.function.as_bytes().to_vec(),
            function_name: "f".into(),
            num_returns: 1,
            resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    fn submit(&mut self, conn: ConnId, spec: &common_pb::TaskSpec) -> Out {
        self.message(conn, pb::client_message::Kind::SubmitTask(spec.clone()))
    }

    fn done(&mut self, worker: ConnId, spec: &common_pb::TaskSpec) -> Out {
        self.message(
            worker,
            pb::client_message::Kind::TaskDone(pb::TaskDone {
                task_id: spec.task_id.clone(),
                results: Vec::new(),
            }),
        )
    }

    fn available(&self, name: &str) -> f64 {
        self.s
            .snapshot()
            .available
            .get(name)
            .copied()
            .unwrap_or(0.0)
    }
}

fn id_of(spec: &common_pb::TaskSpec) -> TaskId {
    TaskId::from_slice(&spec.task_id).unwrap()
}

fn with_object_arg(mut spec: common_pb::TaskSpec, id: ObjectId) -> common_pb::TaskSpec {
    spec.args.push(common_pb::TaskArg {
        value: Some(common_pb::task_arg::Value::ObjectId(id.as_bytes().to_vec())),
    });
    spec
}

#[test]
fn a_task_runs_when_its_argument_is_sealed() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (_worker, _, _) = h.worker();
    let arg = ObjectId::for_put(TaskId::random_task(), 1);
    let spec = with_object_arg(h.spec(&[("CPU", 1.0)]), arg);
    let out = h.submit(driver, &spec);
    assert!(out.assigned.is_empty(), "waits for its argument");
    assert_eq!(out.states, vec![(id_of(&spec), TaskState::Waiting)]);
    let out = h.step(Event::ObjectSealed(arg));
    assert_eq!(out.assigned_ids(), vec![id_of(&spec)]);
    assert!(out.states.contains(&(id_of(&spec), TaskState::Running)));
}

/// The hang of issue 11: a task queued as ready (behind a busy CPU) whose argument is then
/// evicted must not run on a missing object; it waits for it again, the object is asked
/// for, and the task runs once it is back.
#[test]
fn a_queued_tasks_argument_evicted_sends_it_back_to_waiting_and_is_fetched_again() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (worker, _, _) = h.worker();
    let busy = h.spec(&[("CPU", 1.0)]);
    assert_eq!(h.submit(driver, &busy).assigned.len(), 1);
    let arg = ObjectId::for_put(TaskId::random_task(), 1);
    h.step(Event::ObjectSealed(arg));
    let queued = with_object_arg(h.spec(&[("CPU", 1.0)]), arg);
    let out = h.submit(driver, &queued);
    assert!(out.assigned.is_empty(), "the only CPU is busy");
    assert_eq!(h.s.snapshot().queued, 1);

    let out = h.step(Event::ObjectDeleted(arg));
    assert_eq!(out.pulls, vec![arg], "the evicted argument is asked for");
    assert!(out.states.contains(&(id_of(&queued), TaskState::Waiting)));
    // A second eviction notice asks nothing more.
    assert!(h.step(Event::ObjectDeleted(arg)).pulls.is_empty());

    let out = h.done(worker, &busy);
    assert!(
        out.assigned.is_empty(),
        "the CPU is free but the argument is missing: the task must not run"
    );
    let out = h.step(Event::ObjectSealed(arg));
    assert_eq!(out.assigned_ids(), vec![id_of(&queued)]);
}

#[test]
fn a_freed_object_asked_for_becomes_an_object_freed_error_unless_a_copy_came_back() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let (freed, back) = (
        ObjectId::for_put(TaskId::random_task(), 1),
        ObjectId::for_put(TaskId::random_task(), 2),
    );
    let out = h.step(Event::ObjectFreed(freed));
    assert_eq!(out.error_puts(value::ERROR_OBJECT_FREED), vec![freed]);
    h.step(Event::ObjectSealed(back));
    let out = h.step(Event::ObjectFreed(back));
    assert!(out.error_puts(value::ERROR_OBJECT_FREED).is_empty());
}

#[test]
fn an_argument_that_cannot_be_had_becomes_an_object_lost_error() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (worker, _, _) = h.worker();
    let busy = h.spec(&[("CPU", 1.0)]);
    h.submit(driver, &busy);
    let arg = ObjectId::for_put(TaskId::random_task(), 1);
    h.step(Event::ObjectSealed(arg));
    let queued = with_object_arg(h.spec(&[("CPU", 1.0)]), arg);
    h.submit(driver, &queued);
    h.step(Event::ObjectDeleted(arg));
    let out = h.step(Event::ObjectLost {
        id: arg,
        reason: "its task cannot run again".into(),
    });
    assert_eq!(out.error_puts(value::ERROR_OBJECT_LOST), vec![arg]);
    // The error object's seal lets the task run: it raises the error it finds.
    h.done(worker, &busy);
    let out = h.step(Event::ObjectSealed(arg));
    assert_eq!(out.assigned_ids(), vec![id_of(&queued)]);
}

/// A driver that frees an object and asks for it again can reach the raylet before the
/// store's notice of the removal: the removal then has the object asked for (to be found
/// lost), instead of leaving the driver waiting.
#[test]
fn a_driver_asking_for_an_object_the_store_is_removing_has_it_asked_for() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let id = ObjectId::for_put(TaskId::random_task(), 1);
    h.step(Event::ObjectSealed(id));
    let out = h.message(
        driver,
        pb::client_message::Kind::Fetch(pb::Fetch {
            object_ids: vec![id.as_bytes().to_vec()],
        }),
    );
    assert!(out.pulls.is_empty(), "here as far as the raylet heard");
    assert_eq!(h.step(Event::ObjectDeleted(id)).pulls, vec![id]);
}

/// `ray.internal.free` without `local_only`: the other nodes' copies go too, and the
/// raylet does not pull the object back from a node that has not dropped its copy yet.
#[test]
fn an_object_freed_everywhere_is_not_pulled_back() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (freed, kept) = (
        ObjectId::for_put(TaskId::random_task(), 1),
        ObjectId::for_put(TaskId::random_task(), 2),
    );
    let out = h.message(
        driver,
        pb::client_message::Kind::Free(pb::Free {
            object_ids: vec![freed.as_bytes().to_vec(), b"malformed".to_vec()],
            all_nodes: true,
        }),
    );
    assert_eq!(out.freed_elsewhere, vec![freed]);
    let out = h.message(
        driver,
        pb::client_message::Kind::Fetch(pb::Fetch {
            object_ids: vec![freed.as_bytes().to_vec(), kept.as_bytes().to_vec()],
        }),
    );
    assert_eq!(out.pulls, vec![kept], "only what was not freed is pulled");
    assert_eq!(out.error_puts(value::ERROR_OBJECT_FREED), vec![freed]);

    // Freed by a program on another node: dropped here, and not pulled either.
    let remote = ObjectId::for_put(TaskId::random_task(), 3);
    let out = h.step(Event::FreeObjects(vec![remote]));
    assert_eq!(out.deleted_here, vec![remote]);
    let out = h.message(
        driver,
        pb::client_message::Kind::Fetch(pb::Fetch {
            object_ids: vec![remote.as_bytes().to_vec()],
        }),
    );
    assert!(out.pulls.is_empty());
    assert_eq!(out.error_puts(value::ERROR_OBJECT_FREED), vec![remote]);

    // Freed while a reader holds it: still here, but served to no one. A driver that asks
    // gets the error itself.
    let held = ObjectId::for_put(TaskId::random_task(), 4);
    h.step(Event::ObjectSealed(held));
    h.message(
        driver,
        pb::client_message::Kind::Free(pb::Free {
            object_ids: vec![held.as_bytes().to_vec()],
            all_nodes: true,
        }),
    );
    let out = h.message(
        driver,
        pb::client_message::Kind::Fetch(pb::Fetch {
            object_ids: vec![held.as_bytes().to_vec()],
        }),
    );
    let errors: Vec<_> = out
        .other
        .iter()
        .filter_map(|(_, kind)| match kind {
            pb::server_message::Kind::ObjectsReady(ready) => Some(ready.objects.clone()),
            _ => None,
        })
        .flatten()
        .filter(|o| value::error_kind(&o.metadata) == Some(value::ERROR_OBJECT_FREED))
        .map(|o| ObjectId::from_slice(&o.object_id).unwrap())
        .collect();
    assert_eq!(errors, vec![held]);
}

#[test]
fn an_evicted_object_nobody_needs_is_not_pulled() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let arg = ObjectId::for_put(TaskId::random_task(), 1);
    h.step(Event::ObjectSealed(arg));
    assert!(h.step(Event::ObjectDeleted(arg)).pulls.is_empty());
}

#[test]
fn a_worker_dying_mid_task_retries_it_then_fails_it() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (worker, pid, _) = h.worker();
    let mut spec = h.spec(&[("CPU", 1.0)]);
    spec.max_retries = 1;
    h.submit(driver, &spec);
    let out = h.step(Event::WorkerExited {
        pid,
        status: "signal 9".into(),
    });
    assert_eq!(h.available("CPU"), 1.0, "the dead worker's CPU came back");
    assert_eq!(out.starts, 1, "a worker starts for the retry");
    assert!(out.error_puts(value::ERROR_WORKER_DIED).is_empty());
    // The exit also closes its connection: handled once.
    assert!(h
        .step(Event::Disconnected { conn: worker })
        .assigned
        .is_empty());

    let (worker, pid, out) = h.worker();
    assert_eq!(out.assigned.len(), 1);
    assert_eq!(out.assigned[0].1.attempt, 1, "the retry is attempt 1");
    let out = h.step(Event::Disconnected { conn: worker });
    assert_eq!(
        out.error_puts(value::ERROR_WORKER_DIED),
        vec![ObjectId::for_return(id_of(&spec), 1)],
        "past max_retries its result is an error"
    );
    assert!(out.states.contains(&(id_of(&spec), TaskState::Failed)));
    assert_eq!(
        out.errors,
        vec!["worker_died"],
        "told to the driver's error_info"
    );
    h.step(Event::WorkerExited {
        pid,
        status: "signal 9".into(),
    });
    assert_eq!(h.available("CPU"), 1.0);
}

#[test]
fn a_blocked_worker_lends_its_cpus_and_its_task_sent_ahead_is_taken_back() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (w1, _, _) = h.worker();
    // A short function: tasks of it are sent ahead.
    let first = h.spec(&[("CPU", 1.0)]);
    h.submit(driver, &first);
    h.done(w1, &first);
    let parent = h.spec(&[("CPU", 1.0)]);
    assert_eq!(
        h.submit(driver, &parent).assigned_ids(),
        vec![id_of(&parent)]
    );
    let child = h.spec(&[("CPU", 1.0)]);
    let out = h.submit(driver, &child);
    assert_eq!(
        out.assigned,
        vec![(w1, child.clone())],
        "sent ahead to the busy worker"
    );

    let out = h.message(w1, pb::client_message::Kind::Blocked(pb::Blocked {}));
    let acks: Vec<_> = out
        .other
        .iter()
        .filter_map(|(c, k)| match k {
            pb::server_message::Kind::BlockedAck(ack) => Some((*c, ack.canceled.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(w1, vec![child.task_id.clone()])]);
    assert_eq!(h.available("CPU"), 1.0, "the blocked worker lent its CPU");
    assert_eq!(out.starts, 1, "a worker starts for the child taken back");
    let (w2, _, out) = h.worker();
    assert_eq!(out.assigned, vec![(w2, child.clone())]);
    assert_eq!(h.available("CPU"), 0.0);
    h.done(w2, &child);
    let out = h.message(w1, pb::client_message::Kind::Unblocked(pb::Unblocked {}));
    assert!(out.assigned.is_empty());
    assert_eq!(h.available("CPU"), 0.0, "the parent took its CPU again");
    h.done(w1, &parent);
    assert_eq!(h.available("CPU"), 1.0);
}

#[test]
fn a_worker_retires_after_max_calls_and_another_starts() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (w1, _, _) = h.worker();
    let mut specs = Vec::new();
    for _ in 0..3 {
        let mut spec = h.spec(&[("CPU", 1.0)]);
        spec.max_calls = 2;
        h.submit(driver, &spec);
        specs.push(spec);
    }
    assert!(h.done(w1, &specs[0]).exits().is_empty());
    let out = h.done(w1, &specs[1]);
    assert_eq!(out.exits(), vec![w1], "told to exit after its second call");
    assert!(out.assigned.is_empty());
    assert_eq!(out.starts, 1, "a replacement starts");
    let (w2, _, out) = h.worker();
    assert_eq!(out.assigned, vec![(w2, specs[2].clone())]);
}

#[test]
fn retries_are_bounded_by_max_retries_with_rising_attempts() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let mut spec = h.spec(&[("CPU", 1.0)]);
    spec.max_retries = 2;
    h.submit(driver, &spec);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (worker, _, out) = h.worker();
        attempts.extend(out.assigned.iter().map(|(_, s)| s.attempt));
        let out = h.step(Event::Disconnected { conn: worker });
        if !out.error_puts(value::ERROR_WORKER_DIED).is_empty() {
            break;
        }
    }
    assert_eq!(attempts, vec![0, 1, 2]);
}

#[test]
fn an_actor_restarts_with_its_queued_calls() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let actor = ActorId::random();
    let mut creation = h.spec(&[]);
    creation.actor_creation = true;
    creation.actor_id = actor.as_bytes().to_vec();
    creation.max_restarts = 1;
    let out = h.submit(driver, &creation);
    assert_eq!(out.starts, 1, "a worker starts for the actor");
    let (w1, _, out) = h.worker();
    assert_eq!(out.assigned_ids(), vec![id_of(&creation)]);
    let call = |h: &Harness| {
        let mut spec = h.spec(&[]);
        spec.actor_id = actor.as_bytes().to_vec();
        spec
    };
    let calls: Vec<_> = (0..3).map(|_| call(&h)).collect();
    for c in &calls {
        assert!(
            h.submit(driver, c).assigned.is_empty(),
            "behind the constructor"
        );
    }
    let out = h.done(w1, &creation);
    assert_eq!(out.assigned_ids().len(), 3, "one call and two sent ahead");
    // The actor's process dies in its first call.
    let out = h.step(Event::Disconnected { conn: w1 });
    assert_eq!(
        out.error_puts(value::ERROR_ACTOR_DIED),
        vec![ObjectId::for_return(id_of(&calls[0]), 1)],
        "the call it died in fails"
    );
    assert!(h.s.actor_alive(&actor));
    assert_eq!(out.starts, 1, "a worker starts for the restart");
    let (w2, _, out) = h.worker();
    assert_eq!(
        out.assigned_ids(),
        vec![id_of(&creation)],
        "constructor again"
    );
    let out = h.done(w2, &creation);
    assert_eq!(
        out.assigned_ids(),
        vec![id_of(&calls[1]), id_of(&calls[2])],
        "the calls that never started run on the new actor, in order"
    );
    // No restarts left: the next death is final and later calls fail.
    let out = h.step(Event::Disconnected { conn: w2 });
    assert_eq!(out.errors, vec!["actor_died"]);
    assert!(!h.s.actor_alive(&actor));
    let late = call(&h);
    let out = h.submit(driver, &late);
    assert_eq!(
        out.error_puts(value::ERROR_ACTOR_DIED),
        vec![ObjectId::for_return(id_of(&late), 1)]
    );
    assert_eq!(h.available("CPU"), 1.0);
}

#[test]
fn an_infeasible_task_is_warned_about_once() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let a = h.spec(&[("GPU", 1.0)]);
    let b = h.spec(&[("GPU", 1.0)]);
    assert_eq!(h.submit(driver, &a).warnings(), 1);
    assert_eq!(h.submit(driver, &b).warnings(), 0);
    let (_, _, out) = h.worker();
    assert!(out.assigned.is_empty() && out.warnings() == 0);
    assert_eq!(h.s.snapshot().queued, 2);
}

#[test]
fn a_task_with_an_amount_that_is_not_a_number_is_refused_with_an_error_object() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    for amount in [f64::INFINITY, f64::NAN, -1.0] {
        let spec = h.spec(&[("CPU", amount)]);
        let out = h.submit(driver, &spec);
        assert_eq!(
            out.error_puts(value::ERROR_INVALID_TASK),
            vec![ObjectId::for_return(id_of(&spec), 1)],
            "{amount}"
        );
        assert_eq!(h.s.snapshot().queued, 0);
    }
}

#[test]
fn a_worker_that_never_registers_backs_off_its_restarts() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let out = h.submit(driver, &h.spec(&[("CPU", 1.0)]));
    assert_eq!(out.starts, 1);
    h.step(Event::WorkerSpawned { pid: 77 });
    let out = h.step(Event::WorkerExited {
        pid: 77,
        status: "exit status: 1".into(),
    });
    assert_eq!(out.starts, 0, "no fork loop");
    assert_eq!(h.step(Event::Tick).starts, 0, "still backing off");
    h.now += Duration::from_secs(1);
    assert_eq!(
        h.step(Event::Tick).starts,
        1,
        "tried again after the backoff"
    );
}

/// A pseudo-random mix of submissions, completions, blocking and worker deaths: the
/// free amounts never go below zero while nothing is unblocked, and all come back.
#[test]
fn resource_accounting_never_goes_negative_and_always_comes_back() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut h = Harness::new(&[("CPU", 3.0), ("GPU", 1.0)]);
    let driver = h.driver();
    let mut workers: Vec<ConnId> = Vec::new();
    let shapes: [&[(&str, f64)]; 4] = [
        &[("CPU", 1.0)],
        &[("CPU", 0.5)],
        &[("CPU", 1.0), ("GPU", 0.5)],
        &[],
    ];
    // What each worker was given, in order (the running task, then one sent ahead).
    type Running = BTreeMap<ConnId, VecDeque<common_pb::TaskSpec>>;
    let mut running: Running = BTreeMap::new();
    let mut pending_starts = 0usize;
    let note = |out: &Out, running: &mut Running| {
        for (conn, spec) in &out.assigned {
            running.entry(*conn).or_default().push_back(spec.clone());
        }
        for (conn, kind) in &out.other {
            if let pb::server_message::Kind::BlockedAck(_) = kind {
                running.entry(*conn).or_default().truncate(1);
            }
        }
        out.starts
    };
    let finish = |h: &mut Harness, running: &mut Running, conn: ConnId| {
        let queue = running.get_mut(&conn).unwrap();
        let spec = queue.pop_front().unwrap();
        if queue.is_empty() {
            running.remove(&conn);
        }
        h.done(conn, &spec)
    };
    for _ in 0..2000 {
        match next(5) {
            0 | 1 => {
                let mut spec = h.spec(shapes[next(4) as usize]);
                spec.max_retries = 1;
                let out = h.submit(driver, &spec);
                pending_starts += note(&out, &mut running);
            }
            2 if pending_starts > 0 => {
                pending_starts -= 1;
                let (conn, _, out) = h.worker();
                workers.push(conn);
                pending_starts += note(&out, &mut running);
            }
            3 if !running.is_empty() => {
                let conn = *running
                    .keys()
                    .nth(next(running.len() as u64) as usize)
                    .unwrap();
                let out = finish(&mut h, &mut running, conn);
                pending_starts += note(&out, &mut running);
            }
            4 if !workers.is_empty() && next(10) == 0 => {
                let conn = workers.swap_remove(next(workers.len() as u64) as usize);
                running.remove(&conn);
                let out = h.step(Event::Disconnected { conn });
                pending_starts += note(&out, &mut running);
            }
            _ => {
                let out = h.step(Event::Tick);
                pending_starts += note(&out, &mut running);
            }
        }
        for (name, amount) in &h.s.snapshot().available {
            assert!(*amount >= -1e-9, "{name} went negative: {amount}");
        }
    }
    // Finish everything.
    for _ in 0..10_000 {
        if let Some(conn) = running.keys().next().copied() {
            let out = finish(&mut h, &mut running, conn);
            pending_starts += note(&out, &mut running);
        } else if pending_starts > 0 {
            pending_starts -= 1;
            let (_, _, out) = h.worker();
            pending_starts += note(&out, &mut running);
        } else if h.s.snapshot().queued == 0 {
            break;
        } else {
            let out = h.step(Event::Tick);
            pending_starts += note(&out, &mut running);
        }
    }
    assert_eq!(h.s.snapshot().queued, 0);
    assert_eq!(h.available("CPU"), 3.0);
    assert_eq!(h.available("GPU"), 1.0);
}

/// The core stays free of I/O: none of its files names the async runtime, sockets,
/// processes or the plasma client (the I/O layer, `io.rs`, owns those).
#[test]
fn the_core_imports_no_runtime_socket_process_or_store_client() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scheduler");
    let forbidden = [
        "tokio",
        "std::net",
        "std::os::unix::net",
        "std::process",
        "std::fs",
        "std::thread",
        "rayd_plasma",
        "nix::",
        "crate::io",
        "crate::workers",
        "crate::connection",
        "crate::gcs",
    ];
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} names {word}: the scheduler core does no I/O",
                path.display()
            );
        }
        files += 1;
    }
    assert!(files >= 7, "read the core's files ({files})");
}

#[test]
fn a_driver_that_leaves_cancels_its_tasks_and_frees_its_workers() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let (worker, pid, _) = h.worker();
    let mut running = h.spec(&[("CPU", 1.0)]);
    running.max_retries = 3;
    assert_eq!(h.submit(driver, &running).assigned.len(), 1);
    let queued = h.spec(&[("CPU", 1.0)]);
    h.submit(driver, &queued);
    let parked = with_object_arg(
        h.spec(&[("CPU", 1.0)]),
        ObjectId::for_put(TaskId::random_task(), 1),
    );
    h.submit(driver, &parked);
    assert_eq!(h.s.snapshot().queued, 2);

    let out = h.step(Event::Disconnected { conn: driver });
    assert_eq!(
        out.kills,
        vec![pid],
        "the worker running its task is killed"
    );
    assert_eq!(
        h.s.snapshot().queued,
        0,
        "queued and waiting tasks are dropped"
    );
    for spec in [&queued, &parked] {
        assert!(out.states.contains(&(id_of(spec), TaskState::Cancelled)));
    }
    // Its death retries nothing and stores no error nobody would read.
    let out = h.step(Event::Disconnected { conn: worker });
    assert!(out.puts.is_empty() && out.assigned.is_empty());
    assert_eq!(out.starts, 0);
    assert_eq!(h.available("CPU"), 1.0);
    // A nested task of the job that arrives later (from a worker) is refused.
    let (w2, _, _) = h.worker();
    let late = h.spec(&[("CPU", 1.0)]);
    assert!(h.submit(w2, &late).assigned.is_empty());
    assert_eq!(h.s.snapshot().queued, 0);
}

#[test]
fn idle_workers_beyond_the_pool_exit_after_a_while() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let workers: Vec<ConnId> = (0..3).map(|_| h.worker().0).collect();
    // All three ran something (a blocked parent lends its CPU, so several ran at once).
    h.now += Duration::from_millis(5);
    let spec = h.spec(&[("CPU", 1.0)]);
    assert_eq!(h.submit(driver, &spec).assigned[0].0, workers[0]);
    h.done(workers[0], &spec);
    assert!(
        h.step(Event::Tick).exits().is_empty(),
        "not idle long enough"
    );
    h.now += IDLE_WORKER_EXIT - Duration::from_millis(6);
    assert!(h.step(Event::Tick).exits().is_empty());
    h.now += Duration::from_millis(1);
    let exits = h.step(Event::Tick).exits();
    assert_eq!(exits.len(), 2, "one worker per CPU stays");
    assert!(
        !exits.contains(&workers[0]),
        "the one that worked last stays (idle the shortest)"
    );
    h.now += IDLE_WORKER_EXIT * 2;
    assert!(h.step(Event::Tick).exits().is_empty(), "told once");
    // The one left still runs tasks.
    let spec = h.spec(&[("CPU", 1.0)]);
    assert_eq!(
        h.submit(driver, &spec).assigned,
        vec![(workers[0], spec.clone())]
    );
}

/// A harness whose node knows two other nodes with these resources.
fn with_peers(
    local: &[(&str, f64)],
    b: &[(&str, f64)],
    c: &[(&str, f64)],
) -> (Harness, NodeId, NodeId) {
    let mut h = Harness::new(local);
    let (nb, nc) = (NodeId::random(), NodeId::random());
    h.step(Event::NodeAdded {
        node: nb,
        total: amounts(b),
    });
    h.step(Event::NodeAdded {
        node: nc,
        total: amounts(c),
    });
    (h, nb, nc)
}

#[test]
fn a_task_infeasible_here_goes_to_a_node_that_can_run_it_without_a_warning() {
    let (mut h, _nb, nc) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("GPU", 1.0)],
    );
    let driver = h.driver();
    let spec = h.spec(&[("GPU", 1.0)]);
    let out = h.submit(driver, &spec);
    assert_eq!(out.forwards, vec![(nc, id_of(&spec))]);
    assert_eq!(out.warnings(), 0);
    assert!(out.states.contains(&(id_of(&spec), TaskState::Forwarded)));
    // Nowhere to go: warned, stays.
    let nowhere = h.spec(&[("TPU", 1.0)]);
    let out = h.submit(driver, &nowhere);
    assert!(out.forwards.is_empty());
    assert_eq!(out.warnings(), 1);
}

#[test]
fn tasks_that_cannot_start_here_spread_to_nodes_with_room_as_heartbeats_show_it() {
    let (mut h, nb, nc) = with_peers(&[("CPU", 1.0)], &[("CPU", 1.0)], &[("CPU", 1.0)]);
    let driver = h.driver();
    let (worker, _, _) = h.worker();
    let specs: Vec<_> = (0..6).map(|_| h.spec(&[("CPU", 1.0)])).collect();
    let mut local = Vec::new();
    let mut forwards = Vec::new();
    for spec in &specs {
        let out = h.submit(driver, spec);
        local.extend(out.assigned_ids());
        forwards.extend(out.forwards);
    }
    let order: Vec<usize> = local
        .iter()
        .map(|id| specs.iter().position(|s| id_of(s) == *id).unwrap())
        .collect();
    assert_eq!(order, vec![0], "{forwards:?}");
    let nodes: Vec<NodeId> = forwards.iter().map(|(n, _)| *n).collect();
    assert_eq!(nodes.len(), 2, "one to each node with room: {forwards:?}");
    assert!(nodes.contains(&nb) && nodes.contains(&nc));
    assert_eq!(h.s.snapshot().queued, 3);
    // b's heartbeat shows its CPU free again: the next queued task goes there.
    let out = h.step(Event::NodeHeartbeat {
        node: nb,
        available: amounts(&[("CPU", 1.0)]),
        queued: 0,
    });
    assert_eq!(out.forwards, vec![(nb, id_of(&specs[3]))]);
    // A heartbeat without room moves nothing.
    let out = h.step(Event::NodeHeartbeat {
        node: nc,
        available: amounts(&[("CPU", 0.0)]),
        queued: 1,
    });
    assert!(out.forwards.is_empty());
    // The local CPU frees: the next runs here, and the last is sent ahead to the same
    // worker (its function is short).
    let out = h.done(worker, &specs[0]);
    assert_eq!(out.assigned_ids(), vec![id_of(&specs[4]), id_of(&specs[5])]);
}

#[test]
fn a_task_that_could_not_be_forwarded_waits_for_the_nodes_next_heartbeat() {
    let (mut h, nb, _nc) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("GPU", 1.0)],
        &[("CPU", 1.0)],
    );
    let driver = h.driver();
    let gpu = h.spec(&[("GPU", 1.0)]);
    let out = h.submit(driver, &gpu);
    assert_eq!(out.forwards, vec![(nb, id_of(&gpu))]);
    let out = h.step(Event::ForwardFailed {
        task: id_of(&gpu),
        node: nb,
        error: "connection refused".into(),
    });
    assert!(
        out.forwards.is_empty(),
        "b shows no room until its next heartbeat"
    );
    assert_eq!(h.s.snapshot().queued, 1);
    let out = h.step(Event::NodeHeartbeat {
        node: nb,
        available: amounts(&[("CPU", 1.0), ("GPU", 1.0)]),
        queued: 0,
    });
    assert_eq!(out.forwards, vec![(nb, id_of(&gpu))], "tried again");
}

#[test]
fn a_forwarded_task_runs_here_and_reports_to_its_home() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let home = NodeId::random();
    let (worker, _, _) = h.worker();
    let arg = ObjectId::for_put(TaskId::random_task(), 1);
    let spec = with_object_arg(h.spec(&[("CPU", 1.0)]), arg);
    let out = h.step(Event::TaskForwarded {
        spec: spec.clone(),
        home,
        hops: 1,
        job: Some(pb::JobConfig {
            job_id: h.job.as_bytes().to_vec(),
            ..Default::default()
        }),
    });
    assert_eq!(
        out.pulls,
        vec![arg],
        "its argument is pulled from where it is"
    );
    assert!(out.assigned.is_empty());
    let out = h.step(Event::ObjectSealed(arg));
    assert_eq!(out.stopped_pulls, vec![arg]);
    assert_eq!(out.assigned_ids(), vec![id_of(&spec)]);
    let result = pb::InlineObject {
        object_id: ObjectId::for_return(id_of(&spec), 1)
            .as_bytes()
            .to_vec()
            .into(),
        data: b"42".to_vec().into(),
        metadata: value::META_PICKLE5.to_vec().into(),
    };
    // What its worker prints goes to the driver's node.
    let pid = h.s.pool.get(worker).map(|w| w.pid).unwrap();
    let out = h.step(Event::WorkerOutput {
        pid,
        line: "hello".into(),
        stderr: false,
    });
    assert_eq!(out.output_home, vec![(home, "hello".to_string())]);
    let out = h.message(
        worker,
        pb::client_message::Kind::TaskDone(pb::TaskDone {
            task_id: spec.task_id.clone(),
            results: vec![result],
        }),
    );
    assert_eq!(out.returned, vec![(home, id_of(&spec), 1)]);
    // A worker dying in a forwarded task past its retries reports too (its error
    // objects are in this node's store).
    let failing = h.spec(&[("CPU", 1.0)]);
    let out = h.step(Event::TaskForwarded {
        spec: failing.clone(),
        home,
        hops: 1,
        job: None,
    });
    let (runner, _) = out.assigned[0].clone();
    assert_eq!(runner, worker);
    let out = h.step(Event::Disconnected { conn: runner });
    assert_eq!(out.returned, vec![(home, id_of(&failing), 0)]);
}

#[test]
fn a_line_printed_on_another_node_reaches_the_driver() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let driver = h.driver();
    let out = h.step(Event::RemoteOutput {
        job: h.job,
        pid: 42,
        line: "from afar".into(),
        stderr: true,
    });
    let lines: Vec<_> = out
        .other
        .iter()
        .filter_map(|(c, k)| match k {
            pb::server_message::Kind::WorkerOutput(o) => Some((*c, o.pid, o.line.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(lines, vec![(driver, 42, "from afar".to_string())]);
}

#[test]
fn results_of_a_task_that_ran_elsewhere_reach_the_driver_and_large_ones_are_pulled() {
    let (mut h, nb, _) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("GPU", 1.0)],
        &[("CPU", 1.0)],
    );
    let driver = h.driver();
    let mut spec = h.spec(&[("GPU", 1.0)]);
    spec.num_returns = 2;
    assert_eq!(h.submit(driver, &spec).forwards.len(), 1);
    let small = ObjectId::for_return(id_of(&spec), 1);
    let large = ObjectId::for_return(id_of(&spec), 2);
    let out = h.step(Event::RemoteTaskFinished {
        task: id_of(&spec),
        node: nb,
        results: vec![pb::InlineObject {
            object_id: small.as_bytes().to_vec().into(),
            data: b"x".to_vec().into(),
            metadata: value::META_PICKLE5.to_vec().into(),
        }],
    });
    let ready: Vec<_> = out
        .other
        .iter()
        .filter_map(|(c, k)| match k {
            pb::server_message::Kind::ObjectsReady(r) => Some((*c, r.objects.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        ready,
        vec![(driver, 1)],
        "the small result goes to the driver"
    );
    assert_eq!(
        out.pulls,
        vec![large],
        "the large one is brought here for the driver"
    );
    // A task here that takes the small result runs without any pull.
    let next = with_object_arg(h.spec(&[("CPU", 1.0)]), small);
    let (_, _, _) = h.worker();
    let out = h.submit(driver, &next);
    assert!(out.pulls.is_empty());
    assert_eq!(out.assigned_ids(), vec![id_of(&next)]);
}

fn creation(h: &Harness, actor: ActorId, resources: &[(&str, f64)]) -> common_pb::TaskSpec {
    let mut spec = h.spec(resources);
    spec.actor_creation = true;
    spec.actor_id = actor.as_bytes().to_vec();
    spec.actor_holds_resources = !resources.is_empty();
    spec
}

fn call(h: &Harness, actor: ActorId) -> common_pb::TaskSpec {
    let mut spec = h.spec(&[]);
    spec.actor_id = actor.as_bytes().to_vec();
    spec
}

#[test]
fn an_actor_placed_on_another_node_gets_its_calls_there_in_order_and_is_killed_there() {
    let (mut h, nb, _) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("B", 1.0)],
        &[("CPU", 1.0)],
    );
    let driver = h.driver();
    let actor = ActorId::random();
    let create = creation(&h, actor, &[("B", 1.0)]);
    let out = h.submit(driver, &create);
    assert_eq!(out.forwards, vec![(nb, id_of(&create))]);
    let calls: Vec<_> = (0..3).map(|_| call(&h, actor)).collect();
    let mut forwards = Vec::new();
    for c in &calls {
        forwards.extend(h.submit(driver, c).forwards);
    }
    assert_eq!(
        forwards,
        calls.iter().map(|c| (nb, id_of(c))).collect::<Vec<_>>(),
        "every call goes to the actor's node, in order"
    );
    let out = h.message(
        driver,
        pb::client_message::Kind::KillActor(pb::KillActor {
            actor_id: actor.as_bytes().to_vec(),
        }),
    );
    assert_eq!(out.remote_kills, vec![(nb, actor)]);
    // The driver leaving kills it there too.
    let out = h.step(Event::Disconnected { conn: driver });
    assert_eq!(out.remote_kills, vec![(nb, actor)]);
}

#[test]
fn calls_to_an_actor_known_only_to_the_gcs_wait_for_its_location() {
    let (mut h, _, nc) = with_peers(&[("CPU", 1.0)], &[("CPU", 1.0)], &[("CPU", 1.0)]);
    let driver = h.driver();
    let actor = ActorId::random();
    let first = call(&h, actor);
    let second = call(&h, actor);
    assert_eq!(h.submit(driver, &first).locate, vec![actor]);
    assert!(
        h.submit(driver, &second).locate.is_empty(),
        "looked up once"
    );
    let out = h.step(Event::ActorLocated {
        actor,
        node: Some(nc),
    });
    assert_eq!(
        out.forwards,
        vec![(nc, id_of(&first)), (nc, id_of(&second))]
    );
    let third = call(&h, actor);
    assert_eq!(h.submit(driver, &third).forwards, vec![(nc, id_of(&third))]);
    // An actor nobody has: its calls fail instead of waiting.
    let lost = ActorId::random();
    let orphan = call(&h, lost);
    h.submit(driver, &orphan);
    let out = h.step(Event::ActorLocated {
        actor: lost,
        node: None,
    });
    assert_eq!(
        out.error_puts(value::ERROR_ACTOR_DIED),
        vec![ObjectId::for_return(id_of(&orphan), 1)]
    );
}

#[test]
fn an_actor_forwarded_here_runs_here_and_its_calls_report_home() {
    let mut h = Harness::new(&[("CPU", 1.0), ("B", 1.0)]);
    let home = NodeId::random();
    let actor = ActorId::random();
    let create = creation(&h, actor, &[("B", 1.0)]);
    let forwarded = |spec: &common_pb::TaskSpec| Event::TaskForwarded {
        spec: spec.clone(),
        home,
        hops: 1,
        job: None,
    };
    let out = h.step(forwarded(&create));
    assert_eq!(out.starts, 1);
    let (worker, _, out) = h.worker();
    assert_eq!(out.assigned_ids(), vec![id_of(&create)]);
    let c = call(&h, actor);
    assert!(
        h.step(forwarded(&c)).assigned.is_empty(),
        "behind its constructor"
    );
    let out = h.done(worker, &create);
    assert_eq!(out.returned, vec![(home, id_of(&create), 0)]);
    assert_eq!(out.assigned_ids(), vec![id_of(&c)]);
    let out = h.done(worker, &c);
    assert_eq!(out.returned, vec![(home, id_of(&c), 0)]);
    // Killed at its home's request: a later call fails and is reported home.
    h.step(Event::KillActor {
        actor,
        reason: "killed with ray.kill".into(),
    });
    let late = call(&h, actor);
    let out = h.step(forwarded(&late));
    assert_eq!(out.returned, vec![(home, id_of(&late), 0)]);
}

#[test]
fn with_a_global_scheduler_up_tasks_to_place_elsewhere_go_through_it() {
    let (mut h, nb, _) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("GPU", 1.0)],
        &[("CPU", 1.0)],
    );
    let driver = h.driver();
    h.step(Event::GlobalScheduler { available: true });
    // Only b could ever run a GPU task: it goes there straight, a hop shorter.
    let pinned = h.spec(&[("GPU", 1.0)]);
    assert_eq!(
        h.submit(driver, &pinned).forwards,
        vec![(nb, id_of(&pinned))]
    );
    // A choice to make: the global scheduler makes it.
    let nd = NodeId::random();
    h.step(Event::NodeAdded {
        node: nd,
        total: amounts(&[("CPU", 1.0), ("GPU", 1.0)]),
    });
    let to_a_gpu_node = |forwards: &[(NodeId, TaskId)], task: TaskId| {
        forwards.len() == 1 && forwards[0].1 == task && [nb, nd].contains(&forwards[0].0)
    };
    let gpu = h.spec(&[("GPU", 1.0)]);
    let out = h.submit(driver, &gpu);
    assert_eq!(out.spills, vec![id_of(&gpu)]);
    assert!(out.forwards.is_empty());
    h.step(Event::Spilled {
        task: id_of(&gpu),
        node: nb,
    });
    // Its results come back as for any forwarded task.
    let out = h.step(Event::RemoteTaskFinished {
        task: id_of(&gpu),
        node: nb,
        results: Vec::new(),
    });
    assert_eq!(out.pulls, vec![ObjectId::for_return(id_of(&gpu), 1)]);
    // Placed back here: it runs here, and its result still goes to its driver.
    let back = h.spec(&[("CPU", 1.0)]);
    let (worker, _, _) = h.worker();
    h.submit(driver, &h.spec(&[("CPU", 1.0)]));
    let out = h.submit(driver, &back);
    assert_eq!(out.spills, vec![id_of(&back)], "{out:?}");
    let out = h.step(Event::TaskForwarded {
        spec: back.clone(),
        home: h.s.settings.node_id,
        hops: 1,
        job: None,
    });
    assert!(out.assigned.is_empty(), "queued behind the running task");
    let result = pb::InlineObject {
        object_id: ObjectId::for_return(id_of(&back), 1)
            .as_bytes()
            .to_vec()
            .into(),
        data: b"1".to_vec().into(),
        metadata: value::META_PICKLE5.to_vec().into(),
    };
    let running =
        h.s.pool
            .get(worker)
            .and_then(|w| w.running())
            .map(|t| t.spec.clone());
    let out = h.done(worker, &running.unwrap());
    assert_eq!(out.assigned_ids(), vec![id_of(&back)]);
    let out = h.message(
        worker,
        pb::client_message::Kind::TaskDone(pb::TaskDone {
            task_id: back.task_id.clone(),
            results: vec![result],
        }),
    );
    assert!(
        out.other
            .iter()
            .any(|(c, k)| *c == driver && matches!(k, pb::server_message::Kind::ObjectsReady(_))),
        "its result reaches the driver that submitted it"
    );
    // Actors are placed here even then: their calls need the node at once.
    let actor = ActorId::random();
    let create = creation(&h, actor, &[("GPU", 1.0)]);
    let out = h.submit(driver, &create);
    assert!(
        to_a_gpu_node(&out.forwards, id_of(&create)),
        "{:?}",
        out.forwards
    );
    // No global scheduler answered: placed from this raylet's view.
    let other = h.spec(&[("GPU", 1.0)]);
    assert_eq!(h.submit(driver, &other).spills, vec![id_of(&other)]);
    let out = h.step(Event::SpillFailed {
        task: id_of(&other),
        error: "unavailable".into(),
    });
    assert!(
        to_a_gpu_node(&out.forwards, id_of(&other)),
        "{:?}",
        out.forwards
    );
    // Gone: tasks go straight to the nodes again.
    h.step(Event::GlobalScheduler { available: false });
    let last = h.spec(&[("GPU", 1.0)]);
    let out = h.submit(driver, &last);
    assert!(
        to_a_gpu_node(&out.forwards, id_of(&last)),
        "{:?}",
        out.forwards
    );
}

#[test]
fn a_task_relayed_from_here_that_was_not_taken_is_placed_again() {
    // Here: 1 CPU, taken. b and c: 1 CPU each. A task of another home arrives.
    let (mut h, nb, nc) = with_peers(&[("CPU", 1.0)], &[("CPU", 1.0)], &[("CPU", 1.0)]);
    let driver = h.driver();
    let (_worker, _, _) = h.worker();
    let busy = h.spec(&[("CPU", 1.0)]);
    h.submit(driver, &busy);
    let home = NodeId::random();
    let arrive = |h: &mut Harness, spec: &common_pb::TaskSpec| {
        h.step(Event::TaskForwarded {
            spec: spec.clone(),
            home,
            hops: 1,
            job: None,
        })
    };
    // Handed on to a node with room; that node's stream broke before it took it: the
    // task is placed again (not lost), on the other node.
    let relayed = h.spec(&[("CPU", 1.0)]);
    let out = arrive(&mut h, &relayed);
    assert_eq!(out.forwards.len(), 1, "{out:?}");
    let first = out.forwards[0].0;
    let out = h.step(Event::ForwardFailed {
        task: id_of(&relayed),
        node: first,
        error: "the stream broke".into(),
    });
    let second = if first == nb { nc } else { nb };
    assert_eq!(out.forwards, vec![(second, id_of(&relayed))]);
    // Taken there: nothing of it is kept here.
    h.step(Event::ForwardsTaken {
        node: second,
        tasks: vec![id_of(&relayed)],
    });
    assert!(h.s.relayed.is_empty());
    // Spilled to a global scheduler that is gone: placed from this raylet's view.
    h.step(Event::GlobalScheduler { available: true });
    h.step(Event::NodeHeartbeat {
        node: nb,
        available: amounts(&[("CPU", 1.0)]),
        queued: 0,
    });
    h.step(Event::NodeHeartbeat {
        node: nc,
        available: amounts(&[("CPU", 1.0)]),
        queued: 0,
    });
    let spilled = h.spec(&[("CPU", 1.0)]);
    let out = arrive(&mut h, &spilled);
    assert_eq!(out.spills, vec![id_of(&spilled)], "{out:?}");
    let out = h.step(Event::SpillFailed {
        task: id_of(&spilled),
        error: "unavailable".into(),
    });
    assert_eq!(out.forwards.len(), 1, "placed again: {out:?}");
    assert_eq!(out.forwards[0].1, id_of(&spilled));
}

#[test]
fn a_relay_tells_the_home_and_the_home_redoes_the_task_when_that_node_dies() {
    // The relay: its CPU taken, a task of another home arrives and goes on to b.
    let (mut h, nb, nc) = with_peers(&[("CPU", 1.0)], &[("CPU", 1.0)], &[("CPU", 1.0)]);
    let driver = h.driver();
    let (_worker, _, _) = h.worker();
    let busy = h.spec(&[("CPU", 1.0)]);
    h.submit(driver, &busy);
    let home = NodeId::random();
    let relayed = h.spec(&[("CPU", 1.0)]);
    let out = h.step(Event::TaskForwarded {
        spec: relayed.clone(),
        home,
        hops: 1,
        job: None,
    });
    let to = out.forwards[0].0;
    assert_eq!(out.moved, vec![(home, id_of(&relayed), to)]);

    // The home: its task went to b, which handed it on to c; c dies.
    let (mut h, nb2, nc2) = with_peers(&[("CPU", 1.0)], &[("B", 1.0)], &[("B", 1.0)]);
    let _ = (nb, nc);
    let driver = h.driver();
    let mut task = h.spec(&[("B", 1.0)]);
    task.max_retries = 1;
    let first = h.submit(driver, &task).forwards[0].0;
    let next = if first == nb2 { nc2 } else { nb2 };
    h.step(Event::TaskMoved {
        task: id_of(&task),
        node: next,
    });
    let out = h.step(Event::NodeRemoved { node: next });
    assert_eq!(out.forwards, vec![(first, id_of(&task))], "redone: {out:?}");
    // A report of a move to a node already dead: redone at once.
    let mut late = h.spec(&[("B", 1.0)]);
    late.max_retries = 1;
    let went = h.submit(driver, &late).forwards[0].0;
    assert_eq!(went, first);
    let out = h.step(Event::TaskMoved {
        task: id_of(&late),
        node: next,
    });
    assert_eq!(out.forwards, vec![(first, id_of(&late))], "redone: {out:?}");
}

#[test]
fn tasks_forwarded_to_a_node_that_dies_are_redone_while_retries_allow_then_fail() {
    let (mut h, nb, nc) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("B", 1.0)],
        &[("CPU", 1.0), ("B", 1.0)],
    );
    let driver = h.driver();
    let mut retried = h.spec(&[("B", 1.0)]);
    retried.max_retries = 1;
    let mut once = h.spec(&[("B", 1.0)]);
    once.max_retries = 0;
    let first = h.submit(driver, &retried).forwards[0].0;
    let other = h.submit(driver, &once).forwards[0].0;
    assert!([nb, nc].contains(&first) && [nb, nc].contains(&other));
    // Both on one node: kill the one that has the retried task.
    let out = h.step(Event::NodeRemoved { node: first });
    let survivor = if first == nb { nc } else { nb };
    assert!(
        out.forwards.contains(&(survivor, id_of(&retried))),
        "{out:?}"
    );
    if other == first {
        assert_eq!(
            out.error_puts(value::ERROR_WORKER_DIED),
            vec![ObjectId::for_return(id_of(&once), 1)]
        );
        assert_eq!(out.errors, vec!["node_died"]);
    }
    // The retry's node dies too: no retries left, its result becomes an error.
    let out = h.step(Event::NodeRemoved { node: survivor });
    assert!(out
        .error_puts(value::ERROR_WORKER_DIED)
        .contains(&ObjectId::for_return(id_of(&retried), 1)));
}

#[test]
fn an_actor_whose_node_dies_is_made_again_elsewhere_and_its_calls_in_flight_fail() {
    let (mut h, nb, nc) = with_peers(
        &[("CPU", 1.0)],
        &[("CPU", 1.0), ("R", 1.0)],
        &[("CPU", 1.0)],
    );
    let driver = h.driver();
    let actor = ActorId::random();
    let mut create = creation(&h, actor, &[("R", 1.0)]);
    create.max_restarts = 1;
    assert_eq!(
        h.submit(driver, &create).forwards,
        vec![(nb, id_of(&create))]
    );
    let in_flight = call(&h, actor);
    h.submit(driver, &in_flight);
    h.step(Event::RemoteTaskFinished {
        task: id_of(&create),
        node: nb,
        results: Vec::new(),
    });
    // c learns it has R too; then b dies.
    h.step(Event::NodeHeartbeat {
        node: nc,
        available: amounts(&[("CPU", 1.0), ("R", 1.0)]),
        queued: 0,
    });
    h.s.cluster.add(nc, amounts(&[("CPU", 1.0), ("R", 1.0)]));
    let out = h.step(Event::NodeRemoved { node: nb });
    assert_eq!(
        out.error_puts(value::ERROR_ACTOR_DIED),
        vec![ObjectId::for_return(id_of(&in_flight), 1)],
        "a call that was on its way is not run twice"
    );
    assert_eq!(out.forwards, vec![(nc, id_of(&create))], "made again on c");
    let next = call(&h, actor);
    assert_eq!(h.submit(driver, &next).forwards, vec![(nc, id_of(&next))]);
    // c dies too: no restarts left, later calls fail at once.
    h.step(Event::RemoteTaskFinished {
        task: id_of(&create),
        node: nc,
        results: Vec::new(),
    });
    h.step(Event::NodeRemoved { node: nc });
    let last = call(&h, actor);
    let out = h.submit(driver, &last);
    assert!(out.forwards.is_empty());
    assert_eq!(
        out.error_puts(value::ERROR_ACTOR_DIED),
        vec![ObjectId::for_return(id_of(&last), 1)]
    );
}

#[test]
fn a_rerun_from_lineage_runs_once_and_puts_its_small_results_in_the_store() {
    let mut h = Harness::new(&[("CPU", 1.0)]);
    let _driver = h.driver();
    let (worker, _, _) = h.worker();
    let spec = h.spec(&[("CPU", 1.0)]);
    let out = h.step(Event::Rerun { spec: spec.clone() });
    assert_eq!(out.assigned_ids(), vec![id_of(&spec)]);
    // A second claim of the same task while it runs changes nothing.
    assert!(h
        .step(Event::Rerun { spec: spec.clone() })
        .assigned
        .is_empty());
    let result = ObjectId::for_return(id_of(&spec), 1);
    let out = h.message(
        worker,
        pb::client_message::Kind::TaskDone(pb::TaskDone {
            task_id: spec.task_id.clone(),
            results: vec![pb::InlineObject {
                object_id: result.as_bytes().to_vec().into(),
                data: b"again".to_vec().into(),
                metadata: Vec::new().into(),
            }],
        }),
    );
    assert_eq!(
        out.puts.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![result],
        "other nodes find the rebuilt copy in the store"
    );
}
