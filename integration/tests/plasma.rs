//! The plasma store as real processes: a `rayd-plasma` daemon, clients in this test
//! process and in child processes (this test binary re-run with a role), and for
//! transfers two stores and a real GCS.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rayd_common::id::{NodeId, ObjectId};
use rayd_integration::{wait_for, Gcs, Plasma, TestDir};
use rayd_plasma_client::{ClientError, EventKind, PlasmaClient, Subscription};

const MIB: u64 = 1 << 20;
const ROLE: &str = "RAYD_PLASMA_TEST_ROLE";
const SOCKET: &str = "RAYD_PLASMA_TEST_SOCKET";
const OBJECTS: &str = "RAYD_PLASMA_TEST_OBJECTS";
const WAIT: Duration = Duration::from_secs(30);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn client(plasma: &Plasma) -> PlasmaClient {
    PlasmaClient::connect(&plasma.socket, "test").expect("connect to plasma")
}

fn put(client: &PlasmaClient, id: ObjectId, seed: u8, len: usize) {
    drop(client.put(id, &pattern(seed, len), b"meta").expect("put"));
}

// ---- child processes ----

/// This test binary, re-run to play `role` against the store at `socket`.
fn child(role: &str, socket: &Path, objects: &[ObjectId]) -> Child {
    let ids: Vec<String> = objects.iter().map(ObjectId::hex).collect();
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SOCKET, socket)
        .env(OBJECTS, ids.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a child process")
}

/// Reads the child's stdout until a line `CHILD:<word>`; returns the word.
fn child_says(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read child output") == 0 {
            return String::new();
        }
        // The test harness may print its own words before ours on the same line.
        if let Some((_, word)) = line.trim().split_once("CHILD:") {
            return word.to_string();
        }
    }
}

/// Whether `ptr` lies in a mapping of a plasma memfd in this process.
fn in_plasma_mapping(ptr: *const u8) -> bool {
    let address = ptr as usize;
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            let start = usize::from_str_radix(start, 16).unwrap_or(usize::MAX);
            let end = usize::from_str_radix(end, 16).unwrap_or(0);
            (start..end).contains(&address) && line.contains("memfd:rayd-plasma")
        })
}

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let socket = std::env::var(SOCKET).unwrap();
    let objects: Vec<ObjectId> = std::env::var(OBJECTS)
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let client = PlasmaClient::connect(&socket, &role).unwrap();
    match role.as_str() {
        // Reads every object but the last, checks the bytes come from its own mapping
        // of the store's memory, and writes the last one.
        "reader" => {
            let (reply, read) = objects.split_last().unwrap();
            for (i, id) in read.iter().enumerate() {
                let buffer = client.get_one(*id, Some(WAIT)).unwrap().unwrap();
                let expected = pattern(i as u8, buffer.data().len());
                assert_eq!(buffer.data(), &expected[..], "bytes of object {i}");
                assert_eq!(buffer.metadata(), b"meta");
                assert!(buffer.is_read_only());
                assert!(
                    in_plasma_mapping(buffer.data().as_ptr()),
                    "object {i} is not read through a plasma mapping"
                );
            }
            put(&client, *reply, 99, 12345);
            println!("CHILD:ok");
        }
        // Writes into a sealed object: must die of SIGSEGV.
        "scribbler" => {
            let buffer = client.get_one(objects[0], Some(WAIT)).unwrap().unwrap();
            let ptr = buffer.data().as_ptr() as *mut u8;
            println!("CHILD:writing");
            // SAFETY: deliberately unsound: the test checks the kernel refuses the write.
            unsafe { ptr.write_volatile(0xff) };
            println!("CHILD:wrote");
        }
        // Pins objects[0], starts creating a large object, puts a small one into its
        // lease and holds it, then waits to be killed.
        "creator" => {
            let pinned = client.get_one(objects[0], Some(WAIT)).unwrap().unwrap();
            let mut large = client.create(objects[1], 20 * MIB, 0).unwrap();
            large.data_mut()[..4].copy_from_slice(b"half");
            let small = client.put(objects[2], &[1; 100], b"").unwrap();
            println!("CHILD:ready");
            let mut byte = [0u8];
            let _ = std::io::stdin().read(&mut byte);
            drop((pinned, large, small));
        }
        // Gets every object, then tries every way to write the store's memory.
        "attacker" => {
            let held: Vec<_> = objects
                .iter()
                .map(|id| client.get_one(*id, Some(WAIT)).unwrap().unwrap())
                .collect();
            attack_store_memory();
            drop(held);
            println!("CHILD:refused");
        }
        // Puts a large object and, holding it, tries to write it as the attacker does.
        "sealer" => {
            let held = client
                .put(objects[0], &pattern(5, SEALED_LARGE), b"meta")
                .unwrap();
            attack_store_memory();
            drop(held);
            println!("CHILD:refused");
        }
        other => panic!("unknown role {other}"),
    }
}

/// A large object of the sealing tests: large enough to be made of several files (see
/// `rayd_plasma_client::parts`), each of which must refuse writes.
const SEALED_LARGE: usize = 12 * MIB as usize;

/// Whether a system call's result says the kernel refused it (EPERM or EACCES).
fn refused(result: isize, what: &str, path: &Path) {
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        result == -1 && matches!(errno, Some(libc::EPERM | libc::EACCES)),
        "{what} of {} was not refused (result {result}, errno {errno:?})",
        path.display()
    );
}

/// Tries to write the store's memory every way this process has: each descriptor of it
/// (mapped writable, written with `pwrite`, reopened read-write through `/proc/self/fd`
/// and then mapped or written) and each mapping of it (`mprotect` to writable). Panics
/// on the first way that works; checks that there was something to attack (the arena and
/// at least one segment of its own, each a descriptor and a mapping).
fn attack_store_memory() {
    const LEN: usize = 4096;
    let mut descriptors = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let path = entry.unwrap().path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if !target.to_string_lossy().contains("memfd:rayd-plasma") {
            continue;
        }
        let fd: i32 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        descriptors += 1;
        let try_fd = |fd: i32, how: &str| {
            // SAFETY: a fresh mapping at an address the kernel picks; unmapped at once
            // should it (wrongly) succeed.
            let mapped = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                // SAFETY: the mapping just made.
                unsafe { libc::munmap(mapped, LEN) };
            }
            let result = if mapped == libc::MAP_FAILED { -1 } else { 0 };
            refused(
                result,
                &format!("mmap(PROT_WRITE, MAP_SHARED) {how}"),
                &path,
            );
            // SAFETY: writes one byte from a valid buffer.
            let written = unsafe { libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0) };
            if written == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
            {
                // A read-only descriptor: refused before the seal is even asked.
                return;
            }
            refused(written, &format!("pwrite {how}"), &path);
        };
        try_fd(fd, "of the descriptor given");
        let reopened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        match reopened {
            Ok(file) => {
                use std::os::fd::AsRawFd;
                let rw = file.as_raw_fd();
                // SAFETY: fcntl reads the descriptor's flags.
                let flags = unsafe { libc::fcntl(rw, libc::F_GETFL) };
                assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR, "reopened read-write");
                try_fd(rw, "reopened read-write through /proc/self/fd");
            }
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)),
                "reopening {}: {e}",
                path.display()
            ),
        }
    }
    let mut mappings = 0;
    for line in std::fs::read_to_string("/proc/self/maps").unwrap().lines() {
        if !line.contains("memfd:rayd-plasma") {
            continue;
        }
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        assert!(
            !line.split_whitespace().nth(1).unwrap().contains('w'),
            "{line}"
        );
        mappings += 1;
        // SAFETY: changes the protection of a mapping of this process; refused.
        let result = unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        refused(result as isize, "mprotect(PROT_WRITE)", Path::new(line));
    }
    assert!(
        descriptors >= 2 && mappings >= 2,
        "nothing to attack: {descriptors} descriptors, {mappings} mappings"
    );
}

