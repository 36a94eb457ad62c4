//! Precise response delays for `--latency`.
//!
//! tokio's timer rounds every deadline up to the next millisecond tick, so
//! `tokio::time::sleep(10ms)` lasts 10 to 11 ms (10.5 ms on average): too coarse for the
//! accuracy benchmark, which compares recorded latencies with a 10 ms truth within
//! +0.3 ms. One dedicated timer thread waits on a condition variable with a nanosecond
//! timeout instead (the kernel's timer slack, ~50 us, is the error) and completes a
//! oneshot per delayed response. It costs one lock and at most one wake-up per request,
//! and nothing when the latency is zero.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Pending {
    deadline: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
}

/// Delays futures by a fixed duration, precisely.
pub(crate) struct Delayer {
    latency: Duration,
    shared: Option<Arc<Shared>>,
}

impl Delayer {
    pub(crate) fn new(latency: Duration) -> Self {
        if latency.is_zero() {
            return Self {
                latency,
                shared: None,
            };
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("punisher-target-timer".into())
            .spawn(move || timer_thread(&thread_shared));
        match spawned {
            Ok(_) => Self {
                latency,
                shared: Some(shared),
            },
            // No thread to be had: fall back to tokio's coarser timer rather than fail.
            Err(e) => {
                tracing::warn!(error = %e, "no timer thread; latency uses tokio's timer");
                Self {
                    latency,
                    shared: None,
                }
            }
        }
    }

    /// Waits for the configured latency (returns at once when it is zero).
    pub(crate) async fn wait(&self) {
        if self.latency.is_zero() {
            return;
        }
        let Some(shared) = &self.shared else {
            tokio::time::sleep(self.latency).await;
            return;
        };
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.latency;
        {
            let mut q = lock(&shared.queue);
            q.seq += 1;
            let seq = q.seq;
            let earliest = q.heap.peek().is_none_or(|Reverse(p)| deadline < p.deadline);
            q.heap.push(Reverse(Pending {
                deadline,
                seq,
                done: tx,
            }));
            if earliest {
                shared.wake.notify_one();
            }
        }
        // The sender only disappears if the timer thread is gone; then the delay is over.
        let _ = rx.await;
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.stop.store(true, Ordering::Relaxed);
            let _guard = lock(&shared.queue);
            shared.wake.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn timer_thread(shared: &Shared) {
    let mut q = lock(&shared.queue);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            // Dropping the queue drops every sender: waiters complete at once.
            q.heap.clear();
            return;
        }
        let now = Instant::now();
        while q.heap.peek().is_some_and(|Reverse(p)| p.deadline <= now) {
            if let Some(Reverse(p)) = q.heap.pop() {
                let _ = p.done.send(());
            }
        }
        q = match q.heap.peek() {
            Some(Reverse(p)) => {
                let timeout = p.deadline.saturating_duration_since(now);
                shared
                    .wake
                    .wait_timeout(q, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_at_least_the_latency_and_not_much_more() {
        let d = Delayer::new(Duration::from_millis(5));
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            d.wait().await;
            let e = t.elapsed();
            assert!(e >= Duration::from_millis(5), "{e:?}");
            worst = worst.max(e);
        }
        // Generous bound for a loaded CI machine; the benchmark measures the real error.
        assert!(worst < Duration::from_millis(50), "{worst:?}");
    }

    #[tokio::test]
    async fn concurrent_waits_complete_in_deadline_order() {
        let d = Arc::new(Delayer::new(Duration::from_millis(3)));
        let t = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.wait().await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(t.elapsed() >= Duration::from_millis(3));
    }

    #[tokio::test]
    async fn zero_latency_does_not_wait() {
        let d = Delayer::new(Duration::ZERO);
        d.wait().await;
        assert!(d.shared.is_none());
    }

    /// Precision of a 10 ms delay against tokio's timer (the accuracy benchmark's truth):
    /// `cargo test -p punisher-target --release --lib measure_precision -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, prints numbers"]
    async fn measure_precision() {
        let latency = Duration::from_millis(10);
        let d = Delayer::new(latency);
        let pct = |mut v: Vec<Duration>| {
            v.sort();
            let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                at(0.5),
                at(0.99),
                at(1.0)
            )
        };
        let (mut ours, mut tokio_sleep) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let t = Instant::now();
            d.wait().await;
            ours.push(t.elapsed());
            let t = Instant::now();
            tokio::time::sleep(latency).await;
            tokio_sleep.push(t.elapsed());
        }
        eprintln!("timer thread: {}", pct(ours));
        eprintln!("tokio sleep:  {}", pct(tokio_sleep));
    }
}
