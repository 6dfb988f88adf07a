//! `rayd-plasma-bench`: the plasma store's figures, as JSON lines
//! `{"name": .., "value": .., "unit": ..}` on stdout.
//!
//! It starts two `rayd-plasma` processes (the binary next to this one, or `--plasma`) on
//! a temp dir and free loopback ports, measures, and stops them:
//! - create+seal+get+release of 100-byte objects per second from one client (and with
//!   the get from a second client, which goes through the store);
//! - put of a 100 MB object in GB/s, beside a plain memcpy of 100 MB, and the same
//!   object filled in place (through a writable mapping);
//! - get latency of a sealed 100 MB object from another client (descriptor passing and
//!   mapping, no copy);
//! - transfer of an object between the two stores over loopback, in GB/s;
//! - put and get of a 200 MB object (a memfd of its own, as every large object).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rayd_common::id::ObjectId;
use rayd_plasma_client::PlasmaClient;

/// Measures the plasma store and prints JSON lines.
#[derive(Debug, Parser)]
#[command(name = "rayd-plasma-bench")]
struct Args {
    /// The rayd-plasma binary (default: next to this one).
    #[arg(long)]
    plasma: Option<PathBuf>,
    /// Seconds the small-object loop runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Bytes of the object moved between the stores.
    #[arg(long, default_value_t = 500_000_000)]
    transfer_bytes: u64,
    /// Runs the transfers only (for profiling them).
    #[arg(long)]
    transfers_only: bool,
}

const MB100: usize = 100_000_000;

fn emit(name: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({ "name": name, "value": (value * 1000.0).round() / 1000.0, "unit": unit })
    );
}

/// A store process, stopped on drop.
struct Store {
    child: Child,
    socket: PathBuf,
    port: u16,
}

