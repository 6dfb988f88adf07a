//! `ray._raylet`: the Python binding of the rayd core.
//!
//! Every blocking call releases the GIL; long waits run in slices and check for Ctrl-C in
//! between. Rust errors become the exception classes of `ray.exceptions` in one place,
//! [`to_py_err`]. Objects come back as [`PlasmaBuffer`]s: read-only views of the shared
//! memory that keep the object pinned while Python holds them (zero copy).

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};
use rayd_common::id::{ActorId, FunctionId, ObjectId, TaskId};
use rayd_config::{Overrides, RaydConfig};
use rayd_core::{
    refs, value, ActorCall, ConnectOptions, CoreError, Object, TaskArgValue, TaskOptions,
};
use rayd_gcs::{GcsReply, Server};

/// Submitting a task or reading a result allocates a few small buffers; glibc's malloc
/// was a large share of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether a signal handler raised (Ctrl-C) while the GIL was released; the exception is
/// kept in `slot` to be raised once the wait ends.
fn signalled(slot: &Mutex<Option<PyErr>>) -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            true
        }
    })
}

/// The one mapping from core errors to `ray.exceptions`.
fn to_py_err(error: CoreError) -> PyErr {
    let class = match &error {
        CoreError::Plasma(e) if e.is_store_full() => "ObjectStoreFullError",
        // The node's daemons went away: a `get` that wakes as the raylet stops (its tasks'
        // results turned to errors) may find the store gone first, and one that starts
        // while the node stops may find its socket gone.
        CoreError::Plasma(e) if e.is_store_gone() => "RayletConnectionError",
        CoreError::RayletConnect { .. }
        | CoreError::Raylet(_)
        | CoreError::RayletClosed
        | CoreError::StoreClosed { .. } => "RayletConnectionError",
        _ => "RaySystemError",
    };
    system_error(class, error.to_string())
}

/// A failure of rayd itself that is not a [`CoreError`] (starting a node): a
/// `RaySystemError` whose message is the error's chain of causes.
fn anyhow_err(error: anyhow::Error) -> PyErr {
    system_error("RaySystemError", format!("{error:#}"))
}

/// An instance of the `ray.exceptions` class `class` with `message`.
fn system_error(class: &str, message: String) -> PyErr {
    Python::attach(
        |py| match py.import("ray.exceptions").and_then(|m| m.getattr(class)) {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(_) => PyRuntimeError::new_err(message),
        },
    )
}

/// A GCS reply as Python values: None, int, bytes, or a list of them.
fn reply_to_py(py: Python<'_>, reply: GcsReply) -> PyResult<Py<PyAny>> {
    Ok(match reply {
        GcsReply::Nil => py.None(),
        GcsReply::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        GcsReply::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
        GcsReply::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(reply_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
    })
}

fn id_from(bytes: &[u8]) -> PyResult<ObjectId> {
    ObjectId::from_slice(bytes).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// An object's ID: 20 bytes, printed as hex. Each one is a handle counted by
/// [`rayd_core::refs`]: a `ray.put` of this process goes from the store when nothing here
/// needs it any more (no handle left, the tasks it was passed to done, never pickled).
#[pyclass(name = "ObjectID", module = "ray._raylet", frozen, eq, hash, subclass)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PyObjectId(ObjectId);

impl PyObjectId {
    /// A new handle of `id`.
    fn handle(id: ObjectId) -> Self {
        refs::referenced(&id);
        Self(id)
    }

    /// The first handle of a result of a task just submitted, counted already at the
    /// submission (see `refs::submitted`).
    fn adopt(id: ObjectId) -> Self {
        Self(id)
    }
}

impl Clone for PyObjectId {
    fn clone(&self) -> Self {
        Self::handle(self.0)
    }
}

impl Drop for PyObjectId {
    fn drop(&mut self) {
        refs::released(&self.0);
    }
}

#[pymethods]
impl PyObjectId {
    #[new]
    fn new(id: &[u8]) -> PyResult<Self> {
        id_from(id).map(Self::handle)
    }

    /// The raw 20 bytes.
    fn binary<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    /// The 40 hex digits.
    fn hex(&self) -> String {
        self.0.hex()
    }

    /// The ID of the task that made the object.
    fn task_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.task_id().as_bytes())
    }

    fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    #[staticmethod]
    fn nil() -> Self {
        Self::handle(ObjectId::NIL)
    }

    #[staticmethod]
    fn from_random() -> Self {
        Self::handle(ObjectId::random())
    }

    fn __repr__(&self) -> String {
        format!("ObjectID({})", self.0.hex())
    }

    /// `ObjectID[int]` in annotations (today's Ray's generic `ObjectRef[T]`): the class.
    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, PyType>,
        _item: &Bound<'py, PyAny>,
    ) -> Bound<'py, PyType> {
        cls.clone()
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let py = slf.py();
        // Pickled, the ID may reach any process: this one can no longer tell when the
        // object is no longer needed.
        refs::shared(&slf.get().0);
        Ok((
            slf.get_type().into_any(),
            (PyBytes::new(py, slf.get().0.as_bytes()),),
        ))
    }
}

