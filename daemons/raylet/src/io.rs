//! The raylet's I/O layer: feeds the scheduler core its events and carries out the
//! effects it asks for. Everything that blocks or forks leaves the event loop's thread:
//! plasma puts go to a writer thread of their own (in order), worker processes are
//! forked on the blocking pool, pulls run as tasks of their own; GCS writes go to the
//! batching writer ([`crate::gcs`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rayd_common::id::{NodeId, ObjectId};
use rayd_common::process::signal_pid;
use rayd_common::proto::raylet::v1 as pb;
use rayd_gcs::GcsClient;
use rayd_plasma_client::{ClientError, PlasmaClient};
use tokio::sync::mpsc;

use crate::scheduler::{ConnId, Effect, Event, GcsWrite, Scheduler};
use crate::workers::spawn_worker;

/// What reaches the raylet's event loop.
// Events move once through a channel; boxing the task-carrying variant would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// A connection was accepted; frames for it go to `tx`.
    Connected {
        conn: ConnId,
        tx: mpsc::UnboundedSender<Vec<u8>>,
    },
    /// Anything else, for the scheduler.
    Event(Event),
}

impl From<Event> for Input {
    fn from(event: Event) -> Self {
        Input::Event(event)
    }
}

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub binary: PathBuf,
    pub raylet_socket: PathBuf,
    pub log_level: String,
}

/// The scheduler with the means to carry out its effects.
#[derive(Debug)]
pub struct Node {
    pub scheduler: Scheduler,
    conns: HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>,
    inputs: mpsc::UnboundedSender<Input>,
    writes: mpsc::UnboundedSender<GcsWrite>,
    puts: std::sync::mpsc::Sender<(ObjectId, Arc<pb::InlineObject>)>,
    worker: WorkerCommand,
    gcs: GcsClient,
    plasma: PlasmaClient,
    node_id: NodeId,
}

impl Node {
    pub fn new(
        scheduler: Scheduler,
        inputs: mpsc::UnboundedSender<Input>,
        writes: mpsc::UnboundedSender<GcsWrite>,
        plasma: PlasmaClient,
        gcs: GcsClient,
        worker: WorkerCommand,
    ) -> std::io::Result<Self> {
        let node_id = plasma.node_id();
        let puts = spawn_putter(plasma.clone())?;
        Ok(Self {
            scheduler,
            conns: HashMap::new(),
            inputs,
            writes,
            puts,
            worker,
            gcs,
            plasma,
            node_id,
        })
    }

    /// Handles one input and carries out what it leads to.
    pub fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Connected { conn, tx } => {
                self.conns.insert(conn, tx);
                self.scheduler.handle(now, Event::Connected { conn });
            }
            Input::Event(event) => {
                let closed = match &event {
                    Event::Disconnected { conn } => Some(*conn),
                    _ => None,
                };
                self.scheduler.handle(now, event);
                if let Some(conn) = closed {
                    self.conns.remove(&conn);
                }
            }
        }
        self.carry_out();
    }

    /// Starts the workers kept ahead of demand.
    pub fn prestart(&mut self) {
        self.scheduler.prestart(Instant::now());
        self.carry_out();
    }

    /// Tells every worker and driver that the node stops.
    pub fn stop(&mut self) {
        self.scheduler.stop();
        self.carry_out();
    }

    fn carry_out(&mut self) {
        let effects: Vec<Effect> = self.scheduler.take_effects().collect();
        for effect in effects {
            match effect {
                Effect::Send { conn, frame } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(frame);
                    }
                }
                Effect::StartWorker => self.start_worker(),
                Effect::KillWorker { pid } => {
                    signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                }
                Effect::Put { id, object } => {
                    let _ = self.puts.send((id, object));
                }
                Effect::Pull { id } => self.pull(id),
                Effect::Gcs(write) => {
                    let _ = self.writes.send(write);
                }
            }
        }
    }

    fn start_worker(&self) {
        let command = self.worker.clone();
        let inputs = self.inputs.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _runtime = handle.enter();
            let event = match spawn_worker(
                &command.binary,
                &command.raylet_socket,
                &command.log_level,
                &inputs,
            ) {
                Ok(pid) => Event::WorkerSpawned { pid },
                Err(e) => Event::WorkerSpawnFailed {
                    error: format!("{}: {e}", command.binary.display()),
                },
            };
            let _ = inputs.send(event.into());
        });
    }

    /// Asks the node's store to pull `id` from a live node that holds it; reports it lost
    /// when none does.
    fn pull(&self, id: ObjectId) {
        let gcs = self.gcs.clone();
        let plasma = self.plasma.clone();
        let inputs = self.inputs.clone();
        let own = self.node_id;
        tokio::spawn(async move {
            let locations = match gcs.object_info(id).await {
                Ok(Some(info)) => info.locations,
                Ok(None) => Vec::new(),
                Err(e) => {
                    log::warn!(object:% = id; "cannot look up the object's locations: {e}");
                    Vec::new()
                }
            };
            for node in locations.into_iter().filter(|n| *n != own) {
                let Ok(Some(info)) = gcs.node(node).await else {
                    continue;
                };
                if !info.alive {
                    continue;
                }
                let plasma = plasma.clone();
                let source = info.object_manager_address.clone();
                let pulled = tokio::task::spawn_blocking(move || plasma.pull(id, &source)).await;
                match pulled {
                    // Its seal reaches the scheduler through the store's events.
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => log::warn!(object:% = id, node:% = node; "pull failed: {e}"),
                    Err(e) => log::warn!(object:% = id; "pull task failed: {e}"),
                }
            }
            let _ = inputs.send(Event::ObjectLost(id).into());
        });
    }
}

/// Starts the thread that puts objects into the store for the scheduler, in order.
fn spawn_putter(
    plasma: PlasmaClient,
) -> std::io::Result<std::sync::mpsc::Sender<(ObjectId, Arc<pb::InlineObject>)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(ObjectId, Arc<pb::InlineObject>)>();
    std::thread::Builder::new()
        .name("plasma-puts".into())
        .spawn(move || {
            for (id, object) in rx {
                match plasma.put(id, &object.data, &object.metadata) {
                    Ok(_) | Err(ClientError::ObjectExists(_)) => {}
                    Err(e) => log::error!(object:% = id; "cannot put an object into plasma: {e}"),
                }
            }
        })?;
    Ok(tx)
}
