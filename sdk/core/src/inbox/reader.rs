//! Who reads a driver's raylet socket: a thread that waits for objects reads it itself, a
//! background thread reads while none has for a while, and a waiter pokes that thread to
//! step aside.
//!
//! A waiter reading the socket means that a result wakes it directly, instead of waking a
//! reader thread that then wakes it (on a small VM each wakeup costs tens of microseconds,
//! a tenth of a call's round trip). While no waiter has read for [`Pace::idle`], the
//! background thread reads instead, so that warnings and output appear while the driver
//! does something else. Besides the socket, a reading waiter polls a doorbell, rung when
//! what it waits for arrives another way (sealed in the store).

use std::io::BufReader;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rayd_common::framing::{self, InputWaiter};
use rayd_common::proto::raylet::v1 as pb;

use super::doorbell::Doorbell;

/// Messages read in one go, before the reader looks at its own business again.
const BATCH: usize = 256;

/// Where the messages read go.
pub(super) trait Deliver {
    /// Handles one message; false when the raylet says the connection ends.
    fn deliver(&self, message: pb::ServerMessage) -> bool;
    /// Wakes every waiter to look again: the reader changed hands, or the connection ended.
    fn wake_all(&self);
}

/// The reader's timing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    /// How long after the last waiter's read the background thread takes over.
    pub idle: Duration,
    /// The longest a waiter reads the socket before looking at its objects again.
    pub read_slice: Duration,
}

impl Pace {
    pub const DEFAULT: Self = Self {
        idle: Duration::from_millis(20),
        read_slice: Duration::from_millis(100),
    };
}

/// The reading side of a driver's raylet connection.
#[derive(Debug)]
pub(super) struct RayletReader {
    reader: Mutex<BufReader<InputWaiter>>,
    socket: UnixStream,
    /// Rung by a waiter to make the background thread let go of the reader.
    poke: Doorbell,
    /// Rung when an object a waiter wants arrives by another way (sealed in the store),
    /// so that a waiter reading the socket looks again.
    doorbell: Doorbell,
    /// Whether the background thread holds the reader.
    background_reads: AtomicBool,
    /// When a waiter last read (milliseconds since `started`).
    last_waiter_read: AtomicU64,
    started: Instant,
    closed: AtomicBool,
    pace: Pace,
}

fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, poll_timeout(timeout)), Ok(n) if n > 0)
}

fn poll_timeout(timeout: Duration) -> PollTimeout {
    PollTimeout::from(u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX))
}

impl RayletReader {
    /// Reads from `reader` (a clone of `socket`'s connection).
    pub fn new(
        reader: BufReader<InputWaiter>,
        socket: UnixStream,
        pace: Pace,
    ) -> std::io::Result<Self> {
        Ok(Self {
            reader: Mutex::new(reader),
            socket,
            poke: Doorbell::new()?,
            doorbell: Doorbell::new()?,
            background_reads: AtomicBool::new(false),
            last_waiter_read: AtomicU64::new(0),
            started: Instant::now(),
            closed: AtomicBool::new(false),
            pace,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn read_slice(&self) -> Duration {
        self.pace.read_slice
    }

    /// Whether the raylet connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes a waiter that reads the socket look at its objects again.
    pub fn ring(&self) {
        self.doorbell.ring();
    }

    /// Reads and delivers what is there, waiting up to `timeout` for the first message
    /// (or for [`Self::ring`]). False when another thread reads (then its deliveries wake
    /// the caller's wait).
    pub fn read_as_waiter(&self, to: &impl Deliver, timeout: Duration) -> bool {
        if self.is_closed() {
            return false;
        }
        let Ok(mut reader) = self.reader.try_lock() else {
            if self.background_reads.load(Ordering::Acquire) {
                self.poke.ring();
            }
            return false;
        };
        self.last_waiter_read
            .store(self.now_ms(), Ordering::Release);
        if reader.buffer().is_empty() {
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.doorbell.fd(), PollFlags::POLLIN),
            ];
            if poll(&mut fds, poll_timeout(timeout)).is_err() {
                return true;
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                self.doorbell.silence();
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                return true;
            }
        }
        self.read_available(&mut reader, to);
        true
    }

    /// Reads the messages that are there; the caller saw the socket readable (or bytes
    /// buffered), so the first read does not wait.
    fn read_available(&self, reader: &mut BufReader<InputWaiter>, to: &impl Deliver) {
        // A stream of messages (workers' output) must not keep a waiter from its objects.
        for _ in 0..BATCH {
            match framing::read_message::<pb::ServerMessage>(reader) {
                Ok(Some(message)) => {
                    if !to.deliver(message) {
                        self.close(to);
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    self.close(to);
                    return;
                }
            }
            if reader.buffer().is_empty() && !readable(self.socket.as_fd(), Duration::ZERO) {
                return;
            }
        }
    }

    fn close(&self, to: &impl Deliver) {
        self.closed.store(true, Ordering::Release);
        to.wake_all();
    }

    /// Ends [`Self::read_in_background`] (the inbox is dropped).
    pub fn stop(&self) {
        self.closed.store(true, Ordering::Release);
        self.poke.ring();
    }

    /// The background reader: reads while no waiter has for [`Pace::idle`], and steps
    /// aside when poked. Returns once the connection ends.
    pub fn read_in_background(&self, to: &impl Deliver) {
        let idle_ms = self.pace.idle.as_millis() as u64;
        while !self.is_closed() {
            std::thread::sleep(self.pace.idle);
            let idle = self
                .now_ms()
                .saturating_sub(self.last_waiter_read.load(Ordering::Acquire));
            if idle < idle_ms {
                continue;
            }
            let Ok(mut reader) = self.reader.try_lock() else {
                continue;
            };
            self.background_reads.store(true, Ordering::Release);
            while !self.is_closed() {
                if !reader.buffer().is_empty() {
                    self.read_available(&mut reader, to);
                    continue;
                }
                let mut fds = [
                    PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.poke.fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let poked = fds[1].revents().is_some_and(|r| !r.is_empty());
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    self.read_available(&mut reader, to);
                }
                if poked {
                    self.poke.silence();
                    // Counts as a waiter's read: the waiter takes over now.
                    self.last_waiter_read
                        .store(self.now_ms(), Ordering::Release);
                    break;
                }
            }
            self.background_reads.store(false, Ordering::Release);
            drop(reader);
            to.wake_all();
        }
    }
}
