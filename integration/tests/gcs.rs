//! The GCS client against a real rayd-redis-shard: sharding, visibility, notifications and
//! the table APIs.

use std::collections::BTreeMap;
use std::time::Duration;

use rayd_common::id::{ActorId, FunctionId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use rayd_gcs::{
    keys, ActorInfo, ErrorInfo, FunctionInfo, GcsClient, NodeInfo, StoreFigures, Target, TaskEntry,
};
use rayd_integration::{redis_cli, Gcs, TestDir};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(gcs: &Gcs) -> GcsClient {
    GcsClient::connect(&gcs.address(), gcs.password.as_deref())
        .await
        .expect("connect to the GCS")
}

#[tokio::test]
async fn keys_spread_over_every_shard_and_are_readable() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 3, &[]);
    let client = connect(&gcs).await;
    assert_eq!(client.shard_addresses().len(), 3);
    let node = NodeId::random();
    let task = TaskId::random_task();
    let objects: Vec<ObjectId> = (1..=300).map(|i| ObjectId::for_return(task, i)).collect();
    for object in &objects {
        client
            .add_object_location(*object, node, 100)
            .await
            .expect("write location");
    }
    let mut total = 0;
    for port in &gcs.shard_ports {
        let count: u64 = redis_cli(*port, None, &["dbsize"])
            .and_then(|n| n.parse().ok())
            .expect("dbsize");
        assert!(count > 50, "shard {port} holds only {count} of 300 keys");
        total += count;
    }
    assert_eq!(total, 300);
    // The operator's view: a readable key on the shard the one rule picks.
    let shard = keys::shard_index(objects[0].as_bytes(), 3);
    let key = keys::key(keys::Table::Object, &objects[0]);
    let size = redis_cli(gcs.shard_ports[shard], None, &["hget", &key, "size"]);
    assert_eq!(size.as_deref(), Some("100"));
    client.quit().await;
}

#[tokio::test]
async fn a_write_is_visible_to_a_second_client() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &["--redis-password", "pw-123"]);
    let writer = connect(&gcs).await;
    let reader = connect(&gcs).await;
    let object = ObjectId::random();
    let (a, b) = (NodeId::random(), NodeId::random());
    writer
        .add_object_location(object, a, 42)
        .await
        .expect("write");
    writer
        .add_object_location(object, b, 42)
        .await
        .expect("write");
    let info = reader
        .object_info(object)
        .await
        .expect("read")
        .expect("object known");
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!((info.size, info.locations), (42, expected));
    writer
        .remove_object_location(object, a, false)
        .await
        .expect("remove");
    let info = reader
        .object_info(object)
        .await
        .expect("read")
        .expect("object known");
    assert_eq!((info.locations, info.freed), (vec![b], false));
    // Freed on a node while another still lists a copy: not freed.
    writer
        .add_object_location(object, a, 42)
        .await
        .expect("write");
    writer
        .remove_object_location(object, a, true)
        .await
        .expect("remove");
    let info = reader
        .object_info(object)
        .await
        .expect("read")
        .expect("object known");
    assert_eq!((info.locations, info.freed), (vec![b], false));
    writer
        .remove_object_location(object, b, true)
        .await
        .expect("remove");
    let info = reader
        .object_info(object)
        .await
        .expect("read")
        .expect("object known");
    assert_eq!((info.locations, info.freed), (vec![], true));
    // A copy made again is not freed.
    writer
        .add_object_location(object, b, 42)
        .await
        .expect("write");
    let info = reader
        .object_info(object)
        .await
        .expect("read")
        .expect("object known");
    assert_eq!((info.locations, info.freed), (vec![b], false));
    // The mark of a free whose seal was never recorded is an entry of its own.
    let unrecorded = ObjectId::random();
    writer
        .remove_object_location(unrecorded, a, true)
        .await
        .expect("remove");
    let info = reader
        .object_info(unrecorded)
        .await
        .expect("read")
        .expect("object known");
    assert_eq!((info.size, info.locations, info.freed), (0, vec![], true));
    assert_eq!(
        reader.object_info(ObjectId::random()).await.expect("read"),
        None
    );
}

#[tokio::test]
async fn notifications_reach_a_subscriber() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let client = connect(&gcs).await;
    let object = ObjectId::random();
    let channel = keys::events_channel(keys::Table::Object, &object);
    let mut subscription = client
        .subscribe(Target::ShardOf(object.as_bytes()), vec![channel.clone()])
        .await
        .expect("subscribe");
    let node = NodeId::random();
    client
        .add_object_location(object, node, 7)
        .await
        .expect("write");
    let message = tokio::time::timeout(TIMEOUT, subscription.next())
        .await
        .expect("a notification in time");
    let message = message.expect("subscription open");
    assert_eq!(message.channel, channel);
    assert_eq!(
        String::from_utf8_lossy(&message.payload),
        format!("added {node} 7")
    );

    let job = JobId::random();
    let mut errors = client
        .subscribe(Target::Primary, vec![keys::error_events_channel(job)])
        .await
        .expect("subscribe");
    let error = ErrorInfo {
        kind: "worker_died".into(),
        message: "worker 12 died".into(),
        time_ms: 1,
    };
    client.push_error(job, &error).await.expect("push");
    let message = tokio::time::timeout(TIMEOUT, errors.next())
        .await
        .expect("in time")
        .expect("open");
    assert!(String::from_utf8_lossy(&message.payload).contains("worker 12 died"));
    assert_eq!(client.errors(job).await.expect("list"), vec![error]);
}

