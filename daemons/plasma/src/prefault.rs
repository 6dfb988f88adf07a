//! Fresh memory prepared ahead of demand: one background thread allocates the pages of
//! the arena (`fallocate`) a granule at a time, up to a bound past the highest byte handed
//! out so far (see [`crate::store::Store::prefault_next`]), and makes the segments of
//! the pool ([`crate::pool`], [`crate::store::Store::pool_wanted`]), so that a create
//! rarely waits for the kernel to zero fresh pages. It runs at the lowest CPU priority
//! and without the store's lock, and sleeps until the store hands out more memory. It
//! starts no segment while one is being filled, by a client or a pull
//! ([`crate::store::Store::filling`]), or while another node pulls from this one
//! ([`crate::state::State::serving`]), and when either begins while it makes one, it only
//! allocates the rest of it instead of also touching it (see
//! [`crate::memory::Backing::prepare`]): the store's process has a scheduling group of
//! its own (autogroups), so its low priority does not keep it from taking a core from
//! the fill. A program that puts large objects back to back thus still finds every
//! other segment allocated ahead (a segment begun between two fills is finished during
//! the second, only allocated).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use crate::memory;
use crate::state::State;

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
                // The end of every fill wakes the thread again.
                // The end of every pull served from here too.
                while let Some(size) = state.with_store(|s| {
                    (!s.filling() && !state.serving())
                        .then(|| s.pool_wanted())
                        .flatten()
                }) {
                    if state.prefault.stopping() {
                        return;
                    }
                    let fills = state.with_store(|s| s.fills());
                    let idle = || {
                        !state.prefault.stopping()
                            && fills.load(Ordering::Relaxed) == 0
                            && !state.serving()
                    };
                    match state.backing.prepare_parts(size as usize, idle) {
                        Ok(parts) => {
                            let len = parts.iter().map(|(_, len)| *len as u64).sum();
                            let files = parts.into_iter().map(|(fd, _)| fd).collect();
                            state.with_store(|s| s.pool_add(files, len));
                        }
                        Err(e) => {
                            log::warn!(error:% = e; "cannot prepare a segment ahead of demand");
                            break;
                        }
                    }
                }
            }
        })
}
