//! The jobs of this node's drivers: each job's settings (its workers' environment), the
//! connection of its driver, and the warnings already given (each once).

use std::collections::{HashMap, HashSet};

use rayd_common::id::JobId;
use rayd_common::proto::raylet::v1 as pb;

use super::ConnId;

#[derive(Debug, Default)]
pub struct Jobs {
    jobs: HashMap<JobId, (pb::JobConfig, ConnId)>,
    /// Jobs whose driver left: their tasks are cancelled, and new ones refused.
    ended: HashSet<JobId>,
    warned: HashSet<String>,
}

impl Jobs {
    pub fn add(&mut self, job: JobId, config: pb::JobConfig, driver: ConnId) {
        self.jobs.insert(job, (config, driver));
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
        self.jobs.get(job).map(|(_, conn)| *conn)
    }

    pub fn config(&self, job: &JobId) -> Option<&pb::JobConfig> {
        self.jobs.get(job).map(|(config, _)| config)
    }

    /// Whether the warning `key` is new (it is remembered).
    pub fn first_warning(&mut self, key: String) -> bool {
        self.warned.insert(key)
    }
}
