//! A driver's or worker's connection to rayd: IDs, submission, objects, functions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayd_common::id::{ActorId, FunctionId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use rayd_common::proto::common::v1 as common_pb;
use rayd_common::proto::raylet::v1 as pb;
use rayd_gcs::{FunctionInfo, GcsClient, GcsReply, Server};
use rayd_plasma_client::{ClientError, PlasmaClient};

use crate::inbox::Inbox;
use crate::object::Object;
use crate::raylet_client::RayletConnection;
use crate::INLINE_RESULT_MAX;
use crate::{value, CoreError};

/// How long one wait lasts before the caller's `interrupted` is asked (Ctrl-C).
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// How long a worker waits for a function definition to appear in the GCS (the driver
/// exports it before submitting, so only a lagging shard makes this wait at all).
const FUNCTION_WAIT: Duration = Duration::from_secs(30);
/// How often a driver checks that the shards still hold the functions it exported.
const EXPORTED_CHECK: Duration = Duration::from_millis(500);

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub raylet_socket: PathBuf,
    /// A worker (started by the raylet) rather than a driver.
    pub is_worker: bool,
    /// Drivers: deterministic IDs for the job (`object_id_seed`).
    pub object_id_seed: Option<u64>,
    /// Drivers: the Python environment workers need.
    pub python_path: Vec<String>,
    pub cwd: String,
    pub redirect_worker_output: bool,
    /// The cluster's Redis password.
    pub redis_password: Option<String>,
}

/// An argument of a task: a serialized value, or an object to wait for.
#[derive(Debug, Clone)]
pub enum TaskArgValue {
    Inline(Vec<u8>),
    Object(ObjectId),
}

/// How a task runs.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    pub num_returns: u32,
    pub resources: BTreeMap<String, f64>,
    pub max_retries: u32,
    pub max_calls: u32,
    /// Actor tasks: which actor, and how.
    pub actor: Option<ActorCall>,
}

/// What makes a task an actor's.
#[derive(Debug, Clone, Default)]
pub struct ActorCall {
    /// The actor (for a creation task: derived from the task ID when `None`).
    pub actor_id: Option<ActorId>,
    pub creation: bool,
    pub max_restarts: u32,
    /// Creation: the resources are held for the actor's life.
    pub holds_resources: bool,
    /// Method calls: the handle and its call counter (calls of a handle run in order).
    pub handle_id: Vec<u8>,
    pub counter: u64,
}

/// A task the raylet gave this worker.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub spec: common_pb::TaskSpec,
    pub job: Option<pb::JobConfig>,
    pub resource_ids: HashMap<String, pb::ResourceIds>,
}

/// Where the worker or driver is in its job: the task whose children and puts it numbers.
#[derive(Debug)]
struct Context {
    job: JobId,
    task: TaskId,
    children: u64,
    puts: u32,
}

/// One driver's or worker's view of rayd.
#[derive(Debug)]
pub struct CoreWorker {
    is_worker: bool,
    worker_id: WorkerId,
    node_id: NodeId,
    node_ip_address: String,
    redis_address: String,
    raylet: Arc<RayletConnection>,
    plasma: Arc<PlasmaClient>,
    /// Both connections, lent to [`crate::refs`], which frees this process's puts through
    /// them (for as long as this core worker lives).
    _releaser: Arc<crate::refs::Releaser>,
    plasma_socket: PathBuf,
    gcs: GcsClient,
    /// The cluster's secret (none in an open cluster): function definitions are signed
    /// and checked with it.
    secret: Option<String>,
    runtime: tokio::runtime::Runtime,
    context: Mutex<Context>,
    /// The definitions this process exported (drivers put them back when a shard that held
    /// them restarted empty; see [`keep_exported`]).
    exported: Arc<Mutex<HashMap<FunctionId, FunctionInfo>>>,
    functions: Mutex<HashMap<FunctionId, Arc<FunctionInfo>>>,
    inbox: Inbox,
    /// Workers: the small results of the running task, sent with its `TaskDone`.
    results: Mutex<Vec<pb::InlineObject>>,
    /// Workers: tasks received ahead of time, in order, and how many `Blocked` messages
    /// the raylet has not answered yet (its answer may take some of them back).
    ahead: Mutex<(VecDeque<Assigned>, u32)>,
}