// ---- tests ----

#[test]
fn two_client_processes_share_objects_without_copying() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 256 * MIB, &[]);
    let client = client(&plasma);
    let small = ObjectId::random();
    let large = ObjectId::random();
    let reply = ObjectId::random();
    put(&client, small, 0, 1000);
    put(&client, large, 1, 6 * MIB as usize);
    let mut reader = child("reader", &plasma.socket, &[small, large, reply]);
    assert_eq!(child_says(&mut reader), "ok");
    assert!(reader.wait().unwrap().success());

    let buffer = client.get_one(reply, Some(WAIT)).unwrap().unwrap();
    assert_eq!(buffer.data(), &pattern(99, 12345)[..]);
    assert!(in_plasma_mapping(buffer.data().as_ptr()));
    let again = client.get_one(reply, None).unwrap().unwrap();
    assert_eq!(
        again.data().as_ptr(),
        buffer.data().as_ptr(),
        "a second get of a held object is the same memory"
    );
    drop((buffer, again));
    // The same ID twice in one get: one pin per buffer, all gone with the buffers.
    let other = PlasmaClient::connect(&plasma.socket, "other").unwrap();
    let twice = other.get(&[large, large], Some(WAIT)).unwrap();
    assert!(twice.iter().all(Option::is_some));
    drop(twice);
    other.flush().unwrap();
    wait_for("the pins to go", WAIT, || {
        let rows = client.list().unwrap();
        rows.iter().all(|r| r.pins == 0).then_some(())
    });

    let report = client.delete(&[small, large, reply]).unwrap();
    assert_eq!(report.deleted.len(), 3, "{report:?}");
    let stats = client.stats().unwrap();
    assert_eq!((stats.objects, stats.used_bytes), (0, 0), "{stats:?}");
    assert_eq!(stats.capacity_bytes, 256 * MIB);
}

#[test]
fn a_reader_cannot_write_a_sealed_object() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let client = client(&plasma);
    // A small object in the arena, a large one in a segment of its own: readers map both
    // read-only.
    for (seed, size) in [(3u8, 100usize), (4, 6 * MIB as usize)] {
        let id = ObjectId::random();
        put(&client, id, seed, size);
        let mut scribbler = child("scribbler", &plasma.socket, &[id]);
        assert_eq!(child_says(&mut scribbler), "writing");
        let status = scribbler.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGSEGV),
            "a write into a sealed {size}-byte object must fault, got {status}"
        );
        let buffer = client.get_one(id, None).unwrap().unwrap();
        assert_eq!(buffer.data(), &pattern(seed, size)[..], "object unchanged");
    }
}

#[test]
fn no_client_can_write_a_sealed_object_whatever_it_tries() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let client = client(&plasma);
    let (small, large, own) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
    put(&client, small, 3, 100);
    put(&client, large, 4, SEALED_LARGE);
    // A reader of both, and the creator of a large one after its seal.
    for (role, ids) in [("attacker", vec![small, large]), ("sealer", vec![own])] {
        let mut attacker = child(role, &plasma.socket, &ids);
        assert_eq!(child_says(&mut attacker), "refused", "{role}");
        let status = attacker.wait().unwrap();
        assert!(status.success(), "{role}: {status}");
    }
    let reader = PlasmaClient::connect(&plasma.socket, "second reader").unwrap();
    for (id, seed, size) in [
        (small, 3, 100),
        (large, 4, SEALED_LARGE),
        (own, 5, SEALED_LARGE),
    ] {
        let buffer = reader.get_one(id, Some(WAIT)).unwrap().unwrap();
        assert_eq!(
            buffer.data(),
            &pattern(seed, size)[..],
            "object {id} unchanged"
        );
        assert_eq!(buffer.metadata(), b"meta");
    }
}

#[test]
fn a_store_backed_by_files_serves_small_and_large_objects_read_only() {
    let dir = TestDir::new();
    let files = dir.path().join("backing");
    std::fs::create_dir(&files).unwrap();
    let plasma = Plasma::start(
        dir.path(),
        "plasma",
        64 * MIB,
        &["--plasma-directory", files.to_str().unwrap()],
    );
    let client = client(&plasma);
    let (small, large) = (ObjectId::random(), ObjectId::random());
    put(&client, small, 1, 100);
    put(&client, large, 2, SEALED_LARGE);
    let reader = PlasmaClient::connect(&plasma.socket, "reader").unwrap();
    for (id, seed, size) in [(small, 1, 100), (large, 2, SEALED_LARGE)] {
        let buffer = reader.get_one(id, Some(WAIT)).unwrap().unwrap();
        assert_eq!(buffer.data(), &pattern(seed, size)[..]);
        assert!(buffer.is_read_only());
    }
    assert_eq!(
        std::fs::read_dir(&files).unwrap().count(),
        0,
        "the files are unlinked"
    );
}

#[test]
fn get_times_out_on_a_missing_object_and_wakes_on_seal() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let client = client(&plasma);
    let missing = ObjectId::random();
    let started = Instant::now();
    let got = client
        .get_one(missing, Some(Duration::from_millis(300)))
        .unwrap();
    let waited = started.elapsed();
    assert!(got.is_none());
    assert!(
        waited >= Duration::from_millis(300),
        "returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "returned after {waited:?}"
    );

    let id = ObjectId::random();
    let socket = plasma.socket.clone();
    let waiter = std::thread::spawn(move || {
        let other = PlasmaClient::connect(&socket, "waiter").unwrap();
        let buffer = other.get_one(id, Some(Duration::from_secs(60))).unwrap();
        (Instant::now(), buffer.map(|b| b.data().to_vec()))
    });
    // The waiter's get is in the store once its connection shows in the figures.
    wait_for("the waiter to connect", WAIT, || {
        (client.stats().unwrap().clients == 2).then_some(())
    });
    let mut builder = client.create(id, 5, 0).unwrap();
    builder.data_mut().copy_from_slice(b"hello");
    let sealed_at = Instant::now();
    let _buffer = builder.seal().unwrap();
    let (woke_at, data) = waiter.join().unwrap();
    assert_eq!(data.as_deref(), Some(&b"hello"[..]));
    let latency = woke_at.saturating_duration_since(sealed_at);
    assert!(
        latency < Duration::from_secs(10),
        "woke {latency:?} after the seal"
    );
}

