//! A driver's messages from its raylet (small results, warnings, the workers' output),
//! read by whichever thread needs them.
//!
//! A thread that waits for objects reads the socket itself: the result wakes it directly,
//! instead of waking a reader thread that then wakes it (on a small VM each wakeup costs
//! tens of microseconds, a tenth of a call's round trip). While no thread has waited for
//! [`IDLE`], a background thread reads instead, so that warnings and output appear while
//! the driver does something else; a waiter that finds it reading pokes it to step aside.

use std::io::BufReader;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rayd_common::framing::{self, InputWaiter};
use rayd_common::proto::raylet::v1 as pb;

use crate::arrivals::Arrivals;

/// Messages read in one go, before the reader looks at its own business again.
const BATCH: usize = 256;

/// How long after the last waiter's read the background thread takes over.
pub const IDLE: Duration = Duration::from_millis(20);

/// The reading side of a driver's raylet connection.
#[derive(Debug)]
pub(crate) struct Inbox {
    reader: Mutex<BufReader<InputWaiter>>,
    socket: UnixStream,
    /// Written by a waiter to make the background thread let go of the reader.
    poke: (UnixStream, UnixStream),
    /// Written when an object a waiter wants arrives by another way (sealed in the
    /// store), so that a waiter reading the socket looks again.
    reader_poke: (UnixStream, UnixStream),
    /// Whether the background thread holds the reader.
    background_reads: AtomicBool,
    /// When a waiter last read (milliseconds since `started`).
    last_waiter_read: AtomicU64,
    started: Instant,
    closed: AtomicBool,
    /// Weak: the arrivals hold the inbox.
    arrivals: OnceLock<Weak<Arrivals>>,
}

/// What a message from the raylet asks of the driver.
fn dispatch(arrivals: &Arrivals, message: pb::ServerMessage) -> bool {
    match message.kind {
        Some(pb::server_message::Kind::ObjectsReady(ready)) => {
            arrivals.insert_inline(ready.objects)
        }
        Some(pb::server_message::Kind::Warning(w)) => eprintln!("rayd warning: {}", w.message),
        Some(pb::server_message::Kind::WorkerOutput(out)) => {
            if out.stderr {
                eprintln!("(pid={}) {}", out.pid, out.line);
            } else {
                println!("(pid={}) {}", out.pid, out.line);
            }
        }
        // The node stops (ray.shutdown() stopping it, or rayd stop): a call made after
        // this fails with the connection's error.
        Some(pb::server_message::Kind::Exit(_)) => return false,
        _ => {}
    }
    true
}

/// A non-blocking pair of connected sockets, used as a doorbell.
fn pipe() -> std::io::Result<(UnixStream, UnixStream)> {
    let pair = UnixStream::pair()?;
    pair.0.set_nonblocking(true)?;
    pair.1.set_nonblocking(true)?;
    Ok(pair)
}

/// Empties a doorbell.
fn drain(mut bell: &UnixStream) {
    let mut bytes = [0u8; 64];
    while std::io::Read::read(&mut bell, &mut bytes).is_ok_and(|n| n > 0) {}
}

fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(n) if n > 0)
}

impl Inbox {
    /// Takes over `reader` (a clone of `socket`'s connection); `arrivals` receives the
    /// small results.
    pub fn start(
        reader: BufReader<InputWaiter>,
        socket: UnixStream,
        arrivals: Arc<Arrivals>,
    ) -> std::io::Result<Arc<Self>> {
        let (poke, reader_poke) = (pipe()?, pipe()?);
        let inbox = Arc::new(Self {
            reader: Mutex::new(reader),
            socket,
            poke,
            reader_poke,
            background_reads: AtomicBool::new(false),
            last_waiter_read: AtomicU64::new(0),
            started: Instant::now(),
            closed: AtomicBool::new(false),
            arrivals: OnceLock::new(),
        });
        let _ = inbox.arrivals.set(Arc::downgrade(&arrivals));
        arrivals.set_inbox(Arc::clone(&inbox));
        let background = Arc::clone(&inbox);
        std::thread::Builder::new()
            .name("rayd-raylet-messages".into())
            .spawn(move || background.read_in_background())?;
        Ok(inbox)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the raylet connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes a waiter that reads the socket look at its objects again.
    pub fn wake_reader(&self) {
        let _ = std::io::Write::write(&mut &self.reader_poke.0, &[1]);
    }

    /// Reads and dispatches what is there, waiting up to `timeout` for the first message
    /// (or for [`Self::wake_reader`]). False when another thread reads (then its
    /// dispatches wake the caller's wait).
    pub fn read_as_waiter(&self, timeout: Duration) -> bool {
        if self.is_closed() {
            return false;
        }
        let Ok(mut reader) = self.reader.try_lock() else {
            if self.background_reads.load(Ordering::Acquire) {
                // One byte is enough (a full pipe already holds one): the background
                // thread only checks that it came.
                let _ = std::io::Write::write(&mut &self.poke.0, &[1]);
            }
            return false;
        };
        self.last_waiter_read
            .store(self.now_ms(), Ordering::Release);
        if reader.buffer().is_empty() {
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.reader_poke.1.as_fd(), PollFlags::POLLIN),
            ];
            let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            if poll(&mut fds, PollTimeout::from(millis)).is_err() {
                return true;
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                drain(&self.reader_poke.1);
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                return true;
            }
        }
        self.read_available(&mut reader);
        true
    }

    /// Reads the messages that are there; the caller saw the socket readable (or bytes
    /// buffered), so the first read does not wait.
    fn read_available(&self, reader: &mut BufReader<InputWaiter>) {
        let Some(arrivals) = self.arrivals.get().and_then(Weak::upgrade) else {
            self.closed.store(true, Ordering::Release);
            return;
        };
        // A stream of messages (workers' output) must not keep a waiter from its objects.
        for _ in 0..BATCH {
            match framing::read_message::<pb::ServerMessage>(reader) {
                Ok(Some(message)) => {
                    if !dispatch(&arrivals, message) {
                        self.close(&arrivals);
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    self.close(&arrivals);
                    return;
                }
            }
            if reader.buffer().is_empty() && !readable(self.socket.as_fd(), Duration::ZERO) {
                return;
            }
        }
    }

    fn close(&self, arrivals: &Arrivals) {
        self.closed.store(true, Ordering::Release);
        arrivals.wake_all();
    }

    /// The background reader: reads while no waiter has for [`IDLE`], and steps aside
    /// when poked.
    fn read_in_background(&self) {
        while !self.is_closed() {
            std::thread::sleep(IDLE);
            let idle = self
                .now_ms()
                .saturating_sub(self.last_waiter_read.load(Ordering::Acquire));
            if idle < IDLE.as_millis() as u64 {
                continue;
            }
            let Ok(mut reader) = self.reader.try_lock() else {
                continue;
            };
            self.background_reads.store(true, Ordering::Release);
            while !self.is_closed() {
                if !reader.buffer().is_empty() {
                    self.read_available(&mut reader);
                    continue;
                }
                let mut fds = [
                    PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.poke.1.as_fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let poked = fds[1].revents().is_some_and(|r| !r.is_empty());
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    self.read_available(&mut reader);
                }
                if poked {
                    drain(&self.poke.1);
                    // Counts as a waiter's read: the waiter takes over now.
                    self.last_waiter_read
                        .store(self.now_ms(), Ordering::Release);
                    break;
                }
            }
            self.background_reads.store(false, Ordering::Release);
            drop(reader);
            if let Some(arrivals) = self.arrivals.get().and_then(Weak::upgrade) {
                arrivals.wake_all();
            }
        }
    }
}