impl CoreWorker {
    /// Registers with the raylet at `options.raylet_socket`, then connects to the node's
    /// plasma store and the cluster's GCS.
    pub fn connect(options: &ConnectOptions) -> Result<Self, CoreError> {
        let raylet = Arc::new(RayletConnection::connect(&options.raylet_socket)?);
        let worker_id = WorkerId::random();
        let job = match options.object_id_seed {
            Some(seed) => JobId::from_seed(seed),
            None => JobId::random(),
        };
        let job_config = (!options.is_worker).then(|| pb::JobConfig {
            job_id: job.as_bytes().to_vec(),
            python_path: options.python_path.clone(),
            cwd: options.cwd.clone(),
            redirect_worker_output: options.redirect_worker_output,
        });
        raylet.send(pb::client_message::Kind::Register(pb::Register {
            worker_id: worker_id.as_bytes().to_vec(),
            is_worker: options.is_worker,
            pid: std::process::id(),
            job: job_config,
        }))?;
        let registered = match raylet.receive()? {
            pb::server_message::Kind::Registered(r) => r,
            other => {
                return Err(CoreError::Unexpected {
                    expected: "registered",
                    got: format!("{other:?}"),
                })
            }
        };
        let node_id =
            NodeId::from_slice(&registered.node_id).map_err(|e| CoreError::Unexpected {
                expected: "a node id",
                got: e.to_string(),
            })?;
        let name = if options.is_worker {
            "worker"
        } else {
            "driver"
        };
        let plasma = Arc::new(PlasmaClient::connect(
            &registered.plasma_socket,
            &format!("{name} {}", std::process::id()),
        )?);
        let releaser = Arc::new(crate::refs::Releaser {
            plasma: Arc::clone(&plasma),
            raylet: Arc::clone(&raylet),
        });
        crate::refs::attach(&releaser);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rayd-core")
            .enable_all()
            .build()
            .map_err(CoreError::Runtime)?;
        let password = options
            .redis_password
            .clone()
            .or_else(|| Some(registered.redis_password.clone()))
            .filter(|p| !p.is_empty());
        let gcs = runtime.block_on(GcsClient::connect(
            &registered.redis_address,
            password.as_deref(),
        ))?;
        // Drivers: the raylet's messages are read by waiting threads, or by a background
        // thread while none waits (see [`crate::inbox`]).
        let reader = (!options.is_worker).then(|| raylet.take_reader()).flatten();
        let inbox = match reader {
            Some((reader, socket)) => {
                Inbox::reading_raylet(reader, socket).map_err(CoreError::Runtime)?
            }
            None => Inbox::default(),
        };
        let exported = Arc::default();
        if !options.is_worker {
            runtime.spawn(keep_exported(gcs.clone(), Arc::clone(&exported)));
        }
        let core = Self {
            is_worker: options.is_worker,
            worker_id,
            node_id,
            node_ip_address: registered.node_ip_address,
            redis_address: registered.redis_address,
            raylet,
            plasma,
            _releaser: releaser,
            plasma_socket: PathBuf::from(registered.plasma_socket),
            gcs,
            secret: password,
            runtime,
            context: Mutex::new(Context {
                job,
                task: TaskId::for_driver(job),
                children: 0,
                puts: 0,
            }),
            exported,
            functions: Mutex::default(),
            inbox,
            results: Mutex::default(),
            ahead: Mutex::default(),
        };
        Ok(core)
    }

