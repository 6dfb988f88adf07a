//! The real `rayd-global-scheduler` against a real GCS and fake raylets: tonic node
//! manager servers in the test, registered in the node table with their resources and
//! publishing heartbeats, that record the tasks the scheduler forwards to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use rayd_common::id::{NodeId, ObjectId, TaskId};
use rayd_common::proto::common::v1::{task_arg, TaskArg, TaskSpec};
use rayd_common::proto::globalscheduler::v1::global_scheduler_client::GlobalSchedulerClient;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_gcs::{GcsClient, Heartbeat, NodeInfo};
use rayd_integration::{free_port, redis_cli, Gcs, GlobalScheduler, TestDir};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const TIMEOUT: Duration = Duration::from_secs(10);

fn amounts(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a fake raylet's node manager saw.
#[derive(Debug, Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<nm::ForwardTaskRequest>>>,
    attempts: Arc<AtomicUsize>,
    refuse: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl nm::node_manager_server::NodeManager for Recorder {
    async fn forward_task(
        &self,
        request: Request<nm::ForwardTaskRequest>,
    ) -> Result<Response<nm::ForwardTaskReply>, Status> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the raylet is stopping"));
        }
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(nm::ForwardTaskReply {}))
    }

    type PeerStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<nm::PeerAck, Status>> + Send + 'static>,
    >;

    async fn peer(
        &self,
        _request: Request<tonic::Streaming<nm::PeerMessage>>,
    ) -> Result<Response<Self::PeerStream>, Status> {
        Err(Status::unimplemented(
            "a global scheduler only forwards tasks",
        ))
    }
}

/// A node in the node table whose raylet is a recorder in this process.
struct FakeRaylet {
    id: NodeId,
    total: BTreeMap<String, f64>,
    recorder: Recorder,
    server: JoinHandle<()>,
    beats: Option<JoinHandle<()>>,
}

impl FakeRaylet {
    /// Serves a recorder on a free port and registers the node with `total` resources.
    async fn start(gcs: &GcsClient, total: &[(&str, f64)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a fake node manager");
        let address = listener.local_addr().expect("address").to_string();
        let recorder = Recorder::default();
        let server = tonic::transport::Server::builder()
            .add_service(nm::node_manager_server::NodeManagerServer::new(
                recorder.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        Self::register(gcs, address, total, recorder, server).await
    }

    /// A node whose node manager address nobody listens on.
    async fn unreachable(gcs: &GcsClient, total: &[(&str, f64)]) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        Self::register(
            gcs,
            address,
            total,
            Recorder::default(),
            tokio::spawn(async {}),
        )
        .await
    }

    async fn register(
        gcs: &GcsClient,
        address: String,
        total: &[(&str, f64)],
        recorder: Recorder,
        server: JoinHandle<()>,
    ) -> Self {
        let id = NodeId::random();
        let total = amounts(total);
        gcs.register_node(&NodeInfo {
            node_id: id,
            node_ip_address: "127.0.0.1".into(),
            raylet_socket: String::new(),
            plasma_socket: String::new(),
            object_manager_address: String::new(),
            node_manager_address: address,
            resources_total: total.clone(),
            resources_available: total.clone(),
            alive: true,
            last_heartbeat_ms: 0,
            queued_tasks: 0,
            running_tasks: 0,
            store: None,
        })
        .await
        .expect("register a fake node");
        Self {
            id,
            total,
            recorder,
            server,
            beats: None,
        }
    }

    fn heartbeat(&self, queue_length: u64) -> Heartbeat {
        Heartbeat {
            node_id: self.id.hex(),
            resources_available: self.total.clone(),
            queue_length,
            running: 0,
            time_ms: now_ms(),
        }
    }

    /// Publishes one heartbeat: all of its resources free, `queue_length` tasks waiting.
    async fn beat(&self, gcs: &GcsClient, queue_length: u64) {
        gcs.heartbeat(&self.heartbeat(queue_length))
            .await
            .expect("publish a heartbeat");
    }

    /// Publishes a heartbeat (all free, nothing queued) every 100 ms until [`Self::silence`].
    fn beat_every_100ms(&mut self, gcs: &GcsClient) {
        let gcs = gcs.clone();
        let beat = self.heartbeat(0);
        self.beats = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let beat = Heartbeat {
                    time_ms: now_ms(),
                    ..beat.clone()
                };
                let _ = gcs.heartbeat(&beat).await;
            }
        }));
    }

    /// Stops heartbeating (a raylet that hangs or loses its network).
    fn silence(&mut self) {
        if let Some(beats) = self.beats.take() {
            beats.abort();
        }
    }

    fn received(&self) -> Vec<nm::ForwardTaskRequest> {
        self.recorder.received.lock().unwrap().clone()
    }
}

