//! The cluster secret: a head made by `rayd start` is closed to clients without it (its
//! Redis servers, its global scheduler, its raylet's node manager), and an object manager
//! serves objects only to callers that present the cluster's token.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use rayd_common::id::ObjectId;
use rayd_common::proto::globalscheduler::v1::global_scheduler_client::GlobalSchedulerClient;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_common::proto::objectmanager::v1::object_manager_client::ObjectManagerClient;
use rayd_common::proto::objectmanager::v1::PullRequest;
use rayd_gcs::GcsClient;
use rayd_integration::{binary, clean_command, free_ports, redis_cli, Plasma, TestDir};
use rayd_plasma_client::PlasmaClient;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn rayd(dir: &TestDir, args: &[&str]) -> Output {
    clean_command(&binary("rayd"))
        .args(args)
        .args(["--temp-dir", dir.path().to_str().unwrap_or_default()])
        .output()
        .expect("run rayd")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops the node even when an assertion fails.
struct Node<'a>(&'a TestDir);

impl Drop for Node<'_> {
    fn drop(&mut self) {
        let _ = rayd(self.0, &["stop"]);
    }
}

/// What `redis-cli` prints (both streams), errors included.
fn redis_cli_text(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut command = std::process::Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    text(&command.args(args).output().expect("run redis-cli"))
}

/// Whether a gRPC call was refused for want of the cluster's token.
fn unauthenticated<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> bool {
    matches!(&result, Err(status) if status.code() == Code::Unauthenticated)
}

#[test]
fn a_head_generates_a_secret_and_refuses_clients_without_it() {
    let dir = TestDir::new();
    let port = free_ports(3)[1].to_string();
    let started = rayd(&dir, &["start", "--head", "--redis-port", &port]);
    let _node = Node(&dir);
    assert!(started.status.success(), "{}", text(&started));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("node.json")).expect("node.json"),
    )
    .expect("json");
    let file = state["redis_password_file"]
        .as_str()
        .expect("a secret file");
    let mode = std::fs::metadata(file)
        .expect("secret")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secret file is private");
    let secret = std::fs::read_to_string(file).expect("secret");
    assert_eq!(secret.len(), 64);
    assert!(
        !text(&started).contains(&secret),
        "rayd start printed the secret"
    );
    let port: u16 = port.parse().expect("port");

    // Redis: nothing without the password, not even a forged function.
    let forged = redis_cli_text(
        port,
        None,
        &["hset", "rayd:function:00", "definition", "pickle"],
    );
    assert!(forged.contains("NOAUTH"), "{forged}");
    let wrong = redis_cli_text(port, Some("guess"), &["ping"]);
    assert!(
        wrong.contains("WRONGPASS") || wrong.contains("invalid"),
        "{wrong}"
    );
    assert_eq!(
        redis_cli(port, Some(&secret), &["ping"]).as_deref(),
        Some("PONG")
    );
    // `rayd status` on this machine finds the secret itself.
    let status = rayd(&dir, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let address = format!("127.0.0.1:{port}");
        let err = GcsClient::connect(&address, None).await.unwrap_err();
        assert!(
            err.to_string().contains("requires the cluster's secret"),
            "{err}"
        );
        let err = GcsClient::connect(&address, Some("guess"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refused the password"), "{err}");

        let gcs = GcsClient::connect(&address, Some(&secret))
            .await
            .expect("gcs");
        let schedulers = gcs.global_schedulers().await.expect("schedulers");
        let nodes = gcs.nodes().await.expect("nodes");
        let node = nodes.first().expect("the head's raylet registered");

        // The global scheduler and the raylet's node manager: no token, no call.
        let mut scheduler = GlobalSchedulerClient::connect(format!(
            "http://{}",
            schedulers.first().expect("a global scheduler").address
        ))
        .await
        .expect("connect");
        assert!(unauthenticated(
            scheduler
                .spill_task(nm::ForwardTaskRequest::default())
                .await
        ));
        let mut raylet = nm::node_manager_client::NodeManagerClient::connect(format!(
            "http://{}",
            node.node_manager_address
        ))
        .await
        .expect("connect");
        assert!(unauthenticated(
            raylet.forward_task(nm::ForwardTaskRequest::default()).await
        ));
        // The same call with the token gets past the check (to the request's own errors).
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            node.node_manager_address
        ))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
        let auth = rayd_common::auth::ClientAuth::new(Some(&secret));
        let mut raylet = nm::node_manager_client::NodeManagerClient::new(auth.wrap(channel));
        let with_token = raylet.forward_task(nm::ForwardTaskRequest::default()).await;
        assert!(!unauthenticated(with_token), "the token was refused");
        peer_stream_refuses_bad_messages(&mut raylet).await;
        gcs.quit().await;
    });
}

