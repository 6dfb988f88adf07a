//! What this process knows has arrived, and how it learns of it: objects sealed in the
//! local store (from the store's event stream) and small objects the raylet sent in
//! messages. `get` and `wait` block on one condition variable for both instead of polling;
//! in a driver, a waiting thread reads the raylet's messages itself ([`reader`]).
//!
//! One [`Inbox`] owns it all, shared with its threads (the store's events; a driver's
//! background reader) through one `Arc` that nothing inside points back to.

mod doorbell;
mod known;
mod reader;

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rayd_common::framing::InputWaiter;
use rayd_common::id::ObjectId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_plasma_client::{ClientError, Event, EventKind, Subscription};

use crate::object::Object;
use crate::CoreError;
use known::Known;
use reader::{Deliver, Pace, RayletReader};

/// Shows the raylet's messages that are not objects (warnings, the workers' output).
type Console = Box<dyn Fn(&pb::server_message::Kind) + Send + Sync>;

/// The objects that arrived, shared by the threads that learn of them and those that wait.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
}

struct Shared {
    known: Mutex<Known>,
    changed: Condvar,
    /// Whether a thread follows the store's events.
    following: AtomicBool,
    /// Drivers: the raylet's messages, read by the waiting thread itself.
    raylet: Option<RayletReader>,
    console: Console,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("known", &self.known)
            .field("following", &self.following)
            .field("raylet", &self.raylet)
            .finish_non_exhaustive()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            known: Mutex::default(),
            changed: Condvar::new(),
            following: AtomicBool::new(false),
            raylet: None,
            console: Box::new(print),
        }
    }
}

/// Prints a warning or a worker's line the way Ray does.
fn print(message: &pb::server_message::Kind) {
    match message {
        pb::server_message::Kind::Warning(w) => eprintln!("rayd warning: {}", w.message),
        pb::server_message::Kind::WorkerOutput(out) if out.stderr => {
            eprintln!("(pid={}) {}", out.pid, out.line)
        }
        pb::server_message::Kind::WorkerOutput(out) => println!("(pid={}) {}", out.pid, out.line),
        _ => {}
    }
}

impl Shared {
    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the waiters: those on the condition variable and one reading the socket.
    fn wake(&self) {
        self.changed.notify_all();
        if let Some(raylet) = &self.raylet {
            raylet.ring();
        }
    }

    /// Takes in one event of the stream of the store at `socket`; false once it ended.
    fn on_store_event(&self, socket: &Path, event: Result<Option<Event>, ClientError>) -> bool {
        let mut known = self.known();
        match event {
            Ok(Some(event)) if event.kind == EventKind::Sealed => {
                if known.seal_announced(event.id) {
                    known.wakeups += 1;
                    self.wake();
                }
                drop(known);
                crate::refs::arrived(&event.id, true);
                return true;
            }
            Ok(Some(event)) => known.delete(&event.id),
            Ok(None) => {}
            Err(_) => {
                known.store_closed = Some(socket.display().to_string());
                known.wakeups += 1;
                self.wake();
                return false;
            }
        }
        true
    }

    fn insert_inline(&self, objects: Vec<pb::InlineObject>) {
        // Results that hold puts of this process (see `crate::refs`); none most often.
        let ids: Vec<ObjectId> = if crate::refs::awaits_messages() {
            objects
                .iter()
                .filter_map(|o| ObjectId::from_slice(&o.object_id).ok())
                .collect()
        } else {
            Vec::new()
        };
        {
            let mut known = self.known();
            if known.insert_inline(objects) {
                known.wakeups += 1;
                self.changed.notify_all();
            }
        }
        crate::refs::arrived_all(&ids, false);
    }
}

impl Deliver for Shared {
    fn deliver(&self, message: pb::ServerMessage) -> bool {
        match message.kind {
            Some(pb::server_message::Kind::ObjectsReady(ready)) => {
                self.insert_inline(ready.objects)
            }
            // The node stops (ray.shutdown() stopping it, or rayd stop): waits end with
            // the connection's error.
            Some(pb::server_message::Kind::Exit(_)) => return false,
            Some(other) => (self.console)(&other),
            None => {}
        }
        true
    }

    fn wake_all(&self) {
        self.known().wakeups += 1;
        self.changed.notify_all();
    }
}

impl Inbox {
    /// Drivers: reads the raylet's messages from `reader` (a clone of `socket`'s
    /// connection), in waiting threads or, while none waits, in a background thread.
    pub fn reading_raylet(
        reader: BufReader<InputWaiter>,
        socket: UnixStream,
    ) -> std::io::Result<Self> {
        Self::with_raylet(reader, socket, Pace::DEFAULT, Box::new(print))
    }

