//! Fresh memory prepared ahead of demand: one background thread allocates the pages of
//! the arena (`fallocate`) a granule at a time, up to a bound past the highest byte handed
//! out so far (see [`crate::store::Store::prefault_next`]), and makes the segments of
//! the pool ([`crate::pool`], [`crate::store::Store::pool_wanted`]), so that a create
//! rarely waits for the kernel to zero fresh pages. It runs at the lowest CPU priority
//! and without the store's lock, and sleeps until the store hands out more memory. It
//! prepares no segment while a client fills one ([`crate::store::Store::filling`]): the
//! store's process has a scheduling group of its own (autogroups), so its low priority
//! does not keep it from taking a core from the fill.

use std::sync::{Arc, Condvar, Mutex};

use std::os::fd::{AsFd, OwnedFd};

use crate::memory;
use crate::state::State;

/// Bytes of a pool segment prepared at a time: between two, the thread gives way to a
/// fill that started meanwhile.
const POOL_GRANULE: usize = 8 << 20;

/// A pool segment being prepared: its file, the size the pool asked for, its length,
/// and how many bytes of it are ready.
#[derive(Debug)]
struct Preparing {
    fd: OwnedFd,
    wanted: u64,
    len: usize,
    ready: usize,
}

/// Prepares the segments the pool wants, a granule at a time, until it wants no more,
/// the store is filling an object (the end of every fill wakes the thread again), or the
/// thread should stop.
fn prepare_pool(
    state: &State,
    preparing: &mut Option<Preparing>,
) -> Result<(), memory::MemoryError> {
    loop {
        if state.prefault.stopping() || state.with_store(|s| s.filling()) {
            return Ok(());
        }
        // Asked again each time: a segment half made before a pause is dropped when the
        // pool no longer wants its size (the budget lost the room, or other sizes came).
        let Some(wanted) = state.with_store(|s| s.pool_wanted()) else {
            *preparing = None;
            return Ok(());
        };
        let mut segment = match preparing.take() {
            Some(segment) if segment.wanted == wanted => segment,
            _ => {
                let (fd, len) = state.backing.create_resizable(wanted as usize, false)?;
                Preparing {
                    fd,
                    wanted,
                    len,
                    ready: 0,
                }
            }
        };
        let len = POOL_GRANULE.min(segment.len - segment.ready);
        memory::reserve_range(segment.fd.as_fd(), segment.ready, len)?;
        segment.ready += len;
        if segment.ready == segment.len {
            let Preparing { fd, len, .. } = segment;
            state.with_store(|s| s.pool_add(fd, len as u64));
        } else {
            *preparing = Some(segment);
        }
    }
}

/// The thread's wakeup: set when there may be work, or when it should stop.
#[derive(Debug, Default)]
pub struct Signal {
    flags: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Signal {
    /// There may be more of the arena to prepare.
    pub fn wake(&self) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.0 = true;
        self.cv.notify_one();
    }

    /// The thread should end.
    pub fn stop(&self) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.1 = true;
        self.cv.notify_one();
    }

    /// Waits for a wakeup; false when stopping.
    fn wait(&self) -> bool {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        while !flags.0 && !flags.1 {
            flags = self.cv.wait(flags).unwrap_or_else(|e| e.into_inner());
        }
        flags.0 = false;
        !flags.1
    }

    fn stopping(&self) -> bool {
        self.flags.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Starts the thread; it ends after [`Signal::stop`] on `state.prefault`.
pub fn spawn(state: Arc<State>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rayd-prefault".into())
        .spawn(move || {
            // SAFETY: setpriority only changes this thread's nice value (Linux keeps one
            // per thread).
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            // A segment being prepared, kept across the pauses of `prepare_pool`.
            let mut preparing = None;
            while state.prefault.wait() {
                while let Some((index, offset, len)) =
                    state.with_store(|s| s.prefault_next())
                {
                    if state.prefault.stopping() {
                        return;
                    }
                    if let Err(e) = memory::reserve_range(state.arena_fd_borrowed(), offset, len)
                    {
                        log::warn!(error:% = e; "cannot prepare object store memory ahead of demand");
                        break;
                    }
                    state.with_store(|s| s.prefault_done(index));
                }
                if let Err(e) = prepare_pool(&state, &mut preparing) {
                    log::warn!(error:% = e; "cannot prepare a segment ahead of demand");
                    preparing = None;
                }
            }
        })
}