impl Drop for FakeRaylet {
    fn drop(&mut self) {
        self.silence();
        self.server.abort();
    }
}

fn task(resources: &[(&str, f64)], objects: &[ObjectId]) -> nm::ForwardTaskRequest {
    nm::ForwardTaskRequest {
        spec: Some(TaskSpec {
            task_id: TaskId::random_task().as_bytes().to_vec(),
            function_name: "test.f".into(),
            resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            args: objects
                .iter()
                .map(|o| TaskArg {
                    value: Some(task_arg::Value::ObjectId(o.as_bytes().to_vec())),
                })
                .collect(),
            num_returns: 1,
            ..TaskSpec::default()
        }),
        home_node_id: NodeId::random().as_bytes().to_vec(),
        hops: 0,
        job: None,
        from_node_id: Vec::new(),
    }
}

struct Cluster {
    dir: TestDir,
    gcs_daemon: Gcs,
    gcs: GcsClient,
}

async fn cluster() -> Cluster {
    let dir = TestDir::new();
    let gcs_daemon = Gcs::start(dir.path(), 1, &[]);
    let gcs = GcsClient::connect(&gcs_daemon.address(), None)
        .await
        .expect("connect to the GCS");
    Cluster {
        dir,
        gcs_daemon,
        gcs,
    }
}

impl Cluster {
    fn scheduler(&self, heartbeat_interval_ms: u64) -> GlobalScheduler {
        let interval = heartbeat_interval_ms.to_string();
        GlobalScheduler::start(
            self.dir.path(),
            "global-scheduler",
            &self.gcs_daemon.address(),
            &["--heartbeat-interval-ms", &interval],
        )
    }

    /// A client of the (one) registered global scheduler.
    async fn client(&self) -> GlobalSchedulerClient<Channel> {
        let live = self.gcs.global_schedulers().await.expect("list schedulers");
        assert_eq!(live.len(), 1, "{live:?}");
        GlobalSchedulerClient::connect(format!("http://{}", live[0].address))
            .await
            .expect("connect to the global scheduler")
    }
}

