//! punisher patch (see vendor/README.md): heartbeats on a grid shared by every socket.
//!
//! Upstream, each socket's heartbeat task pings on its own phase, so a server with N
//! sockets and a 25 s interval wakes N/25 times a second, and so does every client
//! process it talks to. With a grid of G, each socket's periodic pings fall on multiples
//! of G of the wall clock: every socket of a process that is due in the same grid cell
//! is pinged in one timer turn, and processes that share a clock (several server
//! processes, the load generator's agents on the same machine) wake together. The
//! protocol does not change: each client still gets a ping every `ping_interval`, the
//! first one up to G later than upstream would send it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The grid in milliseconds; 0 keeps upstream's behaviour.
static GRID_MS: AtomicU64 = AtomicU64::new(0);

/// Puts the periodic pings of the sockets created from now on onto multiples of `grid`
/// of the wall clock. `Duration::ZERO` turns it off. The grid is only used when the ping
/// interval is a multiple of it (else sockets would drift off it).
pub fn set_heartbeat_grid(grid: Duration) {
    GRID_MS.store(grid.as_millis().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// The grid in use, `Duration::ZERO` when off.
pub fn heartbeat_grid() -> Duration {
    Duration::from_millis(GRID_MS.load(Ordering::Relaxed))
}

/// The ticker of a heartbeat job whose first tick (the first periodic ping, after the
/// one sent at connection) is `interval` from now, or the next grid point after that.
pub(crate) fn periodic_ticks(interval: Duration) -> Interval {
    let first = Instant::now() + interval + delay_to_grid(interval, heartbeat_grid());
    let mut ticks = tokio::time::interval_at(first, interval);
    // Upstream's `interval` bursts to catch up; a late tick should not be followed by
    // others in a row, and skipping to the next multiple keeps the socket on the grid.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticks
}

/// How long after `now + interval` the next grid point comes.
fn delay_to_grid(interval: Duration, grid: Duration) -> Duration {
    let grid_ms = grid.as_millis();
    if grid_ms == 0 || interval.as_millis() % grid_ms != 0 {
        return Duration::ZERO;
    }
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return Duration::ZERO;
    };
    let due = (now + interval).as_millis();
    let late = due % grid_ms;
    if late == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis((grid_ms - late) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_or_misaligned_grids_add_nothing() {
        let interval = Duration::from_secs(25);
        assert_eq!(delay_to_grid(interval, Duration::ZERO), Duration::ZERO);
        assert_eq!(delay_to_grid(interval, Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn the_delay_lands_on_the_grid() {
        let interval = Duration::from_secs(25);
        let grid = Duration::from_millis(500);
        let delay = delay_to_grid(interval, grid);
        assert!(delay < grid);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        // Allow the millisecond or two the clock moved since.
        let off = (now + interval + delay).as_millis() % grid.as_millis();
        assert!(off < 5 || off > grid.as_millis() - 5, "{off}");
    }
}