impl Drop for Store {
    fn drop(&mut self) {
        rayd_common::process::signal_pid(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_store(binary: &Path, dir: &Path, name: &str, memory: u64) -> Result<Store> {
    let socket = dir.join(name).join("plasma.sock");
    let port = free_port()?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(binary)
        .args(["--plasma-socket"])
        .arg(&socket)
        .args([
            "--object-manager-port",
            &port.to_string(),
            "--object-store-memory",
            &memory.to_string(),
            "--log-level",
            "warn",
        ])
        .env_remove("RAYD_REDIS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut store = Store {
        child,
        socket,
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if PlasmaClient::connect(&store.socket, "bench-probe").is_ok() {
            return Ok(store);
        }
        if let Some(status) = store.child.try_wait()? {
            bail!(
                "{name} exited ({status}); see {}",
                dir.join(format!("{name}.log")).display()
            );
        }
        if Instant::now() > deadline {
            bail!("{name} did not start serving within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One request and its reply over the socket, the unit every other figure is built of.
fn round_trip(client: &PlasmaClient) -> Result<()> {
    let id = ObjectId::random();
    let mut times = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let started = Instant::now();
        client.contains(id)?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    emit("plasma_round_trip_us", median(times), "us");
    Ok(())
}

fn small_objects(client: &PlasmaClient, reader: &PlasmaClient, seconds: f64) -> Result<()> {
    let run = |remote_get: bool| -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut count = 0u64;
        while Instant::now() < deadline {
            for _ in 0..100 {
                let id = ObjectId::random();
                let mut builder = client.create(id, 100, 0)?;
                builder.data_mut().fill(7);
                let sealed = builder.seal()?;
                // The put of a small object into the creator's lease needs no reply:
                // another client's get waits until the store has read it.
                let got = if remote_get {
                    reader.get_one(id, Some(Duration::from_secs(10)))?
                } else {
                    client.get_one(id, Some(Duration::ZERO))?
                };
                if got.map(|b| b.data()[99]) != Some(7) {
                    bail!("object {id} read back wrong");
                }
                drop(sealed);
                count += 1;
            }
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    };
    emit("plasma_small_object_ops_per_s", run(false)?, "ops/s");
    emit(
        "plasma_small_object_ops_second_client_get_per_s",
        run(true)?,
        "ops/s",
    );
    Ok(())
}

/// Put and get of a large object (200 MB), in a memfd of its own.
fn own_segment(client: &PlasmaClient, reader: &PlasmaClient) -> Result<()> {
    let size = (MB100 * 2).min(client.small_object_max() as usize);
    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut put = Vec::new();
    let mut get = Vec::new();
    for _ in 0..5 {
        let id = ObjectId::random();
        let started = Instant::now();
        let sealed = client.put(id, &source, b"")?;
        put.push(size as f64 / started.elapsed().as_secs_f64() / 1e9);
        let started = Instant::now();
        let buffer = reader
            .get_one(id, Some(Duration::ZERO))?
            .context("the sealed object is missing")?;
        get.push(started.elapsed().as_secs_f64() * 1e6);
        drop((sealed, buffer));
        reader.flush()?;
        client.delete(&[id])?;
    }
    emit("plasma_put_own_segment_gb_per_s", median(put), "GB/s");
    emit("plasma_get_own_segment_latency_us", median(get), "us");
    emit("plasma_own_segment_object_bytes", size as f64, "bytes");
    Ok(())
}

fn put_vs_memcpy(client: &PlasmaClient) -> Result<()> {
    let source: Vec<u8> = (0..MB100).map(|i| (i % 251) as u8).collect();
    let mut target = vec![1u8; MB100];
    let mut memcpy = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&target);
        memcpy.push(MB100 as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    // A put writes into the object's segment with pwrite; filled in place, the object is
    // written through a writable mapping of it, whose page tables cost more.
    let mut put = Vec::new();
    let mut in_place = Vec::new();
    for _ in 0..7 {
        let id = ObjectId::random();
        let started = Instant::now();
        let sealed = client.put(id, &source, b"")?;
        put.push(MB100 as f64 / started.elapsed().as_secs_f64() / 1e9);
        drop(sealed);
        client.delete(&[id])?;
        let id = ObjectId::random();
        let started = Instant::now();
        let mut builder = client.create(id, MB100 as u64, 0)?;
        builder.data_mut().copy_from_slice(&source);
        let sealed = builder.seal()?;
        in_place.push(MB100 as f64 / started.elapsed().as_secs_f64() / 1e9);
        drop(sealed);
        client.delete(&[id])?;
    }
    let (memcpy, put) = (median(memcpy), median(put));
    emit("memcpy_100mb_gb_per_s", memcpy, "GB/s");
    emit("plasma_put_100mb_gb_per_s", put, "GB/s");
    emit("plasma_put_100mb_vs_memcpy", put / memcpy, "ratio");
    emit(
        "plasma_put_100mb_in_place_gb_per_s",
        median(in_place),
        "GB/s",
    );
    Ok(())
}

fn get_latency(client: &PlasmaClient, reader: &PlasmaClient) -> Result<()> {
    let id = ObjectId::random();
    let data = vec![3u8; MB100];
    let _held = client.put(id, &data, b"")?;
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let buffer = reader
            .get_one(id, Some(Duration::ZERO))?
            .context("the sealed object is missing")?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
        if buffer.data().len() != MB100 {
            bail!("wrong size");
        }
        drop(buffer);
    }
    emit("plasma_get_100mb_latency_us", median(latencies), "us");
    client.delete(&[id])?;
    Ok(())
}

fn transfer(source: &Store, target: &Store, bytes: u64, name: &str) -> Result<()> {
    let writer = PlasmaClient::connect(&source.socket, "bench-source")?;
    let puller = PlasmaClient::connect(&target.socket, "bench-target")?;
    let id = ObjectId::random();
    let mut builder = writer.create(id, bytes, 0)?;
    for (i, b) in builder.data_mut().iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let _held = builder.seal()?;
    let address = format!("127.0.0.1:{}", source.port);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        puller.pull(id, &address)?;
        rates.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
        let report = puller.delete(&[id])?;
        if report.deleted != vec![id] {
            bail!("the pulled object could not be deleted: {report:?}");
        }
    }
    emit(name, median(rates), "GB/s");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let binary = match args.plasma {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("rayd-plasma"),
    };
    let dir = tempfile::Builder::new()
        .prefix("rayd-plasma-bench-")
        .tempdir()?;
    let memory = (args.transfer_bytes + (1 << 30)).max(2 << 30);
    let a = start_store(&binary, dir.path(), "plasma-a", memory)?;
    let b = start_store(&binary, dir.path(), "plasma-b", memory)?;
    let client = PlasmaClient::connect(&a.socket, "bench")?;
    let reader = PlasmaClient::connect(&a.socket, "bench-reader")?;
    if !args.transfers_only {
        round_trip(&client)?;
        small_objects(&client, &reader, args.seconds)?;
        put_vs_memcpy(&client)?;
        get_latency(&client, &reader)?;
        own_segment(&client, &reader)?;
    }
    // Both get segments of their own, written with pwrite on the pulling side.
    transfer(
        &a,
        &b,
        MB100 as u64,
        "plasma_transfer_loopback_100mb_gb_per_s",
    )?;
    transfer(
        &a,
        &b,
        args.transfer_bytes,
        "plasma_transfer_loopback_gb_per_s",
    )?;
    Ok(())
}