    fn context(&self) -> std::sync::MutexGuard<'_, Context> {
        self.context.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn worker_id(&self) -> WorkerId {
        self.worker_id
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn node_ip_address(&self) -> &str {
        &self.node_ip_address
    }

    pub fn redis_address(&self) -> &str {
        &self.redis_address
    }

    pub fn plasma_socket(&self) -> &Path {
        &self.plasma_socket
    }

    /// The job of the current task.
    pub fn job_id(&self) -> JobId {
        self.context().job
    }

    /// The task this process is running (a driver's root task for drivers).
    pub fn current_task_id(&self) -> TaskId {
        self.context().task
    }

    /// The GCS, and a runtime to use it from blocking code.
    pub fn gcs(&self) -> (&GcsClient, &tokio::runtime::Runtime) {
        (&self.gcs, &self.runtime)
    }

    /// Writes a function definition to the GCS function table, once per process.
    pub fn export_function(
        &self,
        id: FunctionId,
        name: &str,
        definition: &[u8],
    ) -> Result<(), CoreError> {
        if self
            .exported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            return Ok(());
        }
        let mac = self.secret.as_deref().map_or_else(Vec::new, |secret| {
            rayd_common::auth::function_mac(secret, id.as_bytes(), name, definition)
        });
        let info = FunctionInfo {
            function_id: id,
            job_id: self.job_id(),
            name: name.to_string(),
            definition: definition.to_vec(),
            mac,
        };
        self.runtime.block_on(self.gcs.put_function(&info))?;
        self.exported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info);
        Ok(())
    }

    /// A function definition, from this process's cache or the GCS.
    pub fn function(&self, id: FunctionId) -> Result<Arc<FunctionInfo>, CoreError> {
        if let Some(info) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(Arc::clone(info));
        }
        let info = self.runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + FUNCTION_WAIT;
            loop {
                if let Some(info) = self.gcs.function(id).await? {
                    return self.verified(info);
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(CoreError::FunctionNotFound(id));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        let info = Arc::new(info);
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&info));
        Ok(info)
    }

    /// `info` when its MAC verifies under the cluster's secret (any in an open cluster).
    fn verified(&self, info: FunctionInfo) -> Result<FunctionInfo, CoreError> {
        let Some(secret) = self.secret.as_deref() else {
            return Ok(info);
        };
        if rayd_common::auth::function_mac_matches(
            secret,
            info.function_id.as_bytes(),
            &info.name,
            &info.definition,
            &info.mac,
        ) {
            Ok(info)
        } else {
            Err(CoreError::FunctionForged {
                id: info.function_id,
                name: info.name,
            })
        }
    }

    /// Submits a task to the local raylet and returns its ID and its return objects' IDs
    /// at once. Each returned ID comes with one handle counted already (`refs::submitted`):
    /// the caller's first handle of it must not count itself again.
    pub fn submit_task(
        &self,
        function_id: FunctionId,
        function_name: &str,
        args: Vec<TaskArgValue>,
        kwarg_names: Vec<String>,
        options: &TaskOptions,
    ) -> Result<(TaskId, Vec<ObjectId>), CoreError> {
        let (task, job) = {
            let mut context = self.context();
            context.children += 1;
            (
                TaskId::for_child(context.task, context.children),
                context.job,
            )
        };
        let object_args: Vec<ObjectId> = args
            .iter()
            .filter_map(|arg| match arg {
                TaskArgValue::Object(id) => Some(*id),
                TaskArgValue::Inline(_) => None,
            })
            .collect();
        let args = args
            .into_iter()
            .map(|arg| common_pb::TaskArg {
                value: Some(match arg {
                    TaskArgValue::Inline(bytes) => common_pb::task_arg::Value::Inline(bytes),
                    TaskArgValue::Object(id) => {
                        common_pb::task_arg::Value::ObjectId(id.as_bytes().to_vec())
                    }
                }),
            })
            .collect();
        let mut spec = common_pb::TaskSpec {
            task_id: task.as_bytes().to_vec(),
            job_id: job.as_bytes().to_vec(),
            parent_task_id: self.current_task_id().as_bytes().to_vec(),
            function_id: function_id.as_bytes().to_vec(),
            function_name: function_name.to_string(),
            args,
            num_returns: options.num_returns,
            resources: options.resources.clone().into_iter().collect(),
            max_retries: options.max_retries,
            max_calls: options.max_calls,
            kwarg_names,
            ..Default::default()
        };
        if let Some(actor) = &options.actor {
            let id = actor
                .actor_id
                .unwrap_or_else(|| ActorId::from_bytes(*task.as_bytes()));
            spec.actor_id = id.as_bytes().to_vec();
            spec.actor_creation = actor.creation;
            spec.max_restarts = actor.max_restarts;
            spec.actor_holds_resources = actor.holds_resources;
            spec.actor_handle_id = actor.handle_id.clone();
            spec.actor_counter = actor.counter;
        }
        let returns: Vec<ObjectId> = (1..=options.num_returns)
            .map(|i| ObjectId::for_return(task, i))
            .collect();
        // Before sending: the results may come back before `send` returns.
        let rerunnable = options.actor.as_ref().is_some_and(|a| a.creation);
        crate::refs::submitted(&object_args, &returns, rerunnable);
        self.inbox.expect(&returns);
        if let Err(e) = self.raylet.send(pb::client_message::Kind::SubmitTask(spec)) {
            crate::refs::withdrawn(&returns);
            return Err(e);
        }
        Ok((task, returns))
    }

    /// The ID the next `ray.put` of this task gets.
    fn next_put_id(&self) -> ObjectId {
        let mut context = self.context();
        context.puts += 1;
        ObjectId::for_put(context.task, context.puts)
    }

    /// Stores a serialized value under a fresh put ID.
    pub fn put(
        &self,
        metadata: &[u8],
        pickle: &[u8],
        buffers: &[&[u8]],
    ) -> Result<ObjectId, CoreError> {
        let id = self.next_put_id();
        self.store(id, &layout_of(pickle, buffers), metadata, pickle, buffers)?;
        crate::refs::put(id);
        Ok(id)
    }

    /// Stores a serialized value (or an error) laid out as `layout` in plasma as object
    /// `id`. Storing an object that exists already succeeds: a retried task stores the
    /// same results again.
    fn store(
        &self,
        id: ObjectId,
        layout: &value::Layout,
        metadata: &[u8],
        pickle: &[u8],
        buffers: &[&[u8]],
    ) -> Result<(), CoreError> {
        let mut builder = match self
            .plasma
            .create(id, layout.total as u64, metadata.len() as u64)
        {
            Ok(builder) => builder,
            Err(ClientError::ObjectExists(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Written part by part: a large object's parts go straight into its segment's
        // file, without a mapping to build.
        let header = value::header(layout, pickle.len(), buffers.len());
        builder.write_at(0, &header)?;
        builder.write_at(layout.pickle.start as u64, pickle)?;
        for (range, buffer) in layout.buffers.iter().zip(buffers) {
            builder.write_at(range.start as u64, buffer)?;
        }
        builder.write_at(layout.total as u64, metadata)?;
        builder.seal()?;
        Ok(())
    }

    /// Workers: stores a result of the running task: a small one goes with the task's
    /// `TaskDone` (a later one for the same ID replaces it), a large one into plasma now.
    pub fn store_return(
        &self,
        id: ObjectId,
        metadata: &[u8],
        pickle: &[u8],
        buffers: &[&[u8]],
    ) -> Result<(), CoreError> {
        let layout = layout_of(pickle, buffers);
        if layout.total + metadata.len() > INLINE_RESULT_MAX {
            return self.store(id, &layout, metadata, pickle, buffers);
        }
        let mut data = vec![0; layout.total];
        value::write(&mut data, &layout, pickle, buffers);
        let object = pb::InlineObject {
            object_id: id.as_bytes().to_vec().into(),
            data: data.into(),
            metadata: metadata.to_vec().into(),
        };
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        match results.iter_mut().find(|r| r.object_id == object.object_id) {
            Some(earlier) => *earlier = object,
            None => results.push(object),
        }
        Ok(())
    }

    /// Objects already here: small ones that arrived, then what plasma has sealed (asking it
    /// about expected results only when `ask_all`: once followed, their seals are seen).
    fn lookup(
        &self,
        ids: &[ObjectId],
        found: &mut [Option<Object>],
        ask_all: bool,
    ) -> Result<(), CoreError> {
        let ask_store = self.inbox.take_inline(ids, found, ask_all);
        if ask_store.is_empty() {
            return Ok(());
        }
        let wanted: Vec<ObjectId> = ask_store.iter().map(|i| ids[*i]).collect();
        let got = self.plasma.get_or_freed(&wanted, Some(Duration::ZERO))?;
        for (i, buffer) in ask_store.into_iter().zip(got.objects) {
            if let Some(buffer) = buffer {
                self.inbox.insert_sealed(ids[i]);
                found[i] = Some(Object::Plasma(buffer));
            }
        }
        if !got.freed.is_empty() {
            // Freed (by any process) while a reader here holds it: no copy will be served
            // until the reader lets go, and then none is left. Waiting would last as long
            // as the reader.
            self.inbox.freed_in_use(&got.freed);
            self.inbox.take_inline(ids, found, false);
        }
        Ok(())
    }

    /// Prepares to wait for `ids`: follows the store's events, asks the raylet for those
    /// that no message will bring unasked, then looks for them (after following, so that
    /// nothing sealed after the look goes unnoticed; when following started just now, the
    /// look asks the store about everything, as seals before it went unseen).
    fn prepare_wait(
        &self,
        ids: &[ObjectId],
        found: &mut [Option<Object>],
    ) -> Result<(), CoreError> {
        let started = self.inbox.follow_store(&self.plasma_socket)?;
        self.fetch(&self.inbox.to_fetch(ids))?;
        self.lookup(ids, found, started)
    }

    /// Asks the raylet for `ids` (none: no message).
    fn fetch(&self, ids: &[ObjectId]) -> Result<(), CoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.raylet.send(pb::client_message::Kind::Fetch(pb::Fetch {
            object_ids: ids.iter().map(|id| id.as_bytes().to_vec()).collect(),
        }))
    }

    /// The objects `ids`, waiting up to `timeout` (forever when `None`); absent ones are
    /// `None`. The wait follows the raylet's messages and the store's event stream (no
    /// request per object while waiting) in slices, between which `interrupted` may end it
    /// (Ctrl-C). A worker that has to wait tells its raylet, which lends its CPUs to other
    /// tasks meanwhile.
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Vec<Option<Object>>, CoreError> {
        let mut found: Vec<Option<Object>> = vec![None; ids.len()];
        self.lookup(ids, &mut found, false)?;
        if found.iter().all(Option::is_some) || timeout == Some(Duration::ZERO) {
            return Ok(found);
        }
        self.prepare_wait(ids, &mut found)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        if self.is_worker {
            self.block()?;
        }
        let result = loop {
            if found.iter().all(Option::is_some)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || interrupted()
            {
                break Ok(());
            }
            let missing: Vec<usize> = (0..ids.len()).filter(|i| found[*i].is_none()).collect();
            let wanted: Vec<ObjectId> = missing.iter().map(|i| ids[*i]).collect();
            let slice = deadline.map_or(WAIT_SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(WAIT_SLICE)
            });
            let ready = match self.inbox.wait(&wanted, wanted.len(), Some(slice)) {
                Ok(ready) => ready,
                Err(e) => break Err(e),
            };
            if ready.iter().any(|r| *r) {
                if let Err(e) = self.lookup(ids, &mut found, false) {
                    break Err(e);
                }
            } else if let Err(e) = self.fetch(&self.inbox.dropped_of(&wanted)) {
                break Err(e);
            }
        };
        if self.is_worker {
            self.unblock()?;
        }
        result.map(|()| found)
    }

    /// Workers: tells the raylet this worker waits (its CPUs are lent meanwhile); the
    /// answer comes before the next task starts (see `next_task`).
    fn block(&self) -> Result<(), CoreError> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        self.raylet
            .send(pb::client_message::Kind::Blocked(pb::Blocked {}))
    }

    fn unblock(&self) -> Result<(), CoreError> {
        self.raylet
            .send(pb::client_message::Kind::Unblocked(pb::Unblocked {}))
    }

    /// Which of `ids` are here (small ones that arrived, or sealed locally), waiting until
    /// `num_returns` are or `timeout` passes (or `interrupted` says to stop, checked
    /// between slices).
    pub fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Vec<bool>, CoreError> {
        // Objects sealed before the store was followed are only known to the store.
        let mut found: Vec<Option<Object>> = vec![None; ids.len()];
        self.prepare_wait(ids, &mut found)?;
        let enough = |ready: &[bool]| ready.iter().filter(|r| **r).count() >= num_returns;
        let ready = self.inbox.wait(ids, num_returns, Some(Duration::ZERO))?;
        if enough(&ready) || timeout == Some(Duration::ZERO) {
            return Ok(ready);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        // A worker that waits gives its CPUs back, as in `get`.
        if self.is_worker {
            self.block()?;
        }
        let ready = loop {
            let slice = deadline.map_or(WAIT_SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(WAIT_SLICE)
            });
            let ready = match self.inbox.wait(ids, num_returns, Some(slice)) {
                Ok(ready) => ready,
                Err(e) => break Err(e),
            };
            if enough(&ready) || deadline.is_some_and(|d| Instant::now() >= d) || interrupted() {
                break Ok(ready);
            }
            if let Err(e) = self.fetch(&self.inbox.dropped_of(ids)) {
                break Err(e);
            }
        };
        if self.is_worker {
            self.unblock()?;
        }
        ready
    }

    /// Workers: waits for the next task; `None` when the raylet says to exit. Tasks sent
    /// ahead wait here until every `Blocked` is answered, since an answer may cancel them.
    pub fn next_task(&self) -> Result<Option<Assigned>, CoreError> {
        loop {
            {
                let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
                if ahead.1 == 0 {
                    if let Some(assigned) = ahead.0.pop_front() {
                        drop(ahead);
                        return self.start(assigned).map(Some);
                    }
                }
            }
            match self.raylet.receive()? {
                pb::server_message::Kind::AssignTask(assign) => {
                    let assigned = Assigned {
                        spec: assign.spec.unwrap_or_default(),
                        job: assign.job,
                        resource_ids: assign.resource_ids,
                    };
                    self.ahead
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                        .push_back(assigned);
                }
                pb::server_message::Kind::BlockedAck(ack) => {
                    let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
                    ahead.1 = ahead.1.saturating_sub(1);
                    ahead.0.retain(|a| !ack.canceled.contains(&a.spec.task_id));
                }
                pb::server_message::Kind::Exit(exit) => {
                    log::info!(reason = exit.reason.as_str(); "raylet asked this worker to exit");
                    return Ok(None);
                }
                pb::server_message::Kind::ObjectsReady(ready) => {
                    self.inbox.insert_inline(ready.objects)
                }
                _ => continue,
            }
        }
    }

    /// Makes `assigned` the current task: its children and puts are numbered from it.
    fn start(&self, assigned: Assigned) -> Result<Assigned, CoreError> {
        let task =
            TaskId::from_slice(&assigned.spec.task_id).map_err(|e| CoreError::Unexpected {
                expected: "a task id",
                got: e.to_string(),
            })?;
        let job = JobId::from_slice(&assigned.spec.job_id).unwrap_or(JobId::NIL);
        *self.context() = Context {
            job,
            task,
            children: 0,
            puts: 0,
        };
        Ok(assigned)
    }

    /// Runs one Redis command on a GCS server (the SDK's own tables, and reading any).
    pub fn gcs_command(
        &self,
        server: Server<'_>,
        name: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<GcsReply, CoreError> {
        Ok(self
            .runtime
            .block_on(self.gcs.command(server, name, args))?)
    }

    /// Drops objects from this node's store (`ray.internal.free`), and unless `local_only`
    /// has the raylet drop the other nodes' copies; returns how many this node's store
    /// had. An object in use stays until its last reader releases it.
    pub fn free(&self, ids: &[ObjectId], local_only: bool) -> Result<usize, CoreError> {
        // Forgotten before the store is asked: the store announces the removal on its event
        // stream (a deferred one when its last pin goes), and until then a seal announced
        // is from before the free. Forgotten after the reply, the announcement could come
        // first, and the object's next seal (its lost-object error, say) would be taken
        // for a stale one, leaving a `get` waiting.
        self.inbox.forget(ids);
        let report = match self.plasma.delete(ids) {
            Ok(report) => report,
            Err(e) => {
                self.inbox.unforget(ids);
                return Err(e.into());
            }
        };
        // No removal comes for what the store did not have.
        self.inbox.unforget(&report.not_found);
        // What a reader still holds goes when it lets go; new readers get none of it.
        self.inbox.freed_in_use(&report.deferred);
        // After this node's delete, on the same connection as the fetches that may
        // follow: the raylet notes the objects freed before it sees them.
        if !local_only {
            // In frames far under the raylet's limit, however many IDs.
            for chunk in ids.chunks(100_000) {
                self.raylet.send(pb::client_message::Kind::Free(pb::Free {
                    object_ids: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
                    all_nodes: true,
                }))?;
            }
        }
        Ok(report.deleted.len() + report.deferred.len())
    }

    /// Kills an actor of this node (`ray.kill`).
    pub fn kill_actor(&self, actor: ActorId) -> Result<(), CoreError> {
        self.raylet
            .send(pb::client_message::Kind::KillActor(pb::KillActor {
                actor_id: actor.as_bytes().to_vec(),
            }))
    }

    /// Workers: reports the current task finished, with its small results (the large
    /// ones are sealed in plasma).
    pub fn task_done(&self, task: TaskId) -> Result<(), CoreError> {
        let results = std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()));
        self.raylet
            .send(pb::client_message::Kind::TaskDone(pb::TaskDone {
                task_id: task.as_bytes().to_vec(),
                results,
            }))
    }
}

