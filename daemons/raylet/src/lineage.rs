//! Rebuilding lost objects, the I/O side: when a pull finds no live copy of an object that
//! was made, the task table (its lineage) says whether the task that made it can run
//! again, and the GCS's claim picks the one node that runs it (see `rayd_gcs::lineage`).
//!
//! The rule, also for tasks that are not deterministic: a re-run's results replace only
//! the copies that were lost. Copies still alive elsewhere are not touched, so readers of
//! a non-deterministic task may see the value of either run.

use prost::Message;
use rayd_common::id::{NodeId, ObjectId};
use rayd_common::proto::common::v1::TaskSpec;
use rayd_gcs::{GcsClient, GcsError, RerunClaim};

/// What to do about an object with no live copy.
#[derive(Debug)]
pub enum Recovery {
    /// This node runs the task again (the spec carries the re-run's attempt number).
    Rerun(Box<TaskSpec>),
    /// The task is under way on a live node (a re-run or a retry): wait for its copy.
    Wait,
    /// It cannot be made again: why (completes "the object was lost, and ...").
    Lost(String),
}

/// States after which nothing more comes of a task unless it runs again.
fn settled(state: &str) -> bool {
    matches!(state, "finished" | "failed" | "cancelled" | "")
}

async fn alive(gcs: &GcsClient, node: Option<NodeId>) -> Result<bool, GcsError> {
    match node {
        None => Ok(false),
        Some(node) => Ok(gcs.node(node).await?.is_some_and(|n| n.alive)),
    }
}

/// Whether `id`, of which no copy was ever seen, is stranded: the node in charge of the
/// task that makes it (running it, or holding its small result in memory) is dead. The
/// task's home redoes such a task when it is alive; a stranded object that stays so for
/// a while (its home died too) is rebuilt like a lost one.
pub async fn stranded(gcs: &GcsClient, id: ObjectId) -> Result<Progress, GcsError> {
    if id.is_put() {
        return Ok(Progress::UnderWay);
    }
    let Some(lineage) = gcs.lineage(id.task_id()).await? else {
        return Ok(Progress::NoLineage);
    };
    Ok(if alive(gcs, in_charge(&lineage)).await? {
        Progress::UnderWay
    } else {
        Progress::Stranded
    })
}

/// How the making of an object never seen stands (see [`stranded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Its task is in the hands of a live node (or it is a `ray.put` to come).
    UnderWay,
    /// The node in charge of its task is dead.
    Stranded,
    /// The task table does not know its task: not written yet (a few milliseconds after
    /// the submission), or lost with a GCS shard that restarted empty.
    NoLineage,
}

fn in_charge(lineage: &rayd_gcs::Lineage) -> Option<NodeId> {
    if lineage.state == "rerunning" {
        lineage.rerun_node
    } else {
        lineage.node
    }
}

/// Decides how `id`, which has no live copy, comes back; `own` is this node.
pub async fn recover(gcs: &GcsClient, own: NodeId, id: ObjectId) -> Result<Recovery, GcsError> {
    if id.is_put() {
        return Ok(Recovery::Lost(
            "it was made by ray.put, which leaves no lineage to make it again".into(),
        ));
    }
    let task = id.task_id();
    let Some(lineage) = gcs.lineage(task).await? else {
        return Ok(Recovery::Lost(format!(
            "the task table has no lineage of task {task}, which made it"
        )));
    };
    let mut spec = match TaskSpec::decode(lineage.spec.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            return Ok(Recovery::Lost(format!(
                "the lineage of task {task} does not decode: {e}"
            )))
        }
    };
    if !spec.actor_id.is_empty() {
        return Ok(Recovery::Lost(format!(
            "it was made by actor method {} (actor methods are not run again)",
            spec.function_name
        )));
    }
    if !settled(&lineage.state) && alive(gcs, in_charge(&lineage)).await? {
        return Ok(Recovery::Wait);
    }
    Ok(
        match gcs
            .claim_rerun(task, lineage.reruns, own, spec.max_retries)
            .await?
        {
            RerunClaim::Claimed { attempt } => {
                spec.attempt = attempt;
                Recovery::Rerun(Box::new(spec))
            }
            // Looked at again after a wait: the claimer may die too.
            RerunClaim::Taken { .. } => Recovery::Wait,
            RerunClaim::Exhausted { reruns } => Recovery::Lost(format!(
                "task {} ({task}), which made it, was run again {reruns} times already \
                 (its max_retries)",
                spec.function_name
            )),
        },
    )
}
