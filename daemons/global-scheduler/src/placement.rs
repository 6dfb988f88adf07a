//! Where a spilled task goes: the cluster as the heartbeats show it, and the rule that
//! picks a node from it. Pure (no I/O, time passed in), so the rule is tested here; the
//! watcher feeds it and the service asks it.
//!
//! The rule (docs/decisions.md, "The global scheduler's placement"): among the nodes that
//! are alive, heard from within the staleness limit, not refusing, and whose total covers
//! the task's request, prefer
//! 1. one with room for the task now (its last heartbeat's available resources, less what
//!    was forwarded to it since),
//! 2. then the most bytes of the task's object arguments already in its store,
//! 3. then the shortest queue,
//! 4. then the most of the requested resources free, then the node ID (stable).
//!
//! A node that gets a task is charged for it (its request and one queued task) until its
//! next heartbeat, so a burst of spills spreads instead of piling on one node.

use std::collections::{BTreeMap, HashMap};

use rayd_common::id::NodeId;

/// Resource name -> amount.
pub type Amounts = BTreeMap<String, f64>;

/// Amounts below this count as zero (sums of fractions drift).
const EPSILON: f64 = 1e-9;

fn covers(have: &Amounts, request: &Amounts) -> bool {
    request.iter().all(|(name, amount)| {
        *amount <= EPSILON || have.get(name).copied().unwrap_or(0.0) + EPSILON >= *amount
    })
}

/// One node as the heartbeats show it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// `host:port` of its raylet's node manager (gRPC).
    pub address: String,
    pub total: Amounts,
    /// As of its last heartbeat, less what was forwarded to it since.
    pub available: Amounts,
    /// Tasks queued there, as of its last heartbeat, plus those forwarded since.
    pub queued: u64,
    /// When its last heartbeat arrived (Unix ms).
    pub last_heartbeat_ms: u64,
    /// False once announced dead.
    pub alive: bool,
    /// False after it refused a task (or could not be reached), until its next heartbeat.
    pub reachable: bool,
}

/// Why no node was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaceable {
    /// No live node has the resources in all: the task can never run (now).
    Infeasible,
    /// Some node could run it, but none of those is heard from lately or taking tasks.
    NoneAvailable,
}

/// The cluster as one global scheduler sees it.
#[derive(Debug, Clone)]
pub struct View {
    nodes: BTreeMap<NodeId, NodeView>,
    /// A node whose last heartbeat is older than this (ms) is out.
    stale_after_ms: u64,
}

impl View {
    /// An empty view in which nodes silent for `stale_after_ms` are out.
    pub fn new(stale_after_ms: u64) -> Self {
        Self {
            nodes: BTreeMap::new(),
            stale_after_ms,
        }
    }

    /// A node registered (or re-registered): as its node table entry says.
    pub fn add(&mut self, node: NodeId, view: NodeView) {
        self.nodes.insert(node, view);
    }