/// A `ray.put` object's ID (the top bit of its index set).
fn put_id() -> ObjectId {
    let mut bytes = *ObjectId::random().as_bytes();
    bytes[16] |= 0x80;
    ObjectId::from_bytes(bytes)
}

/// A store of `memory` bytes that spills into `spill`.
fn spilling_store(dir: &TestDir, memory: u64, spill: &Path) -> Plasma {
    let socket = dir.path().join("plasma").join("plasma.sock");
    let memory = memory.to_string();
    let port = rayd_integration::free_port();
    let port_text = port.to_string();
    let daemon = rayd_integration::Daemon::start(
        dir.path(),
        "plasma",
        &rayd_integration::binary("rayd-plasma"),
        &[
            "--plasma-socket",
            socket.to_str().expect("utf-8 temp dir"),
            "--object-manager-port",
            &port_text,
            "--object-store-memory",
            &memory,
        ],
        &[(
            "RAYD_OBJECT_SPILLING_DIRECTORY",
            spill.to_str().expect("utf-8 temp dir"),
        )],
    );
    let mut plasma = Plasma {
        daemon,
        socket,
        object_manager_port: port,
    };
    plasma
        .daemon
        .wait_for_log("plasma store ready", Duration::from_secs(30));
    plasma
}

#[test]
fn a_full_store_spills_the_least_recently_used_and_restores_on_get() {
    let dir = TestDir::new();
    let spill = dir.path().join("spill");
    let plasma = spilling_store(&dir, 64 * MIB, &spill);
    let client = client(&plasma);
    // With its 4 bytes of metadata, each object takes exactly 8 MiB: eight fill the store.
    const OBJ: usize = 8 * MIB as usize - 4;
    let ids: Vec<ObjectId> = (0..10).map(|_| ObjectId::random()).collect();
    for (i, id) in ids.iter().take(8).enumerate() {
        put(&client, *id, i as u8, OBJ);
    }
    let stats = client.stats().unwrap();
    assert_eq!(
        (stats.evictions, stats.spilled_objects),
        (0, 0),
        "one budget"
    );
    // Touch 0 and pin 1: the LRU order becomes 2, 3, ..., 7, 0.
    drop(
        client
            .get_one(ids[0], Some(Duration::ZERO))
            .unwrap()
            .unwrap(),
    );
    let pinned = client
        .get_one(ids[1], Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    put(&client, ids[8], 8, OBJ);
    let stats = client.stats().unwrap();
    assert_eq!(
        (stats.spilled_objects, stats.spilled_bytes),
        (1, 8 * MIB),
        "the least recently used object went to disk"
    );
    assert_eq!(stats.evictions, 0);
    assert!(client.contains(ids[2]).unwrap(), "a spilled object stays");
    assert_eq!(
        std::fs::read_dir(&spill).unwrap().count(),
        0,
        "the spill file is unlinked"
    );
    // A get brings it back (spilling the next one).
    let back = client
        .get_one(ids[2], Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(back.data(), &pattern(2, OBJ)[..]);
    assert_eq!(back.metadata(), b"meta");
    let stats = client.stats().unwrap();
    assert_eq!(stats.spill_restored_bytes, 8 * MIB);
    assert_eq!(stats.spill_written_bytes, 16 * MIB);

    // Pin everything in memory: a create that does not fit fails, and the store keeps
    // serving.
    let held: Vec<_> = [0, 4, 5, 6, 7, 8]
        .iter()
        .map(|&i| {
            client
                .get_one(ids[i], Some(Duration::ZERO))
                .unwrap()
                .unwrap()
        })
        .collect();
    let err = client.create(ids[9], 8 * MIB, 0).unwrap_err();
    assert!(err.is_store_full(), "{err}");
    assert!(matches!(
        client.create(ids[9], 200 * MIB, 0),
        Err(ClientError::TooLarge(_))
    ));
    assert_eq!(pinned.data(), &pattern(1, OBJ)[..]);
    drop((held, back));
    put(&client, ids[9], 9, OBJ);
    // Every object reads back, from memory or disk.
    drop(pinned);
    for (i, id) in ids.iter().enumerate() {
        let buffer = client.get_one(*id, Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!(buffer.data(), &pattern(i as u8, OBJ)[..], "object {i}");
    }
}

#[test]
fn a_spilled_object_is_restored_for_a_pull() {
    let dir = TestDir::new();
    let a = spilling_store(&dir, 64 * MIB, &dir.path().join("spill"));
    let b = Plasma::start(dir.path(), "plasma-b", 64 * MIB, &[]);
    let (client_a, client_b) = (client(&a), client(&b));
    const OBJ: usize = 8 * MIB as usize - 4;
    let ids: Vec<ObjectId> = (0..9).map(|_| ObjectId::random()).collect();
    for (i, id) in ids.iter().enumerate() {
        put(&client_a, *id, i as u8, OBJ);
    }
    assert_eq!(
        client_a.stats().unwrap().spilled_objects,
        1,
        "the first spilled"
    );
    client_b.pull(ids[0], &a.object_manager_address()).unwrap();
    let copy = client_b.get_one(ids[0], None).unwrap().unwrap();
    assert!(
        copy.data() == &pattern(0, OBJ)[..],
        "the pulled bytes differ"
    );
    assert_eq!(client_a.stats().unwrap().spill_restored_bytes, 8 * MIB);
}

#[test]
fn an_object_of_most_of_the_store_fits_an_empty_store() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 200 * MIB, &[]);
    let client = client(&plasma);
    let id = ObjectId::random();
    put(&client, id, 3, 160 * MIB as usize);
    let buffer = client.get_one(id, Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(buffer.data(), &pattern(3, 160 * MIB as usize)[..]);
    let stats = client.stats().unwrap();
    assert_eq!((stats.evictions, stats.spilled_objects), (0, 0));
}

#[test]
fn small_objects_fill_the_default_store_without_leaving_it() {
    let dir = TestDir::new();
    // 0: the default share of the RAM (30%).
    let plasma = Plasma::start(dir.path(), "plasma", 0, &[]);
    let client = client(&plasma);
    let capacity = client.stats().unwrap().capacity_bytes;
    assert!(capacity > 1300 * MIB, "this test wants a store over 1.2 GB");
    let chunk = pattern(0, MIB as usize);
    let ids: Vec<ObjectId> = (0..1200).map(|_| put_id()).collect();
    for id in &ids {
        drop(client.put(*id, &chunk, b"").expect("put"));
    }
    let stats = client.stats().unwrap();
    assert_eq!(
        (stats.evictions, stats.spilled_objects),
        (0, 0),
        "1.2 GB of 1 MiB objects stay in memory"
    );
    assert!(stats.used_bytes >= 1200 * MIB);
    for id in ids.iter().step_by(97) {
        let buffer = client.get_one(*id, Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!(buffer.data(), &chunk[..]);
    }
}

/// Mounts a tmpfs of `size` at `path` for the test's life (needs root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| Self(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_producer_naming_both_limits() {
    let dir = TestDir::new();
    let spill = dir.path().join("spill");
    let Some(_tmpfs) = Tmpfs::mount(&spill, "20m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let mut plasma = spilling_store(&dir, 64 * MIB, &spill);
    let client = client(&plasma);
    const OBJ: usize = 8 * MIB as usize;
    let mut ids = Vec::new();
    let err = loop {
        let id = put_id();
        match client.put(id, &pattern(ids.len() as u8, OBJ), b"") {
            Ok(buffer) => drop(buffer),
            Err(e) => break e,
        }
        ids.push(id);
        assert!(ids.len() < 100, "the store never filled");
    };
    assert!(err.is_store_full(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("object_store_memory (67108864 bytes)"),
        "{message}"
    );
    assert!(
        message.contains(&format!("the spill directory {} is full", spill.display())),
        "{message}"
    );
    // 64 MiB in memory and 16 of the 20 MiB on disk (a third object does not fit).
    assert_eq!(ids.len(), 10);
    let stats = client.stats().unwrap();
    assert_eq!((stats.spilled_objects, stats.evictions), (2, 0));
    for (i, id) in ids.iter().enumerate() {
        let buffer = client.get_one(*id, Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!(
            buffer.data(),
            &pattern(i as u8, OBJ)[..],
            "put {i} is intact"
        );
    }
    drop(client);
    plasma.daemon.stop();
}

#[test]
fn a_client_killed_mid_create_leaves_nothing_behind() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let client = client(&plasma);
    let kept = ObjectId::random();
    put(&client, kept, 5, 1000);
    let before = client.stats().unwrap();
    let (large, small) = (ObjectId::random(), ObjectId::random());
    let mut creator = child("creator", &plasma.socket, &[kept, large, small]);
    assert_eq!(child_says(&mut creator), "ready");
    // The leased object reaches the store with a message that gets no reply, which
    // another connection's request may overtake.
    wait_for("the store to hear of the child's objects", WAIT, || {
        (client.stats().unwrap().objects == 3).then_some(())
    });
    creator.kill().unwrap();
    creator.wait().unwrap();

    wait_for(
        "the store to reclaim the dead client's memory",
        WAIT,
        || {
            let stats = client.stats().unwrap();
            (stats.clients == 1 && stats.objects == 2).then_some(stats)
        },
    );
    // The sealed small object stays, unpinned; once it goes, so does its lease.
    assert_eq!(client.delete(&[small]).unwrap().deleted, vec![small]);
    let after = client.stats().unwrap();
    assert_eq!(after.used_bytes, before.used_bytes, "{after:?}");
    assert_eq!(
        after.arena_used_bytes, before.arena_used_bytes,
        "the dead client's lease went back to the arena: {after:?}"
    );
    let listing = client.list().unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(
        (listing[0].id, listing[0].pins),
        (kept, 0),
        "the pin went with the client"
    );
    // The IDs are free again and the store serves as before.
    put(&client, large, 6, 20 * MIB as usize);
    put(&client, small, 7, 100);
    assert!(client.contains(large).unwrap());
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends raw bytes and returns everything the store answers until it closes or goes
/// quiet.
fn raw_exchange(socket: &Path, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => return (answer, false),
        }
    }
}

fn decode_replies(mut answer: &[u8]) -> Vec<rayd_common::proto::plasma::v1::Reply> {
    use prost::Message;
    let mut replies = Vec::new();
    while answer.len() >= 4 {
        let len = u32::from_le_bytes(answer[..4].try_into().unwrap()) as usize;
        replies.push(rayd_common::proto::plasma::v1::Reply::decode(&answer[4..4 + len]).unwrap());
        answer = &answer[4 + len..];
    }
    replies
}

fn decode_error(answer: &[u8]) -> rayd_common::proto::plasma::v1::Error {
    use prost::Message;
    assert!(answer.len() >= 4, "no reply");
    let len = u32::from_le_bytes(answer[..4].try_into().unwrap()) as usize;
    let reply = rayd_common::proto::plasma::v1::Reply::decode(&answer[4..4 + len]).unwrap();
    match reply.kind {
        Some(rayd_common::proto::plasma::v1::reply::Kind::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_an_error_for_that_client_only() {
    use prost::Message;
    use rayd_common::proto::plasma::v1 as pb;
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let good = client(&plasma);
    let id = ObjectId::random();
    put(&good, id, 1, 500);

    // An absurd frame length: an error, then the connection closes.
    let (answer, closed) = raw_exchange(&plasma.socket, &u32::MAX.to_le_bytes());
    assert!(
        decode_error(&answer).message.contains("exceeds"),
        "{answer:?}"
    );
    assert!(closed);
    // Bytes that are no protobuf: the same.
    let (answer, closed) = raw_exchange(&plasma.socket, &frame(&[0xff; 7]));
    assert_eq!(
        decode_error(&answer).code,
        pb::error::Code::InvalidRequest as i32
    );
    assert!(closed);
    // A request before connect, and a malformed ID: errors, but the connection lives.
    let create = pb::Request {
        kind: Some(pb::request::Kind::Create(pb::Create {
            object_id: vec![1, 2, 3],
            data_size: 10,
            metadata_size: 0,
        })),
    };
    let (answer, closed) = raw_exchange(&plasma.socket, &frame(&create.encode_to_vec()));
    assert!(decode_error(&answer).message.contains("connect"));
    assert!(!closed, "a refused request does not close the connection");

    // Requests that get no reply (puts into a lease) are refused in the log only: the
    // reply that follows belongs to the next request.
    let connect = pb::Request {
        kind: Some(pb::request::Kind::Connect(pb::Connect {
            client_name: "raw".into(),
        })),
    };
    let outside = pb::Request {
        kind: Some(pb::request::Kind::Put(pb::Put {
            object_id: id.as_bytes().to_vec(),
            data_size: 100,
            metadata_size: 0,
            bytes: vec![0; 100],
            leased: true,
            offset: 0,
        })),
    };
    let short = pb::Request {
        kind: Some(pb::request::Kind::Put(pb::Put {
            object_id: ObjectId::random().as_bytes().to_vec(),
            data_size: 10,
            metadata_size: 0,
            bytes: vec![1; 3],
            leased: true,
            offset: 4096,
        })),
    };
    let contains = pb::Request {
        kind: Some(pb::request::Kind::Contains(pb::Contains {
            object_id: id.as_bytes().to_vec(),
        })),
    };
    let mut bytes = Vec::new();
    for request in [connect, outside, short, contains] {
        bytes.extend(frame(&request.encode_to_vec()));
    }
    let (answer, _) = raw_exchange(&plasma.socket, &bytes);
    let replies = decode_replies(&answer);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(matches!(
        replies[1].kind,
        Some(pb::reply::Kind::Contains(pb::ContainsReply {
            sealed: true
        }))
    ));

    // Absurd sizes and unknown IDs through the library.
    let err = good
        .create(ObjectId::random(), u64::MAX / 2, u64::MAX / 2)
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    let err = good.create(ObjectId::random(), u64::MAX, 1).unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    let unknown = ObjectId::random();
    assert!(!good.contains(unknown).unwrap());
    assert_eq!(good.delete(&[unknown]).unwrap().not_found, vec![unknown]);
    assert!(good
        .get_one(unknown, Some(Duration::ZERO))
        .unwrap()
        .is_none());
    let err = good.pull(unknown, "127.0.0.1:1").unwrap_err();
    assert!(matches!(err, ClientError::TransferFailed(_)), "{err}");
    let err = good.create(id, 1 << 20, 0).unwrap_err();
    assert!(matches!(err, ClientError::ObjectExists(_)), "{err}");
    // A small object goes into the client's lease without a reply: the copy of an
    // existing ID stays the client's own, and everyone else keeps seeing the original.
    let mut copy = good.create(id, 500, 0).unwrap();
    copy.data_mut().fill(0xee);
    let copy = copy.seal().unwrap();
    assert_eq!(copy.data(), &[0xee; 500][..]);
    let other = client(&plasma);
    let original = other.get_one(id, None).unwrap().unwrap();
    assert_eq!(original.data(), &pattern(1, 500)[..]);
    drop((copy, original));

    // Everyone else is undisturbed.
    let buffer = good.get_one(id, None).unwrap().unwrap();
    assert_eq!(buffer.data(), &pattern(1, 500)[..]);
    let stats = good.stats().unwrap();
    assert_eq!(stats.objects, 1);
}

#[test]
fn small_objects_in_a_lease_keep_the_connection_in_step() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let client = client(&plasma);
    let id = ObjectId::random();
    let builder = client.create(id, 100, 0).unwrap();
    let err = client.create(id, 100, 0).unwrap_err();
    assert!(matches!(err, ClientError::ObjectExists(_)), "{err}");
    // Dropped unsealed: the store never heard of it. The calls after it get their replies.
    drop(builder);
    assert!(!client.contains(id).unwrap());
    let kept = ObjectId::random();
    put(&client, kept, 3, 100);
    assert!(client.contains(kept).unwrap(), "ordered after its seal");
    let listing = client.list().unwrap();
    assert_eq!(listing.len(), 1, "{listing:?}");
    assert_eq!((listing[0].id, listing[0].pins), (kept, 0));
}

#[test]
fn clients_beyond_the_leases_create_small_objects_the_usual_way() {
    let dir = TestDir::new();
    // A 16 MiB arena: leases of 256 KiB, a quarter of the arena at most (16 of them).
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let clients: Vec<PlasmaClient> = (0..20).map(|_| client(&plasma)).collect();
    let ids: Vec<ObjectId> = (0..20).map(|_| ObjectId::random()).collect();
    let held: Vec<_> = clients
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (c, id))| c.put(*id, &pattern(i as u8, 100), b"").unwrap())
        .collect();
    let stats = clients[0].stats().unwrap();
    assert!(
        stats.arena_used_bytes <= stats.arena_bytes / 4 + 4 * 128,
        "leases stay within a quarter of the arena: {stats:?}"
    );
    let reader = client(&plasma);
    for (i, id) in ids.iter().enumerate() {
        let buffer = reader.get_one(*id, None).unwrap().unwrap();
        assert_eq!(buffer.data(), &pattern(i as u8, 100)[..]);
    }
    drop(held);
}

#[test]
fn subscribers_hear_seals_and_deletes() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let mut events = Subscription::connect(&plasma.socket).unwrap();
    let client = client(&plasma);
    let id = ObjectId::random();
    put(&client, id, 1, 10);
    client.delete(&[id]).unwrap();
    let sealed = events.next(Some(WAIT)).unwrap().expect("a sealed event");
    assert_eq!(
        (sealed.kind, sealed.id, sealed.data_size),
        (EventKind::Sealed, id, 10)
    );
    let deleted = events.next(Some(WAIT)).unwrap().expect("a deleted event");
    assert_eq!((deleted.kind, deleted.id), (EventKind::Deleted, id));
}

#[test]
fn an_object_moves_between_nodes_and_the_gcs_lists_both() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 1, &[]);
    let (node_a, node_b) = (NodeId::random(), NodeId::random());
    let address = gcs.address();
    let (hex_a, hex_b) = (node_a.hex(), node_b.hex());
    let a = Plasma::start(
        dir.path(),
        "plasma-a",
        512 * MIB,
        &["--redis-address", &address, "--node-id", &hex_a],
    );
    let b = Plasma::start(
        dir.path(),
        "plasma-b",
        512 * MIB,
        &["--redis-address", &address, "--node-id", &hex_b],
    );
    let (client_a, client_b) = (client(&a), client(&b));
    assert_eq!(client_a.node_id(), node_a);
    let id = ObjectId::random();
    let size = 200_000_000usize;
    let data = pattern(42, size);
    drop(client_a.put(id, &data, b"meta").unwrap());

    client_b.pull(id, &a.object_manager_address()).unwrap();
    let buffer = client_b.get_one(id, Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(buffer.data().len(), size);
    assert!(buffer.data() == &data[..], "the pulled bytes differ");
    assert_eq!(buffer.metadata(), b"meta");
    assert_eq!(client_b.stats().unwrap().pulls, 1);

    // Several transfers at once: three pullers of one object share one transfer, and
    // objects the source lacks are refused.
    let shared = ObjectId::random();
    put(&client_a, shared, 9, 30 * MIB as usize);
    let pullers: Vec<_> = (0..3)
        .map(|_| {
            let (socket, source) = (b.socket.clone(), a.object_manager_address());
            std::thread::spawn(move || {
                PlasmaClient::connect(&socket, "puller")
                    .unwrap()
                    .pull(shared, &source)
            })
        })
        .collect();
    for puller in pullers {
        puller.join().unwrap().unwrap();
    }
    let copy = client_b
        .get_one(shared, Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    assert!(copy.data() == &pattern(9, 30 * MIB as usize)[..]);
    assert_eq!(
        client_b.stats().unwrap().pulls,
        2,
        "one transfer for three pullers"
    );
    let err = client_b
        .pull(ObjectId::random(), &a.object_manager_address())
        .unwrap_err();
    assert!(matches!(err, ClientError::TransferFailed(_)), "{err}");
    drop(copy);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Ranges, as a puller that spreads a large object over several streams asks for
    // them: absolute offsets, the range alone, an offset past the end refused.
    use rayd_common::proto::objectmanager::v1 as om;
    let range = |offset: u64, length: u64| {
        runtime.block_on(async {
            let address = format!("http://{}", a.object_manager_address());
            let mut client = om::object_manager_client::ObjectManagerClient::connect(address)
                .await
                .unwrap()
                .max_decoding_message_size(64 << 20);
            let request = om::PullRequest {
                object_id: shared.as_bytes().to_vec(),
                chunk_size: 1 << 20,
                offset,
                length,
            };
            let mut stream = client.pull(request).await?.into_inner();
            let mut chunks = Vec::new();
            while let Some(chunk) = stream.message().await? {
                chunks.push((chunk.offset, chunk.payload.len()));
            }
            Ok::<_, tonic::Status>(chunks)
        })
    };
    let total = 30 * MIB + 4;
    assert_eq!(
        range(5 * MIB + 1, MIB + 10).unwrap(),
        vec![(5 * MIB + 1, MIB as usize), (6 * MIB + 1, 10)]
    );
    assert_eq!(
        range(total - 3, 100).unwrap(),
        vec![(total - 3, 3)],
        "a range past the end stops at it"
    );
    let err = range(total + 1, 0).unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");

    let gcs_client = runtime
        .block_on(rayd_gcs::GcsClient::connect(&address, None))
        .unwrap();
    let mut both = vec![node_a, node_b];
    both.sort();
    let info = wait_for("the object table to list both nodes", WAIT, || {
        let info = runtime.block_on(gcs_client.object_info(id)).ok()??;
        (info.locations == both).then_some(info)
    });
    assert_eq!(info.size, size as u64 + 4);

    // A delete on one node takes it off the table.
    drop(buffer);
    assert_eq!(client_b.delete(&[id]).unwrap().deleted, vec![id]);
    wait_for("the object table to drop node b", WAIT, || {
        let info = runtime.block_on(gcs_client.object_info(id)).ok()??;
        (info.locations == vec![node_a]).then_some(())
    });
    // A store that stops takes itself off the table.
    drop(client_a);
    let mut a = a;
    assert!(a.daemon.stop().success(), "a clean stop");
    wait_for("the object table to drop node a", WAIT, || {
        let info = runtime.block_on(gcs_client.object_info(id)).ok()?;
        info.is_none_or(|i| i.locations.is_empty()).then_some(())
    });
}

/// An object manager serving made-up chunks, through tonic's own encoder (which puts the
/// payload before the CRC, unlike the daemon's): what a pull does with what it gets.
mod fake_source {
    use std::collections::HashMap;
    use std::pin::Pin;

    use rayd_common::proto::objectmanager::v1 as om;
    use tonic::{Request, Response, Status};

    pub type Reply = Vec<Result<om::ObjectChunk, Status>>;

    pub struct Fake(pub HashMap<Vec<u8>, Reply>);

    #[tonic::async_trait]
    impl om::object_manager_server::ObjectManager for Fake {
        type PullStream =
            Pin<Box<dyn futures::Stream<Item = Result<om::ObjectChunk, Status>> + Send>>;

        /// The chunks of the object that start in the range asked for, and every error.
        async fn pull(
            &self,
            request: Request<om::PullRequest>,
        ) -> Result<Response<Self::PullStream>, Status> {
            let request = request.into_inner();
            let end = match request.length {
                0 => u64::MAX,
                n => request.offset + n,
            };
            let reply: Reply = self
                .0
                .get(&request.object_id)
                .ok_or_else(|| Status::not_found("no such object"))?
                .iter()
                .filter(|c| {
                    c.as_ref()
                        .map_or(true, |c| (request.offset..end).contains(&c.offset))
                })
                .cloned()
                .collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(reply))))
        }
    }

    pub fn chunk(sizes: (u64, u64), offset: u64, payload: &[u8]) -> om::ObjectChunk {
        om::ObjectChunk {
            data_size: sizes.0,
            metadata_size: sizes.1,
            offset,
            payload: payload.to_vec().into(),
            crc32c: crc32c::crc32c(payload),
        }
    }
}

