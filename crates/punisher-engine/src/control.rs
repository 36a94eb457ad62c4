//! [`Control`]: what a [`crate::RunHandle`] shares with one worker thread. The abort flag and
//! the hard deadline are atomics because the worker may be stuck inside JavaScript
//! (`while (true) {}`), where only QuickJS's interrupt handler still looks at anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use punisher_core::Segment;
use tokio::sync::watch;

/// The latest commands, as state (a `watch`): workers react to changes between awaits.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Commands {
    /// Stop arrivals; in-flight iterations get this long.
    pub(crate) stop: Option<Duration>,
    pub(crate) aborted: bool,
    /// Test-wide user target set by `ScaleUsers`.
    pub(crate) target: Option<u64>,
    pub(crate) paused: bool,
    /// Shares of a departed agent this worker runs too: users (or arrivals) number `>= from`
    /// that the segment owns. Append-only; repeats are not added.
    pub(crate) adopted: Vec<(Segment, u64)>,
}

#[derive(Debug)]
pub(crate) struct Control {
    abort: AtomicBool,
    /// Milliseconds since `epoch` after which script code is interrupted; `u64::MAX`: none.
    deadline_ms: AtomicU64,
    epoch: Instant,
    pub(crate) commands: watch::Sender<Commands>,
    /// What the worker did not run, written once when it ends (see [`crate::LeftOver`]).
    pub(crate) left_over: Mutex<Option<crate::LeftOver>>,
}

impl Control {
    pub(crate) fn new() -> Self {
        Self {
            abort: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            commands: watch::Sender::new(Commands::default()),
            left_over: Mutex::new(None),
        }
    }

    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
        self.commands.send_modify(|c| c.aborted = true);
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Script code running `after` from now on is interrupted (keeps an earlier deadline).
    pub(crate) fn interrupt_after(&self, after: Duration) {
        let at = (Instant::now() + after).saturating_duration_since(self.epoch);
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX - 1);
        self.deadline_ms.fetch_min(ms, Ordering::Relaxed);
    }

    /// Whether script code must stop now: checked by the interrupt handler.
    pub(crate) fn should_interrupt(&self) -> bool {
        if self.is_aborted() {
            return true;
        }
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        deadline != u64::MAX && self.epoch.elapsed().as_millis() as u64 >= deadline
    }
}
