//! The process-wide wall clock the engine labels time with: the machine's clock corrected
//! by an offset its controller measured (controller time = machine time − offset). Report
//! boundaries, the common start instant and `socketio_event_latency`'s receive time use it,
//! so that the seconds and latencies of agents on different machines line up.
//!
//! One offset per process: one agent runs per process. Agents in the controller's own
//! process (tests, local runs) share the controller's clock, and their offset stays 0 (the
//! controller only sends an offset larger than its measurement's uncertainty).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// This machine's clock minus the controller's, in microseconds.
static OFFSET_US: AtomicI64 = AtomicI64::new(0);

/// Sets this process's clock offset: `machine clock − controller clock`, in microseconds.
pub fn set_clock_offset_us(offset_us: i64) {
    OFFSET_US.store(offset_us, Ordering::Relaxed);
}

/// The offset [`set_clock_offset_us`] set (0 until then).
pub fn clock_offset_us() -> i64 {
    OFFSET_US.load(Ordering::Relaxed)
}

/// Unix microseconds on the machine's own clock.
fn machine_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Unix microseconds on the corrected (controller's) clock.
pub fn unix_us_corrected() -> u64 {
    machine_unix_us().saturating_sub(clock_offset_us()).max(0) as u64
}

/// Unix milliseconds on the corrected (controller's) clock.
pub fn unix_ms_corrected() -> u64 {
    unix_us_corrected() / 1000
}

/// Unix milliseconds, fractional, on the corrected clock (latencies).
pub(crate) fn unix_ms_corrected_f64() -> f64 {
    unix_us_corrected() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_shifts_the_corrected_clock() {
        let before = unix_ms_corrected();
        set_clock_offset_us(-3_600_000_000); // this machine is an hour behind
        let shifted = unix_ms_corrected();
        set_clock_offset_us(0);
        let after = unix_ms_corrected();
        assert!(shifted >= before + 3_600_000 && shifted <= after + 3_600_000);
    }
}