#[test]
fn a_corrupt_source_fails_the_pull_and_leaves_nothing_behind() {
    use fake_source::{chunk, Fake};
    let dir = TestDir::new();
    let b = Plasma::start(dir.path(), "plasma-b", 64 * MIB, &[]);
    let client_b = client(&b);
    let bytes = pattern(3, 20);
    let mut bad_crc = chunk((20, 0), 0, &bytes);
    bad_crc.crc32c ^= 1;
    let mut cases: Vec<(ObjectId, fake_source::Reply, &str)> = vec![
        (ObjectId::random(), vec![Ok(bad_crc)], "checksum mismatch"),
        (
            ObjectId::random(),
            vec![Ok(chunk((20, 0), 0, &bytes[..10]))],
            "10 of the 20 bytes",
        ),
        (
            ObjectId::random(),
            vec![
                Ok(chunk((20, 0), 0, &bytes[..10])),
                Err(tonic::Status::data_loss("the disk is on fire")),
            ],
            "the disk is on fire",
        ),
        (
            ObjectId::random(),
            vec![Ok(chunk((20, 0), 5, &bytes[5..]))],
            "chunk at offset 5 where 0 was expected",
        ),
        (
            ObjectId::random(),
            vec![
                Ok(chunk((20, 0), 0, &bytes[..10])),
                Ok(chunk((30, 0), 10, &bytes[10..])),
            ],
            "the sizes changed",
        ),
        (
            ObjectId::random(),
            vec![Ok(chunk((20, 0), 0, b"")), Ok(chunk((20, 0), 0, b""))],
            "an empty chunk at offset 0",
        ),
    ];
    // Large objects (from PWRITE_MIN: written into the arena's file by a writer thread),
    // in chunks of 1 MiB: the pull asks for the first 4 on one stream and for the other 4
    // as two ranges, on streams of their own. Corrupt in the first range, or in another.
    let large = pattern(5, 8 * MIB as usize);
    let large_chunks: Vec<_> = large
        .chunks(MIB as usize)
        .enumerate()
        .map(|(i, piece)| Ok(chunk((8 * MIB, 0), i as u64 * MIB, piece)))
        .collect();
    for corrupt in [2, 6] {
        let mut chunks = large_chunks.clone();
        if let Ok(chunk) = &mut chunks[corrupt] {
            chunk.crc32c ^= 1;
        }
        cases.push((ObjectId::random(), chunks, "checksum mismatch"));
    }
    let good = ObjectId::random();
    let good_large = ObjectId::random();
    let mut replies: std::collections::HashMap<_, _> = cases
        .iter()
        .map(|(id, reply, _)| (id.as_bytes().to_vec(), reply.clone()))
        .collect();
    replies.insert(
        good.as_bytes().to_vec(),
        vec![
            Ok(chunk((16, 4), 0, &bytes[..12])),
            Ok(chunk((16, 4), 12, &bytes[12..])),
        ],
    );

    replies.insert(good_large.as_bytes().to_vec(), large_chunks);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let source = listener.local_addr().unwrap().to_string();
    let server = runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(rayd_common::proto::objectmanager::v1::object_manager_server::ObjectManagerServer::new(Fake(replies)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    for (id, _, reason) in &cases {
        let err = client_b.pull(*id, &source).unwrap_err();
        match &err {
            ClientError::TransferFailed(message) => {
                assert!(message.contains(reason), "{message:?} lacks {reason:?}")
            }
            other => panic!("{other}"),
        }
        // The listing shows unsealed objects too.
        let left: Vec<_> = client_b.list().unwrap().into_iter().map(|o| o.id).collect();
        assert!(!left.contains(id), "{id} was left behind");
    }
    client_b.pull(good, &source).unwrap();
    let object = client_b
        .get_one(good, Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(
        (object.data(), object.metadata()),
        (&bytes[..16], &bytes[16..])
    );
    client_b.pull(good_large, &source).unwrap();
    let object = client_b
        .get_one(good_large, Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    assert!(
        object.data() == &large[..],
        "the large object's bytes differ"
    );
    assert_eq!(client_b.stats().unwrap().pulls, 2);
    server.abort();
}

/// Run by hand (as root): `mkdir /tmp/hp; echo 256 > /proc/sys/vm/nr_hugepages; mount -t
/// hugetlbfs none /tmp/hp; RAYD_TEST_HUGETLBFS=/tmp/hp cargo test --test plasma -- --ignored`.
#[test]
#[ignore = "needs a hugetlbfs mount named by RAYD_TEST_HUGETLBFS"]
fn a_pull_lands_in_huge_pages() {
    let mount = std::env::var("RAYD_TEST_HUGETLBFS").expect("RAYD_TEST_HUGETLBFS");
    let dir = TestDir::new();
    let huge = ["--plasma-directory", mount.as_str(), "--huge-pages"];
    let a = Plasma::start(dir.path(), "plasma-a", 256 * MIB, &huge);
    let b = Plasma::start(dir.path(), "plasma-b", 256 * MIB, &huge);
    let (client_a, client_b) = (client(&a), client(&b));
    // Both land in the arena (hugetlbfs takes no pwrite: the large one too is written
    // through the daemon's mapping).
    for size in [10 * MIB as usize, 100 * MIB as usize] {
        let id = ObjectId::random();
        let data = pattern(7, size);
        drop(client_a.put(id, &data, b"meta").unwrap());
        client_b.pull(id, &a.object_manager_address()).unwrap();
        let copy = client_b.get_one(id, None).unwrap().unwrap();
        assert!(copy.data() == &data[..], "the pulled bytes differ");
    }
}

#[test]
fn the_async_client_does_what_the_blocking_one_does() {
    use rayd_plasma_client::AsyncPlasmaClient;
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = AsyncPlasmaClient::connect(plasma.socket.clone(), "async")
            .await
            .unwrap();
        let id = ObjectId::random();
        // A get that waits does not block the runtime: the put below runs meanwhile.
        let waiter = {
            let client = AsyncPlasmaClient::connect(plasma.socket.clone(), "waiter")
                .await
                .unwrap();
            tokio::spawn(async move { client.get(vec![id], Some(WAIT)).await })
        };
        let mut builder = client.create(id, 3, 1).await.unwrap();
        builder.data_mut().copy_from_slice(b"abc");
        builder.metadata_mut().copy_from_slice(b"m");
        let sealed = client.seal(builder).await.unwrap();
        assert_eq!(sealed.data(), b"abc");
        let got = waiter.await.unwrap().unwrap();
        let buffer = got[0].as_ref().expect("the waiter got the object");
        assert_eq!((buffer.data(), buffer.metadata()), (&b"abc"[..], &b"m"[..]));
        assert!(client.contains(id).await.unwrap());
        let stats = client.stats().await.unwrap();
        assert_eq!((stats.objects, stats.clients), (1, 2));
        let listing = client.list().await.unwrap();
        assert_eq!(listing[0].pins, 2);
    });
}

#[test]
fn a_client_that_stalls_inside_a_frame_is_dropped_and_costs_nothing() {
    use std::io::{Read, Write};
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 64 * MIB, &[]);
    // 200 clients, each promising a 1 MiB request and sending 10 bytes of it.
    let mut stalled: Vec<std::os::unix::net::UnixStream> = (0..200)
        .map(|_| {
            let mut stream =
                std::os::unix::net::UnixStream::connect(&plasma.socket).expect("connect");
            stream
                .write_all(&(1u32 << 20).to_le_bytes())
                .expect("announce");
            stream.write_all(&[0u8; 10]).expect("a little of it");
            stream
        })
        .collect();
    let good = client(&plasma);
    let id = ObjectId::random();
    put(&good, id, 2, 1000);
    // Each is closed once its frame waited 10 s for a byte.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for stream in &mut stalled {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled client is still connected: {other:?}"),
        }
    }
    assert!(plasma.daemon.log().contains("got no byte for"));
    assert_eq!(
        good.get_one(id, None).unwrap().unwrap().data(),
        &pattern(2, 1000)[..]
    );
}