#[tokio::test]
async fn tables_round_trip() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let client = connect(&gcs).await;

    let node = NodeInfo {
        node_id: NodeId::random(),
        node_ip_address: "127.0.0.1".into(),
        raylet_socket: "/tmp/raylet.sock".into(),
        plasma_socket: "/tmp/plasma.sock".into(),
        object_manager_address: "127.0.0.1:9000".into(),
        node_manager_address: "127.0.0.1:8077".into(),
        resources_total: BTreeMap::from([("CPU".to_string(), 4.0)]),
        resources_available: BTreeMap::from([("CPU".to_string(), 4.0)]),
        alive: true,
        last_heartbeat_ms: 0,
        queued_tasks: 0,
        running_tasks: 0,
        store: None,
    };
    client.register_node(&node).await.expect("register");
    let mut read = client
        .node(node.node_id)
        .await
        .expect("read")
        .expect("registered");
    read.last_heartbeat_ms = 0;
    assert_eq!(read, node);
    let figures = StoreFigures {
        used_bytes: 10,
        capacity_bytes: 100,
        objects: 1,
        evictions: 2,
        spilled_objects: 3,
        spilled_bytes: 4,
        ..Default::default()
    };
    client
        .put_store_figures(node.node_id, &figures)
        .await
        .expect("store figures");
    let read = client
        .node(node.node_id)
        .await
        .expect("read")
        .expect("known");
    assert_eq!(read.store, Some(figures));
    client
        .mark_node_dead(node.node_id)
        .await
        .expect("mark dead");
    let nodes = client.nodes().await.expect("list");
    assert_eq!(nodes.len(), 1);
    assert!(!nodes[0].alive);

    let task = TaskEntry {
        task_id: TaskId::random_task(),
        spec: vec![0, 1, 2, 255].into(),
        state: "waiting".into(),
        node: None,
    };
    client.put_task(&task).await.expect("put task");
    assert_eq!(
        client.task(task.task_id).await.expect("read"),
        Some(task.clone())
    );
    client
        .set_task_state(task.task_id, "running", Some(node.node_id))
        .await
        .expect("state");
    let read = client
        .task(task.task_id)
        .await
        .expect("read")
        .expect("known");
    assert_eq!(
        (read.state.as_str(), read.node, read.spec),
        ("running", Some(node.node_id), task.spec)
    );
    let many: Vec<TaskEntry> = (0..50u8)
        .map(|i| TaskEntry {
            task_id: TaskId::random_task(),
            spec: vec![i; 3].into(),
            state: "finished".into(),
            node: Some(node.node_id),
        })
        .collect();
    client.put_tasks(&many).await.expect("put tasks");
    for task in &many {
        assert_eq!(
            client.task(task.task_id).await.expect("read"),
            Some(task.clone())
        );
    }

    let actor = ActorInfo {
        actor_id: ActorId::random(),
        job_id: JobId::random(),
        node: Some(node.node_id),
        worker: Some(WorkerId::random()),
        state: "alive".into(),
    };
    client.put_actor(&actor).await.expect("put actor");
    assert_eq!(
        client.actor(actor.actor_id).await.expect("read"),
        Some(actor.clone())
    );
    // The placer's `pending`, landing after the `alive` of the node that runs the actor,
    // does not take it back; on another node (a restart elsewhere) it is written.
    let pending = ActorInfo {
        worker: None,
        state: "pending".into(),
        ..actor.clone()
    };
    client.put_actor(&pending).await.expect("put actor");
    assert_eq!(
        client.actor(actor.actor_id).await.expect("read"),
        Some(actor.clone())
    );
    let elsewhere = ActorInfo {
        node: Some(NodeId::random()),
        ..pending
    };
    client.put_actor(&elsewhere).await.expect("put actor");
    assert_eq!(
        client.actor(actor.actor_id).await.expect("read"),
        Some(elsewhere)
    );

    let definition = b"pickled function".to_vec();
    let function = FunctionInfo {
        function_id: FunctionId::for_definition(&definition),
        job_id: JobId::random(),
        name: "__main__.f".into(),
        definition,
        mac: vec![7; 32],
    };
    client.put_function(&function).await.expect("put function");
    assert_eq!(
        client.function(function.function_id).await.expect("read"),
        Some(function.clone())
    );
    let index = redis_cli(gcs.port, None, &["smembers", keys::FUNCTIONS]);
    assert_eq!(index, Some(function.function_id.hex()));
}