/// Spills a task of `resources` every 10 ms until `done` accepts where it went (or the
/// error); returns that. Panics naming `what` after the deadline.
async fn spills_until(
    what: &str,
    client: &mut GlobalSchedulerClient<Channel>,
    resources: &[(&str, f64)],
    done: impl Fn(Result<NodeId, Code>) -> bool,
) -> Result<NodeId, Status> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let placed = spill(client, task(resources, &[])).await;
        if done(placed.as_ref().copied().map_err(Status::code)) {
            return placed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; last: {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Spills `request`; the ID of the node it went to.
async fn spill(
    client: &mut GlobalSchedulerClient<Channel>,
    request: nm::ForwardTaskRequest,
) -> Result<NodeId, Status> {
    let reply = client.spill_task(request).await?.into_inner();
    Ok(NodeId::from_slice(&reply.node_id).expect("a node id in the reply"))
}

// The schedulers below beat at 1 s (a node is out after 10 s of silence): the fake
// raylets' figures come from the node table read at start, and no heartbeat resets a
// charge during a test, so each placement is exact.

#[tokio::test]
async fn a_task_goes_where_it_can_run_and_the_registration_lives_as_long_as_the_scheduler() {
    let cluster = cluster().await;
    let a = FakeRaylet::start(&cluster.gcs, &[("CPU", 4.0)]).await;
    let b = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0), ("Custom", 1.0)]).await;
    let mut scheduler = cluster.scheduler(1000);
    let mut client = cluster.client().await;

    let custom = task(&[("Custom", 1.0)], &[]);
    assert_eq!(spill(&mut client, custom.clone()).await.ok(), Some(b.id));
    let got = b.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].spec, custom.spec, "the task as spilled");
    assert_eq!(
        got[0].home_node_id, custom.home_node_id,
        "its home unchanged"
    );
    assert_eq!(got[0].hops, 1, "one hop more");
    assert!(a.received().is_empty());

    let error = spill(&mut client, task(&[("GPU", 1.0)], &[]))
        .await
        .expect_err("nobody has a GPU");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("GPU 1"), "{}", error.message());

    // A node that joins is heard of, one that dies is not used.
    let g = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0), ("GPU", 1.0)]).await;
    g.beat(&cluster.gcs, 0).await;
    spills_until(
        "the new node to get a task",
        &mut client,
        &[("GPU", 1.0)],
        |placed| placed == Ok(g.id),
    )
    .await
    .expect("placed on g");
    cluster.gcs.mark_node_dead(b.id).await.expect("mark b dead");
    let error = spills_until(
        "the dead node to be out",
        &mut client,
        &[("Custom", 1.0)],
        |placed| placed.is_err(),
    )
    .await
    .expect_err("only b had Custom");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert_eq!(b.received().len(), 1);

    // Its registration, as an operator sees it, until SIGTERM removes it.
    let field = redis_cli(
        cluster.gcs_daemon.port,
        None,
        &["hkeys", "rayd:global_schedulers"],
    )
    .expect("a registration");
    assert_eq!(field.lines().count(), 1, "{field}");
    scheduler.daemon.signal(Signal::SIGTERM);
    let status = scheduler.daemon.wait_exit(TIMEOUT);
    assert!(status.success(), "{status}");
    assert_eq!(
        redis_cli(
            cluster.gcs_daemon.port,
            None,
            &["hlen", "rayd:global_schedulers"]
        )
        .as_deref(),
        Some("0")
    );
    assert!(cluster
        .gcs
        .global_schedulers()
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn a_burst_of_tasks_spreads_by_room() {
    let cluster = cluster().await;
    let a = FakeRaylet::start(&cluster.gcs, &[("CPU", 3.0)]).await;
    let b = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0)]).await;
    let _scheduler = cluster.scheduler(1000);
    let client = cluster.client().await;
    let spills = (0..4).map(|_| {
        let mut client = client.clone();
        async move { spill(&mut client, task(&[("CPU", 1.0)], &[])).await }
    });
    let placed = futures::future::join_all(spills).await;
    assert!(placed.iter().all(Result::is_ok), "{placed:?}");
    assert_eq!((a.received().len(), b.received().len()), (3, 1));
}

#[tokio::test]
async fn a_task_goes_where_its_argument_bytes_are() {
    let cluster = cluster().await;
    let a = FakeRaylet::start(&cluster.gcs, &[("CPU", 2.0)]).await;
    let b = FakeRaylet::start(&cluster.gcs, &[("CPU", 2.0)]).await;
    // Both have room; a's queue is longer, so without arguments b would be chosen.
    a.beat(&cluster.gcs, 2).await;
    b.beat(&cluster.gcs, 0).await;
    let object = ObjectId::random();
    cluster
        .gcs
        .add_object_location(object, a.id, 50 << 20)
        .await
        .expect("record a location");
    let _scheduler = cluster.scheduler(1000);
    let mut client = cluster.client().await;
    assert_eq!(
        spill(&mut client, task(&[("CPU", 1.0)], &[object]))
            .await
            .ok(),
        Some(a.id),
        "its 50 MB argument is on a"
    );
    assert_eq!(
        spill(&mut client, task(&[("CPU", 1.0)], &[])).await.ok(),
        Some(b.id),
        "no argument: the shorter queue"
    );
    let mut from_a = task(&[("CPU", 1.0)], &[object]);
    from_a.from_node_id = a.id.as_bytes().to_vec();
    assert_eq!(
        spill(&mut client, from_a).await.ok(),
        Some(b.id),
        "never back to the node that spilled it"
    );
}