    fn with_raylet(
        reader: BufReader<InputWaiter>,
        socket: UnixStream,
        pace: Pace,
        console: Console,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            raylet: Some(RayletReader::new(reader, socket, pace)?),
            console,
            ..Shared::default()
        });
        let background = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("rayd-raylet-messages".into())
            .spawn(move || {
                if let Some(raylet) = &background.raylet {
                    raylet.read_in_background(&*background);
                }
            })?;
        Ok(Self { shared })
    }

    /// Subscribes to the store at `socket` (once) and follows its events on a thread, so
    /// that whatever is sealed from now on is known here. True when this call started it:
    /// objects sealed before are known to the store only.
    pub fn follow_store(&self, socket: &Path) -> Result<bool, CoreError> {
        if self.shared.following.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut subscription = Subscription::connect(socket)?;
        if self.shared.following.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let shared = Arc::clone(&self.shared);
        let socket = socket.to_path_buf();
        std::thread::Builder::new()
            .name("rayd-sealed".into())
            .spawn(move || while shared.on_store_event(&socket, subscription.next(None)) {})
            .map_err(CoreError::Runtime)?;
        Ok(true)
    }

    /// Marks an object found sealed by asking the store directly (sealed before following).
    pub fn insert_sealed(&self, id: ObjectId) {
        self.shared.known().seal(id);
        crate::refs::arrived(&id, true);
    }

    /// Forgets objects this process removed from the store (`ray.internal.free`), and
    /// their seals the store's stream may still announce.
    pub fn forget(&self, ids: &[ObjectId]) {
        // Not following the store yet: the stream, once followed, announces only seals
        // made after it began, none of them stale (and no removal to end a wait for).
        let following = self.shared.following.load(Ordering::Acquire);
        let mut known = self.shared.known();
        for id in ids {
            known.free(*id, following);
        }
    }

    /// Objects freed (by this process or another) that stay in the store while a reader
    /// holds them: a `get` of one raises `ObjectFreedError` until the store removes it.
    pub fn freed_in_use(&self, ids: &[ObjectId]) {
        let metadata = crate::value::error_metadata(crate::value::ERROR_OBJECT_FREED);
        let mut known = self.shared.known();
        for id in ids {
            known.freed_in_use(
                *id,
                metadata.clone(),
                format!(
                    "object {id} was freed (ray.internal.free); a reader still holds it, and it \
                     is served to no one else"
                ),
            );
        }
    }

    /// Of `ids`, those this process deleted and that are not here again: a waiter asks
    /// the raylet for them again (see `Known::dropped_of`).
    pub fn dropped_of(&self, ids: &[ObjectId]) -> Vec<ObjectId> {
        self.shared.known().dropped_of(ids)
    }

    /// Undoes [`Self::forget`] for `ids`, whose removal the store will not announce (it
    /// did not have them, or the delete failed).
    pub fn unforget(&self, ids: &[ObjectId]) {
        let mut known = self.shared.known();
        for id in ids {
            known.unfree(id);
        }
    }

    /// Records small objects the raylet sent, and wakes whoever waits.
    pub fn insert_inline(&self, objects: Vec<pb::InlineObject>) {
        self.shared.insert_inline(objects);
    }

    /// Notes results the raylet will send without being asked.
    pub fn expect(&self, ids: &[ObjectId]) {
        self.shared.known().expect(ids);
    }

    /// Fills the empty slots of `found` with the small objects that arrived, and returns
    /// the indices of the others that the store may have: all of them when `ask_all`.
    pub fn take_inline(
        &self,
        ids: &[ObjectId],
        found: &mut [Option<Object>],
        ask_all: bool,
    ) -> Vec<usize> {
        let known = self.shared.known();
        let following = self.shared.following.load(Ordering::Acquire) && !ask_all;
        known.take_inline(ids, found, following)
    }

    /// Of `ids`, those that are neither here nor on their way unasked: what to fetch.
    pub fn to_fetch(&self, ids: &[ObjectId]) -> Vec<ObjectId> {
        self.shared.known().to_fetch(ids)
    }

    /// Waits until at least `wanted` of `ids` arrived or `timeout` passes; returns which did.
    /// A driver's wait ends with an error once the raylet connection has ended, and any
    /// wait not yet satisfied once the store's event stream has (nothing would wake it).
    ///
    /// Waiting for all of them costs one pass over `ids` in all: a cursor moves past those
    /// that arrived, and only the arrival of the one at the cursor wakes the waiter.
    pub fn wait(
        &self,
        ids: &[ObjectId],
        wanted: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, CoreError> {
        let shared = &*self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        let all = wanted >= ids.len();
        let mut cursor = 0;
        let mut guard = shared.known();
        loop {
            if all {
                while cursor < ids.len() && guard.ready(&ids[cursor]) {
                    cursor += 1;
                }
                if cursor == ids.len() {
                    break;
                }
            } else if ids.iter().filter(|id| guard.ready(id)).count() >= wanted {
                break;
            }
            if let Some(socket) = &guard.store_closed {
                return Err(CoreError::StoreClosed {
                    socket: socket.clone(),
                });
            }
            if shared.raylet.as_ref().is_some_and(RayletReader::is_closed) {
                return Err(CoreError::RayletClosed);
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => Duration::from_secs(3600),
            };
            let watched = all.then(|| ids[cursor]);
            guard.watch(watched);
            let mut read = false;
            let mut woken = false;
            if let Some(raylet) = &shared.raylet {
                let wakeups = guard.wakeups;
                drop(guard);
                read = raylet.read_as_waiter(shared, remaining.min(raylet.read_slice()));
                guard = shared.known();
                woken = guard.wakeups != wakeups;
            }
            if !read && !woken {
                guard = shared
                    .changed
                    .wait_timeout(guard, remaining)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            guard.unwatch(watched);
            // Others that wait may take over reading the socket now.
            if read && guard.waiters() {
                guard.wakeups += 1;
                shared.changed.notify_all();
            }
        }
        Ok(ids.iter().map(|id| guard.ready(id)).collect())
    }
}

impl Drop for Inbox {
    /// Ends the background reader.
    fn drop(&mut self) {
        if let Some(raylet) = &self.shared.raylet {
            raylet.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader hand-off, with the test playing the raylet at the other end of a socket
    //! pair. Timings that would otherwise end a read or a wait are an hour long, so that
    //! what ends one is what each test names.

    use std::io::Write;
    use std::sync::mpsc;

    use pb::server_message::Kind;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DEADLINE: Duration = Duration::from_secs(10);
    /// No background reader, and a waiter reads until something comes.
    const WAITERS_ONLY: Pace = Pace {
        idle: HOUR,
        read_slice: HOUR,
    };

    /// A driver's inbox on one end of a socket pair, with the raylet's end, and what its
    /// console showed: (the thread that read it, the line).
    struct Driver {
        inbox: Arc<Inbox>,
        raylet: UnixStream,
        shown: mpsc::Receiver<(String, String)>,
    }

    fn driver(pace: Pace) -> Driver {
        let (ours, raylet) = UnixStream::pair().expect("socket pair");
        let (show, shown) = mpsc::channel();
        let console: Console = Box::new(move |message| {
            let line = match message {
                Kind::Warning(w) => w.message.clone(),
                Kind::WorkerOutput(out) => out.line.clone(),
                other => format!("{other:?}"),
            };
            let thread = std::thread::current()
                .name()
                .unwrap_or_default()
                .to_string();
            let _ = show.send((thread, line));
        });
        let reader = BufReader::new(InputWaiter::new(ours.try_clone().expect("clone")));
        let inbox = Inbox::with_raylet(reader, ours, pace, console).expect("inbox");
        Driver {
            inbox: Arc::new(inbox),
            raylet,
            shown,
        }
    }

    /// Sends `messages` in one write, as the raylet's event loop would.
    fn send(mut raylet: &UnixStream, messages: Vec<Kind>) {
        let mut bytes = Vec::new();
        for kind in messages {
            let message = pb::ServerMessage { kind: Some(kind) };
            rayd_common::framing::write_message(&mut bytes, &message).expect("encode");
        }
        raylet.write_all(&bytes).expect("send");
    }

    fn ready(id: ObjectId) -> Kind {
        Kind::ObjectsReady(pb::ObjectsReady {
            objects: vec![pb::InlineObject {
                object_id: id.as_bytes().to_vec().into(),
                data: vec![1; 8].into(),
                metadata: b"PICKLE5".to_vec().into(),
            }],
        })
    }

    fn warning(message: &str) -> Kind {
        Kind::Warning(pb::Warning {
            message: message.into(),
        })
    }

    type Waited = Result<Vec<bool>, CoreError>;

    /// A thread named `name` that waits (an hour at most) for `id`.
    fn waiter(inbox: &Arc<Inbox>, name: &str, id: ObjectId) -> mpsc::Receiver<Waited> {
        let (done, result) = mpsc::channel();
        let inbox = Arc::clone(inbox);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = done.send(inbox.wait(&[id], 1, Some(HOUR)));
            })
            .expect("spawn");
        result
    }

    /// Waits until a waiter for `id` is registered (it then stays until `id` arrives).
    fn until_waited_for(inbox: &Inbox, id: ObjectId) {
        let end = Instant::now() + DEADLINE;
        while !inbox.shared.known().watched(&id) {
            assert!(Instant::now() < end, "no waiter for {id}");
            std::thread::yield_now();
        }
    }

    fn result(waiter: &mpsc::Receiver<Waited>) -> Waited {
        waiter.recv_timeout(DEADLINE).expect("the wait ended")
    }

    #[test]
    fn a_waiter_reads_its_result_itself() {
        let driver = driver(WAITERS_ONLY);
        let id = ObjectId::random();
        let waiting = waiter(&driver.inbox, "waiter", id);
        until_waited_for(&driver.inbox, id);
        send(&driver.raylet, vec![warning("result next"), ready(id)]);
        assert_eq!(result(&waiting).expect("no error"), vec![true]);
        let shown = driver.shown.recv_timeout(DEADLINE).expect("shown");
        assert_eq!(shown, ("waiter".into(), "result next".into()));
    }

    #[test]
    fn with_no_waiter_the_background_thread_reads_and_a_waiter_takes_over() {
        let driver = driver(Pace {
            idle: Duration::from_millis(20),
            read_slice: HOUR,
        });
        send(
            &driver.raylet,
            vec![Kind::WorkerOutput(pb::WorkerOutput {
                pid: 7,
                line: "hello".into(),
                stderr: false,
            })],
        );
        let shown = driver.shown.recv_timeout(DEADLINE).expect("shown");
        assert_eq!(shown, ("rayd-raylet-messages".into(), "hello".into()));

        // The background thread now reads until poked: a line read on the waiter's thread
        // shows that the waiter took over.
        let id = ObjectId::random();
        let waiting = waiter(&driver.inbox, "waiter", id);
        until_waited_for(&driver.inbox, id);
        let end = Instant::now() + DEADLINE;
        for probe in 0.. {
            assert!(Instant::now() < end, "the waiter never took over");
            let line = format!("probe {probe}");
            send(&driver.raylet, vec![warning(&line)]);
            let (thread, shown) = driver.shown.recv_timeout(DEADLINE).expect("shown");
            assert_eq!(shown, line);
            if thread == "waiter" {
                break;
            }
        }
        send(&driver.raylet, vec![ready(id)]);
        assert_eq!(result(&waiting).expect("no error"), vec![true]);
    }

    #[test]
    fn of_two_waiters_one_reads_and_the_other_is_woken_by_what_it_read() {
        let driver = driver(WAITERS_ONLY);
        let (a, b) = (ObjectId::random(), ObjectId::random());
        let waiting_a = waiter(&driver.inbox, "a", a);
        let waiting_b = waiter(&driver.inbox, "b", b);
        until_waited_for(&driver.inbox, a);
        until_waited_for(&driver.inbox, b);
        // One write: one thread reads all of it.
        send(&driver.raylet, vec![warning("both"), ready(a), ready(b)]);
        assert_eq!(result(&waiting_a).expect("no error"), vec![true]);
        assert_eq!(result(&waiting_b).expect("no error"), vec![true]);
        let (reader, line) = driver.shown.recv_timeout(DEADLINE).expect("shown");
        assert_eq!(line, "both");
        assert!(reader == "a" || reader == "b", "read by {reader}");
    }

    #[test]
    fn an_object_sealed_in_the_store_wakes_a_waiter_reading_the_socket() {
        let driver = driver(WAITERS_ONLY);
        let id = ObjectId::random();
        let waiting = waiter(&driver.inbox, "waiter", id);
        until_waited_for(&driver.inbox, id);
        let sealed = Event {
            kind: EventKind::Sealed,
            id,
            data_size: 1 << 20,
            metadata_size: 0,
        };
        assert!(driver
            .inbox
            .shared
            .on_store_event(Path::new("/tmp/plasma.sock"), Ok(Some(sealed))));
        assert_eq!(result(&waiting).expect("no error"), vec![true]);
    }

    #[test]
    fn the_raylet_closing_its_socket_ends_every_wait_with_an_error() {
        let Driver { inbox, raylet, .. } = driver(WAITERS_ONLY);
        let (a, b) = (ObjectId::random(), ObjectId::random());
        let waiting_a = waiter(&inbox, "a", a);
        let waiting_b = waiter(&inbox, "b", b);
        until_waited_for(&inbox, a);
        until_waited_for(&inbox, b);
        drop(raylet);
        assert!(matches!(result(&waiting_a), Err(CoreError::RayletClosed)));
        assert!(matches!(result(&waiting_b), Err(CoreError::RayletClosed)));
        // A wait that begins after the close ends at once.
        let later = inbox.wait(&[ObjectId::random()], 1, Some(HOUR));
        assert!(matches!(later, Err(CoreError::RayletClosed)));
    }

    #[test]
    fn the_raylet_saying_exit_ends_waits_with_an_error() {
        let driver = driver(WAITERS_ONLY);
        let id = ObjectId::random();
        let waiting = waiter(&driver.inbox, "waiter", id);
        until_waited_for(&driver.inbox, id);
        let exit = Kind::Exit(pb::Exit {
            reason: "node stopping".into(),
        });
        send(&driver.raylet, vec![exit]);
        assert!(matches!(result(&waiting), Err(CoreError::RayletClosed)));
    }

    #[test]
    fn small_objects_wake_a_waiter_without_a_raylet_reader() {
        let inbox = Arc::new(Inbox::default());
        let id = ObjectId::random();
        inbox.expect(&[id]);
        assert!(inbox.to_fetch(&[id]).is_empty());
        let waiting = waiter(&inbox, "waiter", id);
        until_waited_for(&inbox, id);
        let Kind::ObjectsReady(objects) = ready(id) else {
            unreachable!()
        };
        inbox.insert_inline(objects.objects);
        assert_eq!(result(&waiting).expect("no error"), vec![true]);
        let mut found = vec![None];
        assert!(inbox.take_inline(&[id], &mut found, false).is_empty());
        assert!(found[0].is_some());
    }

    #[test]
    fn a_wait_for_what_never_comes_ends_at_its_timeout() {
        let inbox = Inbox::default();
        let started = Instant::now();
        let ready = inbox.wait(&[ObjectId::random()], 1, Some(Duration::from_millis(50)));
        assert_eq!(ready.expect("no raylet to close"), vec![false]);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn the_store_closing_its_stream_ends_a_wait_with_an_error_naming_its_socket() {
        let inbox = Inbox::default();
        let (here, gone) = (ObjectId::random(), ObjectId::random());
        inbox.insert_sealed(here);
        let closed = Err(ClientError::Invalid("stream ended".into()));
        assert!(!inbox
            .shared
            .on_store_event(Path::new("/tmp/plasma.sock"), closed));
        // What arrived before still counts; what can no longer arrive is an error, at once.
        assert_eq!(
            inbox.wait(&[here], 1, Some(HOUR)).expect("ready"),
            vec![true]
        );
        let started = Instant::now();
        let error = inbox.wait(&[here, gone], 2, Some(HOUR)).unwrap_err();
        assert!(
            matches!(&error, CoreError::StoreClosed { socket } if socket == "/tmp/plasma.sock"),
            "{error}"
        );
        assert!(error.to_string().contains("/tmp/plasma.sock"));
        assert!(inbox.wait(&[gone], 1, None).is_err());
        assert!(started.elapsed() < DEADLINE);
    }

    #[test]
    fn a_freed_object_is_not_ready_though_its_seal_is_announced_late() {
        let inbox = Inbox::default();
        let id = ObjectId::random();
        let socket = Path::new("/tmp/plasma.sock");
        let event = |kind| {
            Ok(Some(Event {
                kind,
                id,
                data_size: 1,
                metadata_size: 0,
            }))
        };
        let ready = |inbox: &Inbox| inbox.wait(&[id], 1, Some(Duration::ZERO)).expect("wait");
        // Freed before the store's stream was followed: every seal it announces later is
        // newer than the free (the stream starts with what happens after it began).
        inbox.insert_sealed(id);
        inbox.forget(&[id]);
        assert_eq!(ready(&inbox), vec![false]);
        assert!(inbox
            .shared
            .on_store_event(socket, event(EventKind::Sealed)));
        assert_eq!(ready(&inbox), vec![true], "made again after the free");
        // Freed while followed: a seal announced until the removal is from before.
        inbox.shared.following.store(true, Ordering::Release);
        inbox.insert_sealed(id); // found in the store before its seal was announced
        inbox.forget(&[id]);
        assert_eq!(ready(&inbox), vec![false]);
        assert!(inbox
            .shared
            .on_store_event(socket, event(EventKind::Sealed)));
        assert_eq!(
            ready(&inbox),
            vec![false],
            "the seal is from before the free"
        );
        assert!(inbox
            .shared
            .on_store_event(socket, event(EventKind::Deleted)));
        // Made again (a task rebuilt it): its new seal counts.
        assert!(inbox
            .shared
            .on_store_event(socket, event(EventKind::Sealed)));
        assert_eq!(ready(&inbox), vec![true]);
    }
}