/// An object's data (pinned in the store, or a small value from the raylet) while this
/// lives; Python reads it through the buffer protocol (`memoryview(buffer)`), read-only
/// and without copying.
#[pyclass(module = "ray._raylet", frozen)]
#[derive(Debug)]
pub struct PlasmaBuffer(Object);

#[pymethods]
impl PlasmaBuffer {
    /// # Safety
    /// Called by CPython with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "objects are immutable: the buffer is read-only",
            ));
        }
        let data = slf.get().0.data();
        // SAFETY: the memory stays mapped and pinned while this object lives, and
        // PyBuffer_FillInfo takes a reference to it for the view's lifetime.
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut _,
                data.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.0.data().len()
    }
}

/// Raw slices of Python buffers (pickle-5 out-of-band buffers), valid while `holders` live.
fn buffer_slices<'py>(buffers: &Bound<'py, PyList>) -> PyResult<Vec<PyBuffer<u8>>> {
    buffers.iter().map(|b| PyBuffer::<u8>::get(&b)).collect()
}

fn as_slice(buffer: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "out-of-band buffers must be contiguous",
        ));
    }
    // SAFETY: the exporter keeps the memory alive and in place while `buffer` lives, and
    // the GIL is held while the slice is used.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) })
}

/// A byte range `(start, end)` as Python sees it.
type Range = (usize, usize);

type GetResult<'py> = Option<(
    Bound<'py, PyBytes>,
    Py<PlasmaBuffer>,
    Option<Range>,
    Vec<Range>,
)>;

/// A driver's or worker's connection to rayd.
#[pyclass(module = "ray._raylet", frozen)]
#[derive(Debug)]
pub struct CoreWorker(rayd_core::CoreWorker);

