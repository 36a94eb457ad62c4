//! The controller's per-second merge: decode and merge 1,000 agents' encoded snapshots of
//! 100 series each (issue 4's goal: under 50 ms per tick). A plain `harness = false` bench
//! (no criterion) that prints the median of several runs:
//! `cargo bench -p punisher-metrics --bench merge`. `MERGE_ONLY=1` skips the slow
//! decode-then-merge comparison; `COMPRESSED=1` makes the agents deflate their messages.

// A bench binary reports on stdout.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use punisher_metrics::{
    Accumulator, MetricKind, Recorder, Snapshot, SnapshotDecoder, SnapshotEncoder, Tags, ValueType,
    merge_many,
};

const AGENTS: usize = 1000;
const TRENDS: usize = 80;
const OTHERS: usize = 20;
const SAMPLES_PER_TREND: usize = 200;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A latency in ms: 5-60 ms body, 2% tail up to ~3 s.
    fn latency_ms(&mut self) -> f64 {
        let body = 5.0 + (self.next() % 55_000) as f64 / 1000.0;
        if self.next().is_multiple_of(50) {
            body * (1 + self.next() % 50) as f64
        } else {
            body
        }
    }
}

/// One agent's second: 80 trend series (8 HTTP trends x 10 request names) and 20 counters
/// and rates, each trend with 200 samples.
fn agent_snapshot(seed: u64) -> Snapshot {
    let mut rng = Lcg(seed);
    let mut r = Recorder::new();
    let trends = [
        "http_req_duration",
        "http_req_waiting",
        "http_req_sending",
        "http_req_receiving",
        "http_req_blocked",
        "http_req_connecting",
        "http_req_tls_handshaking",
        "iteration_duration",
    ];
    for i in 0..TRENDS {
        let tags = Tags::new([("name", format!("req{}", i % 10)), ("method", "GET".into())]);
        let id = r
            .series(MetricKind::Trend, ValueType::Time, trends[i / 10], &tags)
            .unwrap();
        for _ in 0..SAMPLES_PER_TREND {
            r.add_trend(id, rng.latency_ms());
        }
    }
    for i in 0..OTHERS {
        let tags = Tags::new([("name", format!("req{}", i % 10))]);
        if i < 10 {
            let id = r
                .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
                .unwrap();
            r.add_counter(id, 200.0);
        } else {
            let id = r
                .series(
                    MetricKind::Rate,
                    ValueType::Default,
                    "http_req_failed",
                    &tags,
                )
                .unwrap();
            for k in 0..200u32 {
                r.add_rate(id, k.is_multiple_of(97));
            }
        }
    }
    r.take_snapshot(1_000, 2_000)
}

/// CPU time (user + system, all threads) this process used so far.
fn cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// Runs `tick` `n` times; prints the median wall and CPU time of one run. Each result is
/// compared with `expect` outside the timed part.
fn measure(label: &str, n: usize, expect: &Snapshot, mut tick: impl FnMut() -> Snapshot) {
    let mut wall = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..n {
        let (t, c) = (Instant::now(), cpu());
        let result = tick();
        wall.push(t.elapsed());
        cpus.push(cpu() - c);
        assert!(
            result == *expect,
            "{label}: the merge differs from merge_into's"
        );
    }
    println!(
        "{label}: median wall {:?} (min {:?}), median CPU {:?}",
        median(wall.clone()),
        wall.iter().min().unwrap(),
        median(cpus)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let distinct: Vec<Snapshot> = (0..20).map(|i| agent_snapshot(i + 1)).collect();
    let compressed = std::env::var_os("COMPRESSED").is_some();
    let mut encoder = if compressed {
        SnapshotEncoder::compressing(4096)
    } else {
        SnapshotEncoder::new()
    };
    let mut encode_times = Vec::new();
    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let mut out = Vec::new();
        let t = Instant::now();
        encoder.encode_into(&distinct[i % distinct.len()], &mut out);
        encode_times.push(t.elapsed());
        encoded.push(out);
    }
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    println!(
        "encode one agent snapshot ({} series{}): median {:?}, {} bytes on average",
        TRENDS + OTHERS,
        if compressed { ", compressed" } else { "" },
        median(encode_times),
        bytes / AGENTS
    );

    let mut decoder = SnapshotDecoder::new();
    let mut reference = Snapshot::empty(0, 0);
    for msg in &encoded {
        decoder.merge_into(msg, &mut reference).unwrap();
    }
    let series = TRENDS + OTHERS;
    measure(
        &format!("decode + merge of {AGENTS} snapshots x {series} series (merge_into)"),
        9,
        &reference,
        || {
            let mut tick = Snapshot::empty(0, 0);
            for msg in &encoded {
                decoder.merge_into(msg, &mut tick).unwrap();
            }
            tick
        },
    );

    let mut acc = Accumulator::new();
    measure(
        "the same with Accumulator::add + finish",
        9,
        &reference,
        || {
            for msg in &encoded {
                acc.add(msg).unwrap();
            }
            acc.finish()
        },
    );

    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    for threads in [1, 2] {
        measure(
            &format!("the same with merge_many, {threads} thread(s)"),
            9,
            &reference,
            || {
                let merged = merge_many(&refs, threads);
                assert!(merged.rejected.is_empty());
                merged.snapshot
            },
        );
    }

    if std::env::var_os("MERGE_ONLY").is_some() {
        return;
    }
    let mut slow_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut tick = Snapshot::empty(0, 0);
        for msg in &encoded {
            let s = decoder.decode(msg).unwrap();
            tick.merge(&s).unwrap();
        }
        slow_times.push(t.elapsed());
        black_box(&tick);
    }
    println!(
        "decode then Snapshot::merge of the same (for comparison): median {:?}",
        median(slow_times)
    );
}
