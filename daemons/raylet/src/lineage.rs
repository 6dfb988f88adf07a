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

/// How long after a run ends its results may still be on their way to the object table:
/// the runner's raylet writes the task's state, its store writes the results' locations,
/// and under load the state can come first by much more than their few milliseconds of
/// batching.
const RESULTS_SETTLE_MS: u64 = 3_000;

/// Whether the run recorded in `lineage` ended less than [`RESULTS_SETTLE_MS`] before
/// `now_ms`: its results may not be located yet, so finding none does not mean they were
/// lost. (A writer clock that is ahead by more than that counts as long ago: the re-run
/// is then not held back, as before this check.)
fn just_ended(lineage: &rayd_gcs::Lineage, now_ms: u64) -> bool {
    !lineage.state.is_empty()
        && lineage.updated_ms > 0
        && lineage.updated_ms + RESULTS_SETTLE_MS > now_ms
        && lineage.updated_ms < now_ms + RESULTS_SETTLE_MS
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
/// a while (its home died too) is rebuilt like a lost one. A `ray.put` of a task is
/// stranded the same way: its node died before its store reported the copy (a `get` of it
/// waited for good, as for one still to come); a driver's has no lineage.
pub async fn stranded(gcs: &GcsClient, id: ObjectId) -> Result<Progress, GcsError> {
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
    /// Its task is in the hands of a live node (a `ray.put` of it may still be to come).
    UnderWay,
    /// The node in charge of its task is dead.
    Stranded,
    /// The task table has no entry of its task: not written yet (a few milliseconds after
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
    if lineage.spec.is_empty() {
        return Ok(Recovery::Lost(format!(
            "the task table has no spec of task {task}, which made it (an actor method call, \
             or an entry whose spec went with a GCS shard that restarted)"
        )));
    }
    if !spec.actor_id.is_empty() {
        return Ok(Recovery::Lost(format!(
            "it was made by actor method {} (actor methods are not run again)",
            spec.function_name
        )));
    }
    if !settled(&lineage.state) && alive(gcs, in_charge(&lineage)).await? {
        return Ok(Recovery::Wait);
    }
    // A run that ended a moment ago on a live node (a re-run this node waited for, most
    // often) has its copies on their way: claiming now would run the task once more.
    if just_ended(&lineage, rayd_gcs::now_ms()) && alive(gcs, lineage.node).await? {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(state: &str, updated_ms: u64) -> rayd_gcs::Lineage {
        rayd_gcs::Lineage {
            spec: Default::default(),
            state: state.into(),
            node: Some(NodeId::random()),
            reruns: 1,
            rerun_node: None,
            updated_ms,
        }
    }

    #[test]
    fn a_run_counts_as_just_ended_only_within_the_settling_time() {
        let now = 1_000_000_000;
        assert!(just_ended(&ended("finished", now - 10), now));
        assert!(just_ended(
            &ended("failed", now - RESULTS_SETTLE_MS + 1),
            now
        ));
        assert!(!just_ended(
            &ended("finished", now - RESULTS_SETTLE_MS),
            now
        ));
        // A writer's clock a little ahead still holds the claim back; far ahead does not.
        assert!(just_ended(&ended("finished", now + 500), now));
        assert!(!just_ended(
            &ended("finished", now + RESULTS_SETTLE_MS),
            now
        ));
        // No time or no state written: nothing to wait for.
        assert!(!just_ended(&ended("finished", 0), now));
        assert!(!just_ended(&ended("", now), now));
    }
}
