//! `Snapshot::recycle` keeps trend histograms for the next `new_trend_histogram` of the
//! process. The pool is process-wide, so this test has a binary of its own: no other test
//! takes from the pool while it looks.

use punisher_metrics::{MetricKind, Recorder, SeriesData, Tags, ValueType, new_trend_histogram};

#[test]
fn a_recycled_histogram_comes_back_empty_with_the_shared_bounds() {
    let mut recorder = Recorder::new();
    let id = recorder
        .series(
            MetricKind::Trend,
            ValueType::Time,
            "http_req_duration",
            &Tags::empty(),
        )
        .unwrap();
    for ms in [0.5, 12.0, 340.0, 90_000.0] {
        recorder.add_trend(id, ms);
    }
    let snapshot = recorder.take_snapshot(0, 1000);
    let recorded: Vec<*const u8> = snapshot
        .series
        .values()
        .filter_map(|data| match data {
            SeriesData::Trend { hist, .. } => {
                assert_eq!(hist.len(), 4);
                Some((&**hist as *const hdrhistogram::Histogram<u64>).cast())
            }
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 1);
    snapshot.recycle();

    let reused = new_trend_histogram();
    assert_eq!(
        (&*reused as *const hdrhistogram::Histogram<u64>).cast::<u8>(),
        recorded[0],
        "the recycled histogram is handed out again"
    );
    let new = new_trend_histogram();
    assert_eq!(reused.len(), 0, "reset before it is handed out");
    assert_eq!(reused.max(), 0);
    assert_eq!(reused.low(), new.low());
    assert_eq!(reused.high(), new.high());
    assert_eq!(reused.sigfig(), new.sigfig());
    assert_eq!(reused.distinct_values(), new.distinct_values());
    assert_eq!(*reused, *new);
}