#[pymethods]
impl CoreWorker {
    #[new]
    #[pyo3(signature = (raylet_socket, is_worker=false, object_id_seed=None, python_path=Vec::new(), cwd=String::new(), redirect_worker_output=false, redis_password=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        raylet_socket: String,
        is_worker: bool,
        object_id_seed: Option<u64>,
        python_path: Vec<String>,
        cwd: String,
        redirect_worker_output: bool,
        redis_password: Option<String>,
    ) -> PyResult<Self> {
        let options = ConnectOptions {
            raylet_socket: raylet_socket.into(),
            is_worker,
            object_id_seed,
            python_path,
            cwd,
            redirect_worker_output,
            redis_password,
        };
        py.detach(|| rayd_core::CoreWorker::connect(&options))
            .map(Self)
            .map_err(to_py_err)
    }

    #[getter]
    fn worker_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.worker_id().as_bytes())
    }

    #[getter]
    fn node_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.node_id().as_bytes())
    }

    #[getter]
    fn job_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.job_id().as_bytes())
    }

    #[getter]
    fn current_task_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.current_task_id().as_bytes())
    }

    #[getter]
    fn redis_address(&self) -> String {
        self.0.redis_address().to_string()
    }

    #[getter]
    fn node_ip_address(&self) -> String {
        self.0.node_ip_address().to_string()
    }

    #[getter]
    fn plasma_socket(&self) -> String {
        self.0.plasma_socket().display().to_string()
    }

    /// Writes a function definition to the GCS (once per process).
    fn export_function(
        &self,
        py: Python<'_>,
        function_id: &[u8],
        name: &str,
        definition: &[u8],
    ) -> PyResult<()> {
        let id = FunctionId::from_slice(function_id)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        // The core exports once per process: after the first call this is a set lookup.
        py.detach(|| self.0.export_function(id, name, definition))
            .map_err(to_py_err)
    }

    /// `(name, pickled definition)` of a function.
    fn get_function<'py>(
        &self,
        py: Python<'py>,
        function_id: &[u8],
    ) -> PyResult<(String, Bound<'py, PyBytes>)> {
        let id = FunctionId::from_slice(function_id)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let info = py.detach(|| self.0.function(id)).map_err(to_py_err)?;
        Ok((info.name.clone(), PyBytes::new(py, &info.definition)))
    }

    /// Submits a task; `args` holds serialized values (bytes) and ObjectIDs.
    #[pyo3(signature = (function_id, name, args, kwarg_names, num_returns, resources, max_retries, max_calls))]
    #[allow(clippy::too_many_arguments)]
    fn submit_task(
        &self,
        py: Python<'_>,
        function_id: &[u8],
        name: &str,
        args: &Bound<'_, PyList>,
        kwarg_names: Vec<String>,
        num_returns: u32,
        resources: BTreeMap<String, f64>,
        max_retries: u32,
        max_calls: u32,
    ) -> PyResult<Vec<PyObjectId>> {
        let options = TaskOptions {
            num_returns,
            resources,
            max_retries,
            max_calls,
            actor: None,
        };
        self.submit(py, function_id, name, args, kwarg_names, options)
            .map(|(_, ids)| ids)
    }

    /// Creates an actor of the class `class_id`; returns the actor's ID (bytes).
    #[pyo3(signature = (class_id, name, args, kwarg_names, resources, holds_resources, max_restarts))]
    #[allow(clippy::too_many_arguments)]
    fn create_actor<'py>(
        &self,
        py: Python<'py>,
        class_id: &[u8],
        name: &str,
        args: &Bound<'_, PyList>,
        kwarg_names: Vec<String>,
        resources: BTreeMap<String, f64>,
        holds_resources: bool,
        max_restarts: u32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let options = TaskOptions {
            num_returns: 0,
            resources,
            max_retries: 0,
            max_calls: 0,
            actor: Some(ActorCall {
                creation: true,
                max_restarts,
                holds_resources,
                ..ActorCall::default()
            }),
        };
        let (task, _) = self.submit(py, class_id, name, args, kwarg_names, options)?;
        Ok(PyBytes::new(py, task.as_bytes()))
    }

    /// Calls `method` of an actor through the handle `handle_id` (its `counter`-th call).
    #[pyo3(signature = (actor_id, handle_id, counter, class_id, method, args, kwarg_names, num_returns))]
    #[allow(clippy::too_many_arguments)]
    fn submit_actor_task(
        &self,
        py: Python<'_>,
        actor_id: &[u8],
        handle_id: &[u8],
        counter: u64,
        class_id: &[u8],
        method: &str,
        args: &Bound<'_, PyList>,
        kwarg_names: Vec<String>,
        num_returns: u32,
    ) -> PyResult<Vec<PyObjectId>> {
        let actor =
            ActorId::from_slice(actor_id).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let options = TaskOptions {
            num_returns,
            resources: BTreeMap::new(),
            max_retries: 0,
            max_calls: 0,
            actor: Some(ActorCall {
                actor_id: Some(actor),
                handle_id: handle_id.to_vec(),
                counter,
                ..ActorCall::default()
            }),
        };
        self.submit(py, class_id, method, args, kwarg_names, options)
            .map(|(_, ids)| ids)
    }

    /// Runs one Redis command on the GCS: on the primary (`shard=None`), the shard of an
    /// ID (`shard=<20 bytes>`) or shard number `shard` (an int). Returns None, int, bytes
    /// or a list of them.
    #[pyo3(signature = (name, args, shard=None))]
    fn gcs_command(
        &self,
        py: Python<'_>,
        name: &str,
        args: Vec<Vec<u8>>,
        shard: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (index, id): (Option<usize>, Option<[u8; 20]>) = match shard {
            None => (None, None),
            Some(s) if s.is_none() => (None, None),
            Some(s) => match s.extract::<usize>() {
                Ok(index) => (Some(index), None),
                Err(_) => {
                    let bytes: Vec<u8> = s.extract()?;
                    let id = bytes.try_into().map_err(|_| {
                        PyValueError::new_err("shard must be an int or a 20-byte ID")
                    })?;
                    (None, Some(id))
                }
            },
        };
        let server = match (index, &id) {
            (Some(index), _) => Server::Shard(index),
            (None, Some(id)) => Server::ShardOf(id),
            (None, None) => Server::Primary,
        };
        let reply = py
            .detach(|| self.0.gcs_command(server, name, args))
            .map_err(to_py_err)?;
        reply_to_py(py, reply)
    }

    /// The number of GCS shards.
    #[getter]
    fn num_gcs_shards(&self) -> usize {
        self.0.gcs().0.shard_addresses().len()
    }

    /// Drops objects from this node's store, and unless `local_only` from every other
    /// node's; returns how many this node's store had.
    #[pyo3(signature = (ids, local_only=false))]
    fn free(
        &self,
        py: Python<'_>,
        ids: Vec<Bound<'_, PyObjectId>>,
        local_only: bool,
    ) -> PyResult<usize> {
        let ids: Vec<ObjectId> = ids.iter().map(|i| i.get().0).collect();
        py.detach(|| self.0.free(&ids, local_only))
            .map_err(to_py_err)
    }

    /// Kills an actor now (`ray.kill`): no restart; its pending calls fail.
    fn kill_actor(&self, py: Python<'_>, actor_id: &[u8]) -> PyResult<()> {
        let actor =
            ActorId::from_slice(actor_id).map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.detach(|| self.0.kill_actor(actor)).map_err(to_py_err)
    }

    /// Stores a serialized value (`ray.put`).
    fn put(
        &self,
        metadata: &[u8],
        pickle: &[u8],
        buffers: &Bound<'_, PyList>,
    ) -> PyResult<PyObjectId> {
        let held = buffer_slices(buffers)?;
        let slices = held.iter().map(as_slice).collect::<PyResult<Vec<_>>>()?;
        self.0
            .put(metadata, pickle, &slices)
            .map(PyObjectId::handle)
            .map_err(to_py_err)
    }

    /// Stores the `index`-th (from 1) return value of the current task.
    fn store_return(
        &self,
        index: u32,
        metadata: &[u8],
        pickle: &[u8],
        buffers: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        if index == 0 {
            return Err(PyValueError::new_err("return indices count from 1"));
        }
        let id = ObjectId::for_return(self.0.current_task_id(), index);
        let held = buffer_slices(buffers)?;
        let slices = held.iter().map(as_slice).collect::<PyResult<Vec<_>>>()?;
        self.0
            .store_return(id, metadata, pickle, &slices)
            .map_err(to_py_err)
    }

    /// The objects, each `(metadata, data, pickle range, buffer ranges)` or `None` when it
    /// did not appear within `timeout_ms` (forever when `None`). Values laid out as
    /// pickle-5 get their ranges; other objects (errors) have `None` as pickle range.
    #[pyo3(signature = (ids, timeout_ms=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<Bound<'py, PyObjectId>>,
        timeout_ms: Option<i64>,
    ) -> PyResult<Vec<GetResult<'py>>> {
        let ids: Vec<ObjectId> = ids.iter().map(|i| i.get().0).collect();
        let timeout = timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
        let interrupted = Mutex::new(None);
        let found = py
            .detach(|| self.0.get(&ids, timeout, &|| signalled(&interrupted)))
            .map_err(to_py_err)?;
        if let Some(e) = interrupted.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        found
            .into_iter()
            .zip(&ids)
            .map(|(buffer, id)| {
                let Some(buffer) = buffer else {
                    return Ok(None);
                };
                let metadata = PyBytes::new(py, buffer.metadata());
                let laid_out = buffer.metadata() == value::META_PICKLE5
                    || value::error_kind(buffer.metadata()) == Some(value::ERROR_TASK);
                let (pickle, buffers) = if laid_out {
                    let layout = value::parse(buffer.data())
                        .map_err(|source| to_py_err(CoreError::Value { id: *id, source }))?;
                    (
                        Some((layout.pickle.start, layout.pickle.end)),
                        layout.buffers.iter().map(|r| (r.start, r.end)).collect(),
                    )
                } else {
                    (None, Vec::new())
                };
                Ok(Some((
                    metadata,
                    Py::new(py, PlasmaBuffer(buffer))?,
                    pickle,
                    buffers,
                )))
            })
            .collect()
    }

    /// Which of `ids` are ready, waiting until `num_returns` are or `timeout_ms` passes.
    #[pyo3(signature = (ids, num_returns, timeout_ms=None))]
    fn wait(
        &self,
        py: Python<'_>,
        ids: Vec<Bound<'_, PyObjectId>>,
        num_returns: usize,
        timeout_ms: Option<i64>,
    ) -> PyResult<Vec<bool>> {
        let ids: Vec<ObjectId> = ids.iter().map(|i| i.get().0).collect();
        let timeout = timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
        let interrupted = Mutex::new(None);
        let ready = py
            .detach(|| {
                self.0
                    .wait(&ids, num_returns, timeout, &|| signalled(&interrupted))
            })
            .map_err(to_py_err)?;
        match interrupted.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(ready),
        }
    }

    /// Workers: runs tasks until the raylet says to exit. `execute(task)` gets a dict
    /// describing the task and stores its results itself (`store_return`).
    fn run_task_loop(&self, py: Python<'_>, execute: &Bound<'_, PyAny>) -> PyResult<()> {
        loop {
            let Some(assigned) = py.detach(|| self.0.next_task()).map_err(to_py_err)? else {
                return Ok(());
            };
            let spec = &assigned.spec;
            let task = PyDict::new(py);
            task.set_item("task_id", PyBytes::new(py, &spec.task_id))?;
            task.set_item("job_id", PyBytes::new(py, &spec.job_id))?;
            task.set_item("function_id", PyBytes::new(py, &spec.function_id))?;
            task.set_item("function_name", &spec.function_name)?;
            let args = PyList::empty(py);
            for arg in &spec.args {
                use rayd_common::proto::common::v1::task_arg::Value;
                match &arg.value {
                    Some(Value::Inline(bytes)) => args.append(PyBytes::new(py, bytes))?,
                    Some(Value::ObjectId(bytes)) => {
                        args.append(Py::new(py, PyObjectId::handle(id_from(bytes)?))?)?
                    }
                    None => args.append(py.None())?,
                }
            }
            task.set_item("args", args)?;
            task.set_item("kwarg_names", spec.kwarg_names.clone())?;
            task.set_item("num_returns", spec.num_returns)?;
            task.set_item("attempt", spec.attempt)?;
            task.set_item(
                "actor_id",
                (!spec.actor_id.is_empty()).then(|| PyBytes::new(py, &spec.actor_id)),
            )?;
            task.set_item("actor_creation", spec.actor_creation)?;
            if let Some(job) = &assigned.job {
                task.set_item("python_path", job.python_path.clone())?;
                task.set_item("cwd", &job.cwd)?;
            }
            let resource_ids = PyDict::new(py);
            for (name, ids) in &assigned.resource_ids {
                let pairs: Vec<(u32, f64)> = ids
                    .ids
                    .iter()
                    .copied()
                    .zip(ids.fractions.iter().copied())
                    .collect();
                resource_ids.set_item(name, pairs)?;
            }
            task.set_item("resource_ids", resource_ids)?;
            // The executor turns every failure of the task into error results; an
            // exception here is a bug in the executor itself, and the worker ends.
            execute.call1((task,))?;
            let task_id = TaskId::from_slice(&spec.task_id)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            py.detach(|| self.0.task_done(task_id)).map_err(to_py_err)?;
        }
    }

    /// Where the cluster's dashboard serves, if one runs.
    fn webui_url(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let (gcs, runtime) = self.0.gcs();
        py.detach(|| runtime.block_on(gcs.webui_url()))
            .map_err(|e| to_py_err(e.into()))
    }

    /// The nodes of the cluster, as dicts.
    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let (gcs, runtime) = self.0.gcs();
        let nodes = py
            .detach(|| {
                runtime.block_on(async {
                    let mut nodes = Vec::new();
                    for node in gcs.nodes().await? {
                        let ports = gcs.metrics_ports(node.node_id).await?;
                        nodes.push((node, ports));
                    }
                    Ok::<_, rayd_gcs::GcsError>(nodes)
                })
            })
            .map_err(|e| to_py_err(e.into()))?;
        nodes
            .into_iter()
            .map(|(n, ports)| {
                let d = PyDict::new(py);
                d.set_item("NodeID", n.node_id.hex())?;
                d.set_item("Alive", n.alive)?;
                d.set_item("NodeManagerAddress", &n.node_ip_address)?;
                d.set_item("RayletSocketName", &n.raylet_socket)?;
                d.set_item("ObjectStoreSocketName", &n.plasma_socket)?;
                d.set_item("Resources", n.resources_total.clone())?;
                d.set_item("AvailableResources", n.resources_available.clone())?;
                d.set_item("LastHeartbeatMs", n.last_heartbeat_ms)?;
                // The raylet's /metrics, as Ray reports its node's metrics agent.
                let port = ports.get(rayd_gcs::RAYLET_METRICS_FIELD).copied();
                d.set_item("MetricsExportPort", port)?;
                d.set_item("MetricsPorts", ports)?;
                Ok(d)
            })
            .collect()
    }
}

