//! Node liveness and lineage claims in the GCS, against a real rayd-redis-shard: deaths
//! declared once, by the primary's clock, never undone by a late heartbeat; dead entries
//! pruned; re-runs of a task claimed by one node at a time and bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rayd_common::id::{NodeId, TaskId};
use rayd_gcs::{GcsClient, Heartbeat, NodeEvent, NodeInfo, RerunClaim, Standing, TaskEntry};
use rayd_integration::{Gcs, TestDir};

const TIMEOUT: Duration = Duration::from_secs(10);

fn node(id: NodeId) -> NodeInfo {
    NodeInfo {
        node_id: id,
        node_ip_address: "127.0.0.1".into(),
        raylet_socket: "/tmp/raylet.sock".into(),
        plasma_socket: "/tmp/plasma.sock".into(),
        object_manager_address: "127.0.0.1:9000".into(),
        node_manager_address: "127.0.0.1:8077".into(),
        resources_total: BTreeMap::from([("CPU".to_string(), 1.0)]),
        resources_available: BTreeMap::from([("CPU".to_string(), 1.0)]),
        alive: true,
        last_heartbeat_ms: 0,
        queued_tasks: 0,
        running_tasks: 0,
        store: None,
    }
}

fn beat(id: NodeId) -> Heartbeat {
    Heartbeat {
        node_id: id.hex(),
        resources_available: BTreeMap::from([("CPU".to_string(), 1.0)]),
        queue_length: 0,
        running: 0,
        time_ms: 0,
    }
}

/// Calls `attempt` until it gives `Some`, for at most [`TIMEOUT`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_silent_node_is_declared_dead_once_and_stays_dead() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 1, &[]);
    let client = GcsClient::connect(&gcs.address(), None)
        .await
        .expect("connect");
    let mut events = client
        .subscribe(
            rayd_gcs::Target::Primary,
            vec![rayd_gcs::keys::NODE_EVENTS_CHANNEL.to_string()],
        )
        .await
        .expect("subscribe");
    let (silent, beating) = (NodeId::random(), NodeId::random());
    for id in [silent, beating] {
        client.register_node(&node(id)).await.expect("register");
    }
    assert_eq!(
        client.heartbeat(&beat(silent)).await.expect("beat"),
        Standing::Alive
    );
    // Within a minute of silence nothing dies.
    let none = client
        .reap_silent_nodes(&[silent, beating], 60_000)
        .await
        .expect("reap");
    assert!(none.is_empty());
    // With no silence allowed, the silent node dies at the next millisecond; the
    // beating one is proposed too but keeps beating first.
    let dead = eventually("the silent node to be declared dead", || {
        let client = client.clone();
        async move {
            client.heartbeat(&beat(beating)).await.expect("beat");
            let dead = client.reap_silent_nodes(&[silent], 0).await.expect("reap");
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    assert_eq!(dead, vec![silent]);
    // Declared once: a second scheduler's reap finds nothing to do.
    assert!(client
        .reap_silent_nodes(&[silent], 0)
        .await
        .expect("reap")
        .is_empty());
    // Announced: the first node event after the registrations' is its death.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, events.next())
            .await
            .expect("the death to be announced in time")
            .expect("the subscription");
        if NodeEvent::parse(&n.payload) == Some(NodeEvent::Dead(silent)) {
            break;
        }
    }
    // A late heartbeat (a healed partition) does not bring it back.
    assert_eq!(
        client.heartbeat(&beat(silent)).await.expect("beat"),
        Standing::Dead
    );
    let entry = client.node(silent).await.expect("read").expect("entry");
    assert!(!entry.alive);
    assert!(
        client
            .node(beating)
            .await
            .expect("read")
            .expect("entry")
            .alive
    );
    // Pruned after the retention; its heartbeat then says it must register again.
    eventually("the dead entry to be pruned", || {
        let client = client.clone();
        async move { (client.prune_dead_nodes(0).await.expect("prune") > 0).then_some(()) }
    })
    .await;
    assert!(client.node(silent).await.expect("read").is_none());
    assert_eq!(
        client.heartbeat(&beat(silent)).await.expect("beat"),
        Standing::Unknown
    );
    assert!(client.node(beating).await.expect("read").is_some());
    client.quit().await;
}

#[tokio::test]
async fn reruns_of_a_task_are_claimed_by_one_node_at_a_time_and_bounded() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let client = GcsClient::connect(&gcs.address(), None)
        .await
        .expect("connect");
    let task = TaskId::random_task();
    assert!(client.lineage(task).await.expect("read").is_none());
    client
        .put_task(&TaskEntry {
            task_id: task,
            spec: vec![1, 2, 3].into(),
            state: "finished".into(),
            node: Some(NodeId::random()),
        })
        .await
        .expect("put task");
    let lineage = client.lineage(task).await.expect("read").expect("lineage");
    assert_eq!((lineage.reruns, lineage.rerun_node), (0, None));
    assert_eq!(&lineage.spec[..], &[1, 2, 3]);
    // When the state was written: a claim waits a moment after a run ends.
    let age = rayd_gcs::now_ms().abs_diff(lineage.updated_ms);
    assert!(age < 60_000, "updated {age} ms from now");
    let (a, b) = (NodeId::random(), NodeId::random());
    // Two nodes found the loss at once: the first claim wins, the second is told who.
    let (first, second) = tokio::join!(
        client.claim_rerun(task, 0, a, 2),
        client.claim_rerun(task, 0, b, 2)
    );
    let (first, second) = (first.expect("claim"), second.expect("claim"));
    let (winner, loser) = match first {
        RerunClaim::Claimed { attempt: 1 } => (a, second),
        _ => (b, first),
    };
    assert_eq!(
        loser,
        RerunClaim::Taken {
            node: Some(winner),
            attempt: 1
        }
    );
    let lineage = client.lineage(task).await.expect("read").expect("lineage");
    assert_eq!(
        (lineage.reruns, lineage.rerun_node, lineage.state.as_str()),
        (1, Some(winner), "rerunning")
    );
    assert_eq!(
        client.claim_rerun(task, 1, b, 2).await.expect("claim"),
        RerunClaim::Claimed { attempt: 2 }
    );
    assert_eq!(
        client.claim_rerun(task, 2, a, 2).await.expect("claim"),
        RerunClaim::Exhausted { reruns: 2 }
    );
    client.quit().await;
}
