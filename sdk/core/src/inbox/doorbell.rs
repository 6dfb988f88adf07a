//! A doorbell: a pair of connected non-blocking sockets, one rung by any thread, the other
//! watched with `poll` beside the socket a thread reads.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

#[derive(Debug)]
pub(super) struct Doorbell {
    button: UnixStream,
    bell: UnixStream,
}

impl Doorbell {
    pub fn new() -> std::io::Result<Self> {
        let (button, bell) = UnixStream::pair()?;
        button.set_nonblocking(true)?;
        bell.set_nonblocking(true)?;
        Ok(Self { button, bell })
    }

    /// Rings. One byte is enough (a full bell already holds one): the listener only checks
    /// that it rang.
    pub fn ring(&self) {
        let _ = (&self.button).write(&[1]);
    }

    /// What to poll for input.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// Empties the bell.
    pub fn silence(&self) {
        let mut bytes = [0u8; 64];
        while (&self.bell).read(&mut bytes).is_ok_and(|n| n > 0) {}
    }
}
