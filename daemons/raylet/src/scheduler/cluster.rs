//! The other nodes as this raylet sees them, from their heartbeats: what each has in all,
//! what it had free at its last heartbeat (less what was forwarded to it since), and how
//! many tasks wait there. It answers where a task that does not run here should go.

use std::collections::BTreeMap;

use rayd_common::id::NodeId;

use rayd_common::resources::{covers, Amounts};

#[derive(Debug, Clone, Default)]
pub struct RemoteNode {
    pub total: Amounts,
    pub available: Amounts,
    pub queued: u64,
    /// False after it refused a task (or could not be reached), until its next heartbeat.
    pub reachable: bool,
}

#[derive(Debug, Default)]
pub struct Cluster {
    nodes: BTreeMap<NodeId, RemoteNode>,
}

impl Cluster {
    /// A node joined (or was seen for the first time): free as its total until it says.
    pub fn add(&mut self, node: NodeId, total: Amounts) {
        self.nodes.insert(
            node,
            RemoteNode {
                available: total.clone(),
                total,
                queued: 0,
                reachable: true,
            },
        );
    }

    /// A heartbeat of `node`; false when the node is unknown (not added yet).
    pub fn heartbeat(&mut self, node: NodeId, available: Amounts, queued: u64) -> bool {
        let Some(view) = self.nodes.get_mut(&node) else {
            return false;
        };
        view.available = available;
        view.queued = queued;
        view.reachable = true;
        true
    }

    pub fn remove(&mut self, node: &NodeId) {
        self.nodes.remove(node);
    }

    /// Where a task asking for `request` should go: a node with room for it now, the one
    /// with the shortest queue (then the most of the request free); when `room` is false
    /// and none has room, a node that could ever run it, the shortest queue first.
    pub fn place(&self, request: &Amounts, room: bool) -> Option<NodeId> {
        let free = |v: &RemoteNode| {
            request
                .keys()
                .map(|k| v.available.get(k).copied().unwrap_or(0.0))
                .sum::<f64>()
        };
        let with_room = self
            .nodes
            .iter()
            .filter(|(_, v)| {
                v.reachable && covers(&v.total, request) && covers(&v.available, request)
            })
            .min_by(|a, b| {
                a.1.queued
                    .cmp(&b.1.queued)
                    .then(free(b.1).total_cmp(&free(a.1)))
            })
            .map(|(id, _)| *id);
        if with_room.is_some() || room {
            return with_room;
        }
        self.nodes
            .iter()
            .filter(|(_, v)| v.reachable && covers(&v.total, request))
            .min_by_key(|(_, v)| v.queued)
            .map(|(id, _)| *id)
    }

    /// How many other nodes could ever run `request` (were they idle).
    pub fn candidates(&self, request: &Amounts) -> usize {
        self.nodes
            .values()
            .filter(|v| covers(&v.total, request))
            .count()
    }

    /// Counts a task forwarded to `node` against its view until its next heartbeat.
    pub fn charge(&mut self, node: &NodeId, request: &Amounts) {
        if let Some(view) = self.nodes.get_mut(node) {
            for (name, amount) in request {
                *view.available.entry(name.clone()).or_insert(0.0) -= amount;
            }
            view.queued += 1;
        }
    }

    /// `node` did not take a task: no task goes there until its next heartbeat.
    pub fn refused(&mut self, node: &NodeId) {
        if let Some(view) = self.nodes.get_mut(node) {
            view.reachable = false;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(pairs: &[(&str, f64)]) -> Amounts {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn tasks_go_where_there_is_room_then_where_they_could_run() {
        let mut cluster = Cluster::default();
        let (a, b) = (NodeId::random(), NodeId::random());
        cluster.add(a, amounts(&[("CPU", 1.0)]));
        cluster.add(b, amounts(&[("CPU", 1.0), ("GPU", 1.0)]));
        let gpu = amounts(&[("GPU", 1.0)]);
        assert_eq!(cluster.place(&gpu, true), Some(b));
        cluster.charge(&b, &gpu);
        assert_eq!(
            cluster.place(&gpu, true),
            None,
            "no room left until b's heartbeat"
        );
        assert_eq!(cluster.place(&gpu, false), Some(b), "b could still run it");
        assert_eq!(cluster.place(&amounts(&[("TPU", 1.0)]), false), None);
        let cpu = amounts(&[("CPU", 1.0)]);
        assert_eq!(
            cluster.place(&cpu, true),
            Some(a),
            "a has the shorter queue"
        );
        cluster.charge(&a, &cpu);
        assert_eq!(cluster.place(&cpu, true), Some(b));
        cluster.charge(&b, &cpu);
        assert_eq!(cluster.place(&cpu, true), None);
        assert!(cluster.heartbeat(a, amounts(&[("CPU", 1.0)]), 0));
        assert_eq!(cluster.place(&cpu, true), Some(a));
        cluster.refused(&a);
        assert_eq!(cluster.place(&cpu, true), None);
        assert_eq!(
            cluster.place(&cpu, false),
            Some(b),
            "not a until it is heard from"
        );
        assert!(!cluster.heartbeat(NodeId::random(), Amounts::new(), 0));
    }
}