/// A raylet's peer stream answers each malformed message with a refusal naming its
/// cause, and keeps the stream open for the next one.
async fn peer_stream_refuses_bad_messages(
    raylet: &mut nm::node_manager_client::NodeManagerClient<rayd_common::auth::AuthChannel>,
) {
    use nm::peer_message::Body;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut acks = raylet
        .peer(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ))
        .await
        .expect("a stream with the token opens")
        .into_inner();
    let bad = [
        (None, "an empty peer message"),
        (
            Some(Body::Forward(nm::ForwardTaskRequest::default())),
            "no task spec",
        ),
        (
            Some(Body::KillActor(nm::KillActorRequest {
                actor_id: vec![1, 2, 3],
                reason: String::new(),
            })),
            "actor_id",
        ),
        (
            Some(Body::Finished(nm::TaskFinishedRequest::default())),
            "task_id",
        ),
    ];
    for (seq, (body, cause)) in (1..).zip(bad) {
        sender
            .send(nm::PeerMessage { seq, body })
            .expect("the stream is open");
        let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
            .await
            .expect("an answer within 10 s")
            .expect("the stream stays open")
            .expect("an ack");
        assert_eq!(ack.seq, seq);
        assert!(ack.refused.contains(cause), "{seq}: {}", ack.refused);
    }
}

#[test]
fn the_object_manager_serves_only_callers_with_the_token() {
    let dir = TestDir::new();
    let secret = ["--redis-password", "cluster-secret-1"];
    let a = Plasma::start(dir.path(), "plasma-a", 64 * MIB, &secret);
    let same = Plasma::start(dir.path(), "plasma-same", 64 * MIB, &secret);
    let open = Plasma::start(dir.path(), "plasma-open", 64 * MIB, &[]);
    let other = Plasma::start(
        dir.path(),
        "plasma-other",
        64 * MIB,
        &["--redis-password", "another-cluster"],
    );
    let writer = PlasmaClient::connect(&a.socket, "writer").expect("connect");
    let id = ObjectId::random();
    let secret_bytes = b"the driver's secret array".repeat(1000);
    drop(writer.put(id, &secret_bytes, b"").expect("put"));

    for (store, why) in [(&open, "no cluster token"), (&other, "wrong cluster token")] {
        let client = PlasmaClient::connect(&store.socket, "outsider").expect("connect");
        let err = client
            .pull(id, &a.object_manager_address())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
        assert!(client
            .get_one(id, Some(Duration::ZERO))
            .expect("get")
            .is_none());
    }
    // A bare gRPC client: refused before any chunk.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut outsider =
            ObjectManagerClient::connect(format!("http://{}", a.object_manager_address()))
                .await
                .expect("connect");
        let pulled = outsider
            .pull(PullRequest {
                object_id: id.as_bytes().to_vec(),
                chunk_size: MIB,
                offset: 0,
                length: 0,
            })
            .await;
        assert!(unauthenticated(pulled.map(|_| ())));
    });

    let client = PlasmaClient::connect(&same.socket, "member").expect("connect");
    client.pull(id, &a.object_manager_address()).expect("pull");
    let copy = client.get_one(id, None).expect("get").expect("object");
    assert!(copy.data() == &secret_bytes[..]);
}

/// A CA and a certificate for 127.0.0.1 signed by it (made with `openssl`), and a config
/// file that names them; returns the config's path.
fn tls_config(dir: &std::path::Path, name: &str, secret: &str) -> std::path::PathBuf {
    let tls = dir.join(name);
    std::fs::create_dir_all(&tls).expect("tls dir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=rayd test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign,cRLSign",
        ][..],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node",
        ][..],
    ]
    .concat());
    std::fs::write(
        tls.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let config = tls.join("rayd.toml");
    std::fs::write(
        &config,
        format!(
            "redis_password = \"{secret}\"\ntls_cert_file = \"{0}/node.pem\"\n\
             tls_key_file = \"{0}/node.key\"\ntls_ca_file = \"{0}/ca.pem\"\n",
            tls.display()
        ),
    )
    .expect("config");
    config
}

#[test]
fn with_tls_objects_move_only_between_holders_of_the_cas_certificates() {
    let dir = TestDir::new();
    let config = tls_config(dir.path(), "tls", "tls-secret");
    let config = config.to_str().expect("utf-8");
    let a = Plasma::start(dir.path(), "plasma-a", 64 * MIB, &["--config", config]);
    let b = Plasma::start(dir.path(), "plasma-b", 64 * MIB, &["--config", config]);
    let plain = Plasma::start(
        dir.path(),
        "plasma-plain",
        64 * MIB,
        &["--redis-password", "tls-secret"],
    );
    let writer = PlasmaClient::connect(&a.socket, "writer").expect("connect");
    let id = ObjectId::random();
    let bytes = b"over tls".repeat(100_000);
    drop(writer.put(id, &bytes, b"").expect("put"));

    let member = PlasmaClient::connect(&b.socket, "member").expect("connect");
    member
        .pull(id, &a.object_manager_address())
        .expect("a pull over TLS");
    let copy = member.get_one(id, None).expect("get").expect("object");
    assert!(copy.data() == &bytes[..]);

    // The right token without TLS (or without the CA's certificate) gets nothing.
    let outsider = PlasmaClient::connect(&plain.socket, "outsider").expect("connect");
    assert!(outsider.pull(id, &a.object_manager_address()).is_err());
    assert!(outsider
        .get_one(id, Some(Duration::ZERO))
        .expect("get")
        .is_none());
}