impl CoreWorker {
    /// Converts the arguments and submits, with the GIL released while sending.
    fn submit(
        &self,
        py: Python<'_>,
        function_id: &[u8],
        name: &str,
        args: &Bound<'_, PyList>,
        kwarg_names: Vec<String>,
        options: TaskOptions,
    ) -> PyResult<(TaskId, Vec<PyObjectId>)> {
        let id = FunctionId::from_slice(function_id)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut values = Vec::with_capacity(args.len());
        for arg in args.iter() {
            if let Ok(object) = arg.cast::<PyObjectId>() {
                values.push(TaskArgValue::Object(object.get().0));
            } else {
                let bytes = arg.cast::<PyBytes>().map_err(|_| {
                    PyValueError::new_err("a task argument must be bytes or an ObjectID")
                })?;
                values.push(TaskArgValue::Inline(bytes.as_bytes().to_vec()));
            }
        }
        let (task, ids) = py
            .detach(|| self.0.submit_task(id, name, values, kwarg_names, &options))
            .map_err(to_py_err)?;
        Ok((task, ids.into_iter().map(PyObjectId::adopt).collect()))
    }
}

/// A node `ray.init()` started; its daemons stop with [`LocalNode::stop`] or when the
/// driver's process ends.
#[pyclass(module = "ray._raylet")]
#[derive(Debug)]
pub struct LocalNode {
    node: Mutex<rayd_launcher::node::StartedNode>,
    #[pyo3(get)]
    redis_address: String,
    #[pyo3(get)]
    raylet_socket: String,
    #[pyo3(get)]
    plasma_socket: String,
    #[pyo3(get)]
    session_dir: String,
}

