//! The jobs of this node's drivers: each job's settings (its workers' environment), the
//! connection of its driver, and the warnings already given (each once).

use std::collections::{HashMap, HashSet};

use rayd_common::id::{JobId, NodeId};
use rayd_common::proto::raylet::v1 as pb;

use super::ConnId;

#[derive(Debug, Default)]
pub struct Jobs {
    /// Settings of each job, with its driver's connection when the driver is on this node
    /// (a job whose tasks were forwarded here has none).
    jobs: HashMap<JobId, (pb::JobConfig, Option<ConnId>)>,
    /// The node of the driver of each job whose tasks were forwarded here.
    homes: HashMap<JobId, NodeId>,
    /// Jobs whose driver left: their tasks are cancelled, and new ones refused.
    ended: HashSet<JobId>,
    warned: HashSet<String>,
}

impl Jobs {
    pub fn add(&mut self, job: JobId, config: pb::JobConfig, driver: ConnId) {
        self.jobs.insert(job, (config, Some(driver)));
    }

    /// Keeps the settings of a job whose driver is on another node (its tasks were
    /// forwarded here).
    pub fn add_remote(&mut self, job: JobId, config: pb::JobConfig, home: NodeId) {
        self.jobs.entry(job).or_insert((config, None));
        self.homes.insert(job, home);
    }

    /// The node of the driver of `job`, when it is another node.
    pub fn home(&self, job: &JobId) -> Option<NodeId> {
        self.homes.get(job).copied()
    }

    /// The driver of `job` left: the job is over.
    pub fn end(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.ended.insert(job);
    }

    pub fn has_ended(&self, job: &JobId) -> bool {
        self.ended.contains(job)
    }

    pub fn driver(&self, job: &JobId) -> Option<ConnId> {
        self.jobs.get(job).and_then(|(_, conn)| *conn)
    }

    pub fn config(&self, job: &JobId) -> Option<&pb::JobConfig> {
        self.jobs.get(job).map(|(config, _)| config)
    }

    /// Whether the warning `key` is new (it is remembered).
    pub fn first_warning(&mut self, key: String) -> bool {
        self.warned.insert(key)
    }
}
