//! Graceful stop and readiness: SIGTERM/SIGINT and `sd_notify`.
//!
//! The first SIGTERM or SIGINT cancels the process's root [`CancellationToken`]; every
//! task holds a child token and drains when it fires. A second signal cancels the
//! `forced` token, on which `main` exits at once. Readiness and status go to systemd when
//! `NOTIFY_SOCKET` is set (also used by `rayd start` to learn that a daemon is serving);
//! without it they are no-ops. Under `WatchdogSec=` the daemon's event loop pings the
//! watchdog ([`ping_watchdog`]), so that a hung daemon (a stuck loop, SIGSTOP) is killed and
//! restarted by systemd.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The shutdown tokens of one process.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled on the first signal: stop gracefully.
    pub graceful: CancellationToken,
    /// Cancelled on the second signal: exit now.
    pub forced: CancellationToken,
}

impl Shutdown {
    /// Creates the tokens and starts listening for SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Self> {
        let shutdown = Self::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let tokens = shutdown.clone();
        tokio::spawn(async move {
            for (second, token) in [(false, &tokens.graceful), (true, &tokens.forced)] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if !second {
                    log::info!(signal = name; "stopping gracefully; a second signal stops at once");
                } else {
                    log::warn!(signal = name; "second signal: stopping at once");
                }
                token.cancel();
            }
        });
        Ok(shutdown)
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    // A launcher that stopped listening (rayd start after READY) is no reason to worry.
    if let Err(e) = sd_notify::notify(false, state) {
        log::debug!(error:% = e; "cannot notify the service manager");
    }
}

/// Tells the service manager that the process is serving.
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells the service manager that the process is stopping.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Sets the one-line status that `systemctl status` shows.
pub fn notify_status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

/// How often to ping systemd's watchdog: half of `WatchdogSec=`, when the service manager
/// set one for this process. Removes the watchdog's variables from the environment so that
/// child processes do not inherit them; call it before any other thread starts.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(true, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Pings the watchdog every `interval`, forever: spawned on the daemon's own runtime, so
/// the pings stop when its event loop stops turning.
pub async fn ping_watchdog(interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        notify(&[sd_notify::NotifyState::Watchdog]);
    }
}