    /// Whether `node` is known and alive.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|v| v.alive)
    }

    /// A heartbeat of `node` received at `now_ms`; false when the node is unknown (the
    /// caller reads its entry and adds it first).
    pub fn heartbeat(
        &mut self,
        node: &NodeId,
        available: Amounts,
        queued: u64,
        now_ms: u64,
    ) -> bool {
        let Some(view) = self.nodes.get_mut(node).filter(|v| v.alive) else {
            return false;
        };
        view.available = available;
        view.queued = queued;
        view.last_heartbeat_ms = now_ms;
        view.reachable = true;
        true
    }

    /// `node` was announced dead: it gets nothing more (until it registers again).
    pub fn dead(&mut self, node: &NodeId) {
        if let Some(view) = self.nodes.get_mut(node) {
            view.alive = false;
        }
    }

    /// Whether `node` could ever run a task of `request` (its total covers it).
    pub fn could_run(&self, node: &NodeId, request: &Amounts) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|v| covers(&v.total, request))
    }

    /// Whether `node` has room for a task of `request` now, as far as this view knows.
    pub fn has_room(&self, node: &NodeId, request: &Amounts) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|v| covers(&v.available, request))
    }

    /// The node manager address of `node`.
    pub fn address(&self, node: &NodeId) -> Option<&str> {
        self.nodes.get(node).map(|v| v.address.as_str())
    }

    /// The nodes that could take a task of `request` at `now_ms`, best first (the rule in
    /// the module doc); `local_bytes` is, per node, how many bytes of the task's object
    /// arguments its store holds.
    pub fn rank(
        &self,
        request: &Amounts,
        local_bytes: &HashMap<NodeId, u64>,
        now_ms: u64,
    ) -> Result<Vec<NodeId>, Unplaceable> {
        let capable: Vec<(&NodeId, &NodeView)> = self
            .nodes
            .iter()
            .filter(|(_, v)| v.alive && covers(&v.total, request))
            .collect();
        if capable.is_empty() {
            return Err(Unplaceable::Infeasible);
        }
        let free = |v: &NodeView| {
            request
                .keys()
                .map(|k| v.available.get(k).copied().unwrap_or(0.0))
                .sum::<f64>()
        };
        let mut candidates: Vec<(&NodeId, &NodeView, bool, u64)> = capable
            .into_iter()
            .filter(|(_, v)| {
                v.reachable && now_ms.saturating_sub(v.last_heartbeat_ms) <= self.stale_after_ms
            })
            .map(|(id, v)| {
                let room = covers(&v.available, request);
                let bytes = local_bytes.get(id).copied().unwrap_or(0);
                (id, v, room, bytes)
            })
            .collect();
        if candidates.is_empty() {
            return Err(Unplaceable::NoneAvailable);
        }
        candidates.sort_by(|a, b| {
            b.2.cmp(&a.2)
                .then(b.3.cmp(&a.3))
                .then(a.1.queued.cmp(&b.1.queued))
                .then(free(b.1).total_cmp(&free(a.1)))
                .then(a.0.cmp(b.0))
        });
        Ok(candidates.into_iter().map(|(id, ..)| *id).collect())
    }

    /// Counts a task of `request` forwarded to `node` against it until its next heartbeat.
    pub fn charge(&mut self, node: &NodeId, request: &Amounts) {
        if let Some(view) = self.nodes.get_mut(node) {
            for (name, amount) in request {
                *view.available.entry(name.clone()).or_insert(0.0) -= amount;
            }
            view.queued += 1;
        }
    }

    /// Takes back a [`charge`](Self::charge): the forward failed.
    pub fn refund(&mut self, node: &NodeId, request: &Amounts) {
        if let Some(view) = self.nodes.get_mut(node) {
            for (name, amount) in request {
                *view.available.entry(name.clone()).or_insert(0.0) += amount;
            }
            view.queued = view.queued.saturating_sub(1);
        }
    }

    /// `node` did not take a task: none goes there until its next heartbeat.
    pub fn refused(&mut self, node: &NodeId) {
        if let Some(view) = self.nodes.get_mut(node) {
            view.reachable = false;
        }
    }

    /// The nodes still counted alive that have not been heard from for `silence_ms` at
    /// `now_ms`: candidates for a declaration of death.
    pub fn silent(&self, now_ms: u64, silence_ms: u64) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, v)| v.alive && now_ms.saturating_sub(v.last_heartbeat_ms) > silence_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many nodes are alive and heard from within the limit at `now_ms`.
    pub fn live_nodes(&self, now_ms: u64) -> usize {
        self.nodes
            .values()
            .filter(|v| {
                v.alive && now_ms.saturating_sub(v.last_heartbeat_ms) <= self.stale_after_ms
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: u64 = 1000;

    fn amounts(pairs: &[(&str, f64)]) -> Amounts {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn node(total: &[(&str, f64)], at: u64) -> NodeView {
        NodeView {
            address: "127.0.0.1:1".into(),
            total: amounts(total),
            available: amounts(total),
            queued: 0,
            last_heartbeat_ms: at,
            alive: true,
            reachable: true,
        }
    }

    fn ids() -> (NodeId, NodeId) {
        let (a, b) = (NodeId::random(), NodeId::random());
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    }

    fn no_bytes() -> HashMap<NodeId, u64> {
        HashMap::new()
    }

    #[test]
    fn a_task_goes_to_the_only_node_that_can_run_it() {
        let mut view = View::new(STALE);
        let (a, b) = ids();
        view.add(a, node(&[("CPU", 4.0)], 0));
        view.add(b, node(&[("CPU", 1.0), ("Custom", 1.0)], 0));
        let custom = amounts(&[("Custom", 1.0)]);
        assert_eq!(view.rank(&custom, &no_bytes(), 10), Ok(vec![b]));
        // Busy now, still the only one that could: it waits there.
        view.charge(&b, &custom);
        assert_eq!(view.rank(&custom, &no_bytes(), 10), Ok(vec![b]));
        assert_eq!(
            view.rank(&amounts(&[("GPU", 1.0)]), &no_bytes(), 10),
            Err(Unplaceable::Infeasible)
        );
    }

    #[test]
    fn a_burst_spreads_by_room_then_queue() {
        let mut view = View::new(STALE);
        let (a, b) = ids();
        view.add(a, node(&[("CPU", 2.0)], 0));
        view.add(b, node(&[("CPU", 1.0)], 0));
        let cpu = amounts(&[("CPU", 1.0)]);
        let mut placed = Vec::new();
        for _ in 0..4 {
            let first = view.rank(&cpu, &no_bytes(), 10).unwrap()[0];
            view.charge(&first, &cpu);
            placed.push(first);
        }
        // a (2 free, queue 0), b (1 free, queue 0 but less free), a, then no room: shorter queue.
        assert_eq!(placed[..3], [a, b, a]);
        assert_eq!(placed[3], b, "no room anywhere: the shorter queue");
        // A heartbeat resets what was charged.
        assert!(view.heartbeat(&a, amounts(&[("CPU", 2.0)]), 0, 20));
        assert_eq!(view.rank(&cpu, &no_bytes(), 20).unwrap()[0], a);
    }

    #[test]
    fn room_beats_local_bytes_which_beat_queue_length() {
        let mut view = View::new(STALE);
        let (a, b) = ids();
        view.add(a, node(&[("CPU", 1.0)], 0));
        view.add(b, node(&[("CPU", 1.0)], 0));
        assert!(view.heartbeat(&b, amounts(&[("CPU", 1.0)]), 5, 1));
        let cpu = amounts(&[("CPU", 1.0)]);
        let bytes = HashMap::from([(b, 50 << 20)]);
        assert_eq!(
            view.rank(&cpu, &bytes, 10),
            Ok(vec![b, a]),
            "the bytes are on b"
        );
        assert_eq!(
            view.rank(&cpu, &no_bytes(), 10),
            Ok(vec![a, b]),
            "a's queue is shorter"
        );
        assert!(view.heartbeat(&b, amounts(&[("CPU", 0.0)]), 5, 11));
        assert_eq!(
            view.rank(&cpu, &bytes, 12),
            Ok(vec![a, b]),
            "only a has room"
        );
    }

    #[test]
    fn stale_dead_and_refusing_nodes_are_out() {
        let mut view = View::new(STALE);
        let (a, b) = ids();
        view.add(a, node(&[("CPU", 1.0)], 0));
        view.add(b, node(&[("CPU", 1.0)], 0));
        let cpu = amounts(&[("CPU", 1.0)]);
        assert!(view.heartbeat(&a, amounts(&[("CPU", 1.0)]), 0, 1500));
        assert_eq!(
            view.rank(&cpu, &no_bytes(), 1500),
            Ok(vec![a]),
            "b is silent"
        );
        assert_eq!(view.live_nodes(1500), 1);
        view.refused(&a);
        assert_eq!(
            view.rank(&cpu, &no_bytes(), 1500),
            Err(Unplaceable::NoneAvailable)
        );
        assert!(view.heartbeat(&a, amounts(&[("CPU", 1.0)]), 0, 1600));
        assert_eq!(view.rank(&cpu, &no_bytes(), 1600), Ok(vec![a]));
        view.dead(&a);
        assert!(!view.heartbeat(&a, amounts(&[("CPU", 1.0)]), 0, 1700));
        assert!(!view.knows(&a));
        view.dead(&b);
        assert_eq!(
            view.rank(&cpu, &no_bytes(), 1700),
            Err(Unplaceable::Infeasible)
        );
    }

    #[test]
    fn a_refund_takes_back_a_charge() {
        let mut view = View::new(STALE);
        let (a, _) = ids();
        view.add(a, node(&[("CPU", 1.0)], 0));
        let cpu = amounts(&[("CPU", 1.0)]);
        let before = view.nodes[&a].clone();
        view.charge(&a, &cpu);
        view.refund(&a, &cpu);
        assert_eq!(view.nodes[&a], before);
    }
}