/// Where a pickle and its out-of-band buffers go in an object's data.
fn layout_of(pickle: &[u8], buffers: &[&[u8]]) -> value::Layout {
    let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
    value::layout(pickle.len(), &lens)
}

/// Drivers: puts back the function definitions that a Redis shard lost when it restarted
/// without persistence, so that the workers that wait for them find them. One key per
/// shard is checked (the first function exported there): a restart loses all of them.
async fn keep_exported(gcs: GcsClient, exported: Arc<Mutex<HashMap<FunctionId, FunctionInfo>>>) {
    let shards = gcs.shard_addresses().len();
    let mut tick = tokio::time::interval(EXPORTED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut canaries: HashMap<usize, FunctionId> = HashMap::new();
        for id in exported.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            canaries
                .entry(rayd_gcs::keys::shard_index(id.as_bytes(), shards))
                .or_insert(*id);
        }
        for (shard, canary) in canaries {
            match gcs.function_exists(canary).await {
                Ok(true) => continue,
                Ok(false) => {}
                // The shard is down or restarting: the next check tells.
                Err(_) => continue,
            }
            let lost: Vec<FunctionInfo> = exported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|f| rayd_gcs::keys::shard_index(f.function_id.as_bytes(), shards) == shard)
                .cloned()
                .collect();
            let mut put = 0;
            for function in &lost {
                match gcs.put_function(function).await {
                    Ok(()) => put += 1,
                    Err(e) => {
                        log::warn!(function:% = function.function_id; "cannot export a function again: {e}")
                    }
                }
            }
            log::info!(shard, functions = put; "a gcs shard lost this driver's functions: exported them again");
        }
    }
}
