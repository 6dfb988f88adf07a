//! A task as the scheduler holds it, and the states a task goes through.

use rayd_common::id::{FunctionId, JobId, NodeId, ObjectId, TaskId};
use rayd_common::proto::common::v1 as common_pb;

use rayd_common::resources::Amounts;

use super::ConnId;

/// The resources a task asks for, as a sortable key (amounts by their bits).
pub type Shape = Vec<(String, u64)>;

/// Where a task stands, as written to the GCS task table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Some object-ID argument is not local yet.
    Waiting,
    /// Its arguments are local; it waits for resources and a worker.
    Ready,
    /// A worker runs it.
    Running,
    Finished,
    /// Its results are error objects.
    Failed,
    /// Its job ended (the driver left) before it ran or while it ran.
    Cancelled,
    /// Sent to another node to run.
    Forwarded,
}

impl TaskState {
    /// The name the GCS stores (`rayd:task:<id>` field `state`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Ready => "ready",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Forwarded => "forwarded",
        }
    }
}

/// Why a submitted task spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum InvalidTask {
    #[error("malformed {field}: {reason}")]
    Id { field: &'static str, reason: String },
    #[error("resource {name} = {amount} is not a finite, non-negative amount")]
    Resource { name: String, amount: f64 },
}

/// A task known to this raylet.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: TaskId,
    pub job: JobId,
    pub function: FunctionId,
    pub spec: common_pb::TaskSpec,
    /// What it holds while it runs (positive amounts only).
    pub resources: Amounts,
    /// The connection that submitted it: where its small results go.
    pub submitter: Option<ConnId>,
    /// The node it was submitted to, when that is another node (it was forwarded here):
    /// where its results are reported.
    pub home: Option<NodeId>,
    /// How many raylets forwarded it.
    pub hops: u32,
}

impl Task {
    /// Checks a submitted spec and takes it; a refused spec comes back with the reason.
    pub fn from_spec(
        spec: common_pb::TaskSpec,
    ) -> Result<Self, Box<(common_pb::TaskSpec, InvalidTask)>> {
        match Self::check(&spec) {
            Ok((id, job, function, resources)) => Ok(Self {
                id,
                job,
                function,
                spec,
                resources,
                submitter: None,
                home: None,
                hops: 0,
            }),
            Err(e) => Err(Box::new((spec, e))),
        }
    }

    fn check(
        spec: &common_pb::TaskSpec,
    ) -> Result<(TaskId, JobId, FunctionId, Amounts), InvalidTask> {
        let malformed = |field: &'static str| {
            move |e: rayd_common::id::IdError| InvalidTask::Id {
                field,
                reason: e.to_string(),
            }
        };
        let task_id = TaskId::from_slice(&spec.task_id).map_err(malformed("task id"))?;
        let job = JobId::from_slice(&spec.job_id).map_err(malformed("job id"))?;
        let function =
            FunctionId::from_slice(&spec.function_id).map_err(malformed("function id"))?;
        // NaN compares false with everything: check before dropping zero amounts.
        if let Some((name, amount)) = spec
            .resources
            .iter()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(InvalidTask::Resource {
                name: name.clone(),
                amount: *amount,
            });
        }
        let resources: Amounts = spec
            .resources
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok((task_id, job, function, resources))
    }

    pub fn shape(&self) -> Shape {
        self.resources
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect()
    }

    /// The object IDs it takes as arguments, each once.
    pub fn dependencies(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self
            .spec
            .args
            .iter()
            .filter_map(|arg| match &arg.value {
                Some(common_pb::task_arg::Value::ObjectId(bytes)) => {
                    ObjectId::from_slice(bytes).ok()
                }
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn return_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (1..=self.spec.num_returns).map(|i| ObjectId::for_return(self.id, i))
    }

    pub fn is_actor_creation(&self) -> bool {
        self.spec.actor_creation
    }

    pub fn is_actor_call(&self) -> bool {
        !self.spec.actor_creation && !self.spec.actor_id.is_empty()
    }

    pub fn cpus(&self) -> f64 {
        self.resources.get("CPU").copied().unwrap_or(0.0)
    }
}

/// The return IDs of a spec that was refused, when its task ID can be read: where the
/// refusal is stored so that the submitter's `ray.get` raises instead of waiting.
pub fn refused_return_ids(spec: &common_pb::TaskSpec) -> Vec<ObjectId> {
    match TaskId::from_slice(&spec.task_id) {
        Ok(id) => (1..=spec.num_returns.min(1024))
            .map(|i| ObjectId::for_return(id, i))
            .collect(),
        Err(_) => Vec::new(),
    }
}