#[tokio::test]
async fn a_task_its_spiller_could_run_goes_only_where_there_is_room_now() {
    let cluster = cluster().await;
    let a = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0)]).await;
    let b = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0)]).await;
    let _scheduler = cluster.scheduler(1000);
    let mut client = cluster.client().await;
    let from_a = || {
        let mut request = task(&[("CPU", 1.0)], &[]);
        request.from_node_id = a.id.as_bytes().to_vec();
        request
    };
    assert_eq!(spill(&mut client, from_a()).await.ok(), Some(b.id));
    // b's CPU is taken now (until its next heartbeat): a's queue is as short as b's.
    let error = spill(&mut client, from_a())
        .await
        .expect_err("no room elsewhere");
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .message()
            .contains("waits on the node that spilled it"),
        "{}",
        error.message()
    );
    // A spiller that could never run it: where there is room, then the shorter queue.
    let from_elsewhere = || {
        let mut request = task(&[("CPU", 1.0)], &[]);
        request.from_node_id = NodeId::random().as_bytes().to_vec();
        request
    };
    assert_eq!(spill(&mut client, from_elsewhere()).await.ok(), Some(a.id));
    assert!(
        spill(&mut client, from_elsewhere()).await.is_ok(),
        "no room: a queue"
    );
    assert_eq!(a.received().len() + b.received().len(), 3);
}

#[tokio::test]
async fn nodes_that_refuse_are_unreachable_or_fall_silent_are_skipped() {
    let cluster = cluster().await;
    // By room alone: c, then a, then b.
    let mut c = FakeRaylet::unreachable(&cluster.gcs, &[("CPU", 16.0)]).await;
    // a alone has resource A (no charge exhausts it).
    let mut a = FakeRaylet::start(&cluster.gcs, &[("CPU", 8.0), ("A", 1e6)]).await;
    let mut b = FakeRaylet::start(&cluster.gcs, &[("CPU", 1.0)]).await;
    for node in [&mut a, &mut b, &mut c] {
        node.beat_every_100ms(&cluster.gcs);
    }
    // Heartbeats every 100 ms: a node silent for 1 s is out.
    let _scheduler = cluster.scheduler(100);
    let mut client = cluster.client().await;
    a.recorder.refuse.store(true, Ordering::SeqCst);
    assert_eq!(
        spill(&mut client, task(&[("CPU", 1.0)], &[])).await.ok(),
        Some(b.id),
        "c cannot be reached and a refuses"
    );
    assert_eq!(a.recorder.attempts.load(Ordering::SeqCst), 1);

    // a takes tasks again once its next heartbeat says it is there.
    a.recorder.refuse.store(false, Ordering::SeqCst);
    let only_a = [("A", 1.0)];
    spills_until("a to take tasks again", &mut client, &only_a, |placed| {
        placed == Ok(a.id)
    })
    .await
    .expect("placed on a");

    // a falls silent (its server still up): once out of the view, it gets nothing, and
    // what only it could run finds no node.
    a.silence();
    c.silence();
    let error = spills_until("a to be out of the view", &mut client, &only_a, |placed| {
        placed.is_err()
    })
    .await;
    assert_eq!(error.expect_err("a is out").code(), Code::Unavailable);
    let before = a.recorder.attempts.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            spill(&mut client, task(&[("CPU", 1.0)], &[])).await.ok(),
            Some(b.id)
        );
    }
    assert_eq!(a.recorder.attempts.load(Ordering::SeqCst), before);

    // Nobody left: the caller hears it (and places the task itself).
    b.silence();
    let error = spills_until(
        "no node to be left",
        &mut client,
        &[("CPU", 1.0)],
        |placed| placed.is_err(),
    )
    .await;
    assert_eq!(error.expect_err("no node").code(), Code::Unavailable);
}