/// Mappings in this process of `len` bytes of the store's memory files.
fn store_mappings_of(len: u64) -> usize {
    // A segment of several files shows as one line per file: its mappings are counted
    // by their bytes.
    let parts = rayd_plasma_client::parts::split(len, rayd_plasma_client::parts::count_for(len));
    let bytes: u64 = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.contains("rayd-plasma"))
        .map(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
            let start = u64::from_str_radix(start, 16).unwrap_or(0);
            let end = u64::from_str_radix(end, 16).unwrap_or(0);
            end - start
        })
        .filter(|size| parts.contains(size))
        .sum();
    (bytes / len) as usize
}

#[test]
fn a_retained_object_got_and_released_again_and_again_costs_the_store_no_message() {
    let dir = TestDir::new();
    let spill = dir.path().join("spill");
    let plasma = spilling_store(&dir, 64 * MIB, &spill);
    let reader = client(&plasma);
    let id = ObjectId::random();
    put(&reader, id, 7, 8 * MIB as usize);
    drop(reader.get_one(id, Some(Duration::ZERO)).unwrap().unwrap());
    // With the store stopped, messages would fill the socket (a few thousand of them)
    // and the loop would block: a get takes back the release still unsent instead (a
    // release and a `Reuse` go only every 100 ms).
    let store = nix::unistd::Pid::from_raw(plasma.daemon.pid() as i32);
    nix::sys::signal::kill(store, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = reader.clone();
    std::thread::spawn(move || {
        let mut last = Ok(None);
        for _ in 0..100_000 {
            last = getter
                .get_one(id, Some(Duration::ZERO))
                .map(|b| b.map(|b| b.data()[0]));
        }
        tx.send(last)
    });
    let done = rx.recv_timeout(Duration::from_secs(20));
    nix::sys::signal::kill(store, nix::sys::signal::Signal::SIGCONT).unwrap();
    let first = done
        .expect("the gets waited for the stopped store")
        .unwrap()
        .expect("the retained object");
    assert_eq!(first, pattern(7, 1)[0]);
    // The last release reaches the store: the retention thread sends it (asked by
    // another client, since a request of the reader's own would carry it).
    let other = client(&plasma);
    wait_for("the last release", WAIT, || {
        (other
            .list()
            .unwrap()
            .iter()
            .any(|o| o.id == id && o.pins == 0))
        .then_some(())
    });
}

#[test]
fn a_large_object_read_again_is_served_without_the_store_until_it_leaves_memory() {
    let dir = TestDir::new();
    let spill = dir.path().join("spill");
    let plasma = spilling_store(&dir, 64 * MIB, &spill);
    let reader = client(&plasma);
    let writer = client(&plasma);
    // With its 4 bytes of metadata, each object takes exactly 8 MiB: eight fill the store.
    const OBJ: usize = 8 * MIB as usize - 4;
    let id = ObjectId::random();
    put(&writer, id, 1, OBJ);
    drop(reader.get_one(id, Some(Duration::ZERO)).unwrap().unwrap());
    wait_for("the reader's release", WAIT, || {
        (writer
            .list()
            .unwrap()
            .iter()
            .any(|o| o.id == id && o.pins == 0))
        .then_some(())
    });

    // Retained: a get again needs no answer from the store (stopped meanwhile)...
    let store = nix::unistd::Pid::from_raw(plasma.daemon.pid() as i32);
    nix::sys::signal::kill(store, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = reader.clone();
    std::thread::spawn(move || tx.send(getter.get_one(id, Some(Duration::ZERO))));
    let again = rx.recv_timeout(Duration::from_secs(5));
    nix::sys::signal::kill(store, nix::sys::signal::Signal::SIGCONT).unwrap();
    let again = again
        .expect("the get waited for the stopped store")
        .unwrap()
        .expect("the retained object");
    assert_eq!(again.data(), &pattern(1, OBJ)[..]);
    // ...and the store pins it again for the reader.
    wait_for("the reader's pin", WAIT, || {
        (writer
            .list()
            .unwrap()
            .iter()
            .any(|o| o.id == id && o.pins == 1))
        .then_some(())
    });
    drop(again);

    // Freed by another client: gone for the reader too, and unmapped by both clients,
    // which retained it, without asking them anything.
    assert_eq!(
        store_mappings_of(8 * MIB),
        2,
        "the reader's and the writer's"
    );
    // (Deferred when the reader's release is still on its way.)
    let report = writer.delete(&[id]).unwrap();
    assert_eq!([report.deleted, report.deferred].concat(), vec![id]);
    wait_for("the revoked mappings to go", WAIT, || {
        (store_mappings_of(8 * MIB) == 0).then_some(())
    });
    assert!(reader.get_one(id, Some(Duration::ZERO)).unwrap().is_none());

    // Spilled while retained: read again from disk, right.
    let ids: Vec<ObjectId> = (0..9).map(|_| ObjectId::random()).collect();
    put(&writer, ids[0], 0, OBJ);
    drop(
        reader
            .get_one(ids[0], Some(Duration::ZERO))
            .unwrap()
            .unwrap(),
    );
    // The release of a retained object waits for the next write: sent now, so that the
    // store may spill the object at once.
    reader.flush().unwrap();
    for (i, id) in ids.iter().enumerate().skip(1) {
        put(&writer, *id, i as u8, OBJ);
    }
    assert!(
        writer.stats().unwrap().spilled_objects >= 1,
        "the first went to disk"
    );
    let back = reader
        .get_one(ids[0], Some(Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(back.data(), &pattern(0, OBJ)[..]);
}

#[test]
fn a_quiet_delete_needs_no_reply_and_waits_for_the_readers() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 256 * MIB, &[]);
    let owner = client(&plasma);
    let reader = client(&plasma);
    let small = ObjectId::random();
    let large = ObjectId::random();
    let held = ObjectId::random();
    put(&owner, small, 0, 1000);
    put(&owner, large, 1, 6 * MIB as usize);
    put(&owner, held, 2, 6 * MIB as usize);
    let value = reader.get_one(held, Some(WAIT)).unwrap().unwrap();

    owner.delete_quietly(&[small, large, held, ObjectId::random()]);
    // The owner's next request gets its own reply: the deletes were answered by nothing.
    assert!(!owner.contains(small).unwrap());
    assert!(!owner.contains(large).unwrap());
    assert!(!owner.contains(held).unwrap(), "gone for new readers");
    let listing = owner.list().unwrap();
    assert_eq!(
        listing.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![held],
        "only the object a reader holds is left"
    );
    assert_eq!(value.data(), &pattern(2, 6 * MIB as usize)[..]);
    drop(value);
    reader.flush().unwrap();
    wait_for("the held object to go with its reader's pin", WAIT, || {
        let stats = owner.stats().unwrap();
        (stats.objects == 0 && stats.used_bytes == 0).then_some(())
    });
}

#[test]
fn a_get_of_an_object_freed_while_a_reader_holds_it_is_answered_as_freed_at_once() {
    let dir = TestDir::new();
    let plasma = Plasma::start(dir.path(), "plasma", 256 * MIB, &[]);
    let owner = client(&plasma);
    let reader = client(&plasma);
    let other = client(&plasma);
    let held = ObjectId::random();
    let kept = ObjectId::random();
    put(&owner, held, 1, 6 * MIB as usize);
    put(&owner, kept, 2, 1000);
    let value = reader.get_one(held, Some(WAIT)).unwrap().unwrap();
    owner.delete(&[held]).unwrap();

    // A get that waits for an absent object ends at once for the freed one, with the
    // others found as usual.
    let started = Instant::now();
    let got = other.get_or_freed(&[held, kept], Some(WAIT)).unwrap();
    assert!(
        started.elapsed() < WAIT / 2,
        "the get waited for the freed object"
    );
    assert_eq!(got.freed, vec![held]);
    assert!(got.objects[0].is_none(), "served to no one");
    assert_eq!(
        got.objects[1].as_ref().unwrap().data(),
        &pattern(2, 1000)[..]
    );
    // Once the reader lets go, the object is simply absent.
    assert_eq!(value.data(), &pattern(1, 6 * MIB as usize)[..]);
    drop(value);
    reader.flush().unwrap();
    wait_for("the freed object to go with its reader's pin", WAIT, || {
        let got = other.get_or_freed(&[held], Some(Duration::ZERO)).unwrap();
        (got.freed.is_empty() && got.objects[0].is_none()).then_some(())
    });
}