#[pymethods]
impl LocalNode {
    /// Stops every daemon of the node; returns how many were running.
    fn stop(&self, py: Python<'_>) -> usize {
        py.detach(|| self.node.lock().unwrap_or_else(|p| p.into_inner()).stop())
    }

    /// pids of the node's daemons.
    fn pids(&self) -> Vec<u32> {
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .processes
            .iter()
            .map(|p| p.pid)
            .collect()
    }
}

fn json_value(value: &Bound<'_, PyAny>) -> PyResult<rayd_config::ConfigValue> {
    use rayd_config::ConfigValue;
    if let Ok(b) = value.extract::<bool>() {
        return Ok(ConfigValue::from(b));
    }
    if let Ok(i) = value.extract::<i64>() {
        return Ok(ConfigValue::from(i));
    }
    if let Ok(f) = value.extract::<f64>() {
        return Ok(ConfigValue::from(f));
    }
    if let Ok(s) = value.extract::<String>() {
        return Ok(ConfigValue::from(s));
    }
    if let Ok(map) = value.extract::<HashMap<String, f64>>() {
        let map: rayd_config::ConfigMap = map
            .into_iter()
            .map(|(k, v)| (k, ConfigValue::from(v)))
            .collect();
        return Ok(ConfigValue::from(map));
    }
    Err(PyValueError::new_err(format!(
        "unsupported config value {value}"
    )))
}

