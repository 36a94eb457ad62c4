//! The corrected clock (`set_clock_offset_us`) in a run: worker reports are labelled with
//! whole seconds of the controller's clock, and `socketio_event_latency` measures the receive
//! time on it. A test binary of its own: the offset is process-wide.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use punisher_core::{Overrides, Plan, Segment};
use punisher_engine::{Bundle, EngineConfig, LocalBarrierHub};
use punisher_metrics::{SeriesData, Tags, Totals};
use punisher_target::TargetConfig;

const SCRIPT: &str = r#"
import http from 'punisher/http';
import { io } from 'punisher/socketio';
export const options = { users: 1, rampUp: '0s' };
export default async function () {
  const socket = await io(__ENV.API, { transports: ['websocket'] });
  const got = new Promise((resolve) => socket.on('question', resolve));
  await http.post(`${__ENV.API}/admin/broadcast`, { question: 'now?' });
  await got;
}
"#;

fn machine_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_offset_moves_report_seconds_and_event_latency() {
    let target = punisher_target::spawn_local_target(TargetConfig::new())
        .await
        .unwrap();
    // This machine is 10 s behind the controller: the question the target stamps with this
    // machine's clock arrives 10 s late on the controller's.
    punisher_engine::set_clock_offset_us(-10_000_000);
    let env = BTreeMap::from([("API".to_owned(), target.url.clone())]);
    let scenario = punisher_engine::inspect(Bundle::from_source("main.js", SCRIPT), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::from_options(&scenario.options, &Overrides::default()).unwrap();
    let cfg = EngineConfig {
        workers: 1,
        plan,
        segment: Segment::FULL,
        env,
        source_pool: None,
        memory_limit_bytes: 256 << 20,
        barriers: Arc::new(LocalBarrierHub::new(1)),
        test_users: 1,
    };
    let started = machine_unix_ms();
    let mut handle =
        punisher_engine::start(Arc::new(scenario), cfg, serde_json::Value::Null).unwrap();
    let mut totals = Totals::new();
    let mut starts = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = handle.next_report().await {
            starts.push(r.snapshot.start_unix_ms);
            totals.add(&r.snapshot).unwrap();
        }
    })
    .await
    .expect("the run did not finish in time");
    punisher_engine::set_clock_offset_us(0);
    for start in &starts {
        assert!(
            *start >= started + 10_000,
            "{start} vs {started}: not corrected"
        );
    }
    let latency = totals.aggregate(
        "socketio_event_latency",
        &Tags::new([("event", "question")]),
    );
    let Some(SeriesData::Trend { hist, .. }) = latency else {
        panic!("no latency: {latency:?}");
    };
    // Trend units are microseconds of the millisecond value.
    assert_eq!(hist.len(), 1);
    let ms = hist.max() as f64 / 1000.0;
    assert!((10_000.0..12_000.0).contains(&ms), "{ms} ms");
}