/// Starts a whole single-node cluster (GCS, plasma, raylet) for a driver, with the
/// configuration keys of `settings` (those of `configs/rayd.toml`); free ports are
/// picked for Redis.
#[pyfunction]
fn start_local_node(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<LocalNode> {
    let mut overrides = Overrides::default();
    for (key, value) in settings.iter() {
        if value.is_none() {
            continue;
        }
        let key: String = key.extract()?;
        overrides.set(&key, Some(json_value(&value)?));
    }
    let mut config: RaydConfig = rayd_config::load(None, &std::env::vars().collect(), &overrides)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    if !settings.contains("redis_port")? {
        let ports = rayd_launcher::node::free_ports(
            &config.node_ip_address,
            1 + usize::from(config.num_redis_shards),
        )
        .map_err(|e| anyhow_err(e.into()))?;
        config.redis_port = ports[0];
        config.redis_shard_ports = ports[1..].to_vec();
    }
    if !settings.contains("object_manager_port")? {
        config.object_manager_port = 0;
    }
    let node = py
        .detach(|| rayd_launcher::node::start_node(&config, true, true))
        .map_err(|e| anyhow_err(e.into()))?;
    Ok(LocalNode {
        redis_address: node.redis_address.clone(),
        raylet_socket: node.raylet_socket.display().to_string(),
        plasma_socket: node.plasma_socket.display().to_string(),
        session_dir: node.session_dir.display().to_string(),
        node: Mutex::new(node),
    })
}

/// The raylet socket of the node on `node_ip_address` in the cluster at `redis_address`.
#[pyfunction]
#[pyo3(signature = (redis_address, node_ip_address, redis_password=None))]
fn find_local_raylet(
    py: Python<'_>,
    redis_address: &str,
    node_ip_address: &str,
    redis_password: Option<String>,
) -> PyResult<String> {
    py.detach(|| {
        rayd_core::find_local_raylet(redis_address, redis_password.as_deref(), node_ip_address)
    })
    .map_err(to_py_err)
}

/// The secret of the cluster at `redis_address` when a node of it was started on this
/// machine from `temp_dir` (`rayd start`, or `ray.init()`'s local cluster).
#[pyfunction]
fn local_cluster_secret(temp_dir: std::path::PathBuf, redis_address: &str) -> Option<String> {
    rayd_launcher::secret::local_secret(&temp_dir, redis_address)
}

/// The ID of a pickled function or class definition.
#[pyfunction]
fn function_id<'py>(py: Python<'py>, definition: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, FunctionId::for_definition(definition).as_bytes())
}

/// The layout helpers Python needs to build inline arguments.
#[pyfunction]
fn serialize_inline<'py>(
    py: Python<'py>,
    pickle: &[u8],
    buffers: &Bound<'_, PyList>,
) -> PyResult<Bound<'py, PyBytes>> {
    let held = buffer_slices(buffers)?;
    let slices = held.iter().map(as_slice).collect::<PyResult<Vec<_>>>()?;
    Ok(PyBytes::new(py, &value::to_vec(pickle, &slices)))
}

/// `(pickle range, buffer ranges)` of an inline argument.
#[pyfunction]
fn parse_inline(data: &[u8]) -> PyResult<(Range, Vec<Range>)> {
    let layout = value::parse(data)
        .map_err(|e| PyValueError::new_err(format!("malformed inline argument: {e}")))?;
    Ok((
        (layout.pickle.start, layout.pickle.end),
        layout.buffers.iter().map(|r| (r.start, r.end)).collect(),
    ))
}

#[pymodule]
fn _raylet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyObjectId>()?;
    m.add_class::<PlasmaBuffer>()?;
    m.add_class::<CoreWorker>()?;
    m.add_class::<LocalNode>()?;
    m.add_function(wrap_pyfunction!(start_local_node, m)?)?;
    m.add_function(wrap_pyfunction!(find_local_raylet, m)?)?;
    m.add_function(wrap_pyfunction!(local_cluster_secret, m)?)?;
    m.add_function(wrap_pyfunction!(serialize_inline, m)?)?;
    m.add_function(wrap_pyfunction!(function_id, m)?)?;
    m.add_function(wrap_pyfunction!(parse_inline, m)?)?;
    m.add("META_PICKLE5", PyBytes::new(m.py(), value::META_PICKLE5))?;
    m.add(
        "META_ERROR_PREFIX",
        PyBytes::new(m.py(), value::META_ERROR_PREFIX),
    )?;
    Ok(())
}
