//! Integration tests of punisher-metrics: merge exactness, codec round trips and
//! robustness, and the summary (text and JSON, against the committed schema).

mod util;

use std::time::Duration;

use punisher_metrics::{
    Accumulator, MetricKind, Recorder, SeriesData, SeriesKey, Snapshot, SnapshotDecoder,
    SnapshotEncoder, Summary, SummaryMeta, Tags, Threshold, Totals, ValueType, merge_many,
    new_trend_histogram,
};
use util::{Lcg, http_series, record_requests};

fn percentiles(data: &SeriesData) -> Vec<u64> {
    let SeriesData::Trend { hist, .. } = data else {
        panic!("not a trend: {data:?}")
    };
    let mut v: Vec<u64> = [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
        .iter()
        .map(|q| hist.value_at_quantile(*q))
        .collect();
    v.extend([hist.len(), hist.min(), hist.max()]);
    v
}

#[test]
fn merging_three_recorders_equals_recording_into_one() {
    let mut rng = Lcg(7);
    let mut one = Recorder::new();
    let mut parts: Vec<Recorder> = (0..3).map(|_| Recorder::new()).collect();
    let h_one = http_series(&mut one, "vote", "200");
    let h_parts: Vec<_> = parts
        .iter_mut()
        .map(|r| http_series(r, "vote", "200"))
        .collect();
    for i in 0..30_000usize {
        let v = rng.latency_ms();
        let k = i % 3;
        one.add_trend(h_one.duration, v);
        parts[k].add_trend(h_parts[k].duration, v);
        one.add_counter(h_one.reqs, 1.0);
        parts[k].add_counter(h_parts[k].reqs, 1.0);
        let fail = rng.below(10) == 0;
        one.add_rate(h_one.failed, fail);
        parts[k].add_rate(h_parts[k].failed, fail);
    }
    let whole = one.take_snapshot(0, 1000);
    let mut merged = Snapshot::empty(0, 1000);
    // Both paths: in-memory merge and decode-and-merge of the encoded snapshots.
    let mut via_codec = Snapshot::empty(0, 1000);
    // And the merge that moves what is new instead of copying it.
    let mut moved = Snapshot::empty(0, 1000);
    let mut decoder = SnapshotDecoder::new();
    for r in &mut parts {
        let s = r.take_snapshot(0, 1000);
        merged.merge(&s).unwrap();
        decoder.merge_into(&s.encode(), &mut via_codec).unwrap();
        moved.merge_owned(s).unwrap();
    }
    assert_eq!(merged, whole);
    assert_eq!(via_codec, whole);
    assert_eq!(moved, whole);
    for (key, data) in &whole.series {
        if data.kind() == MetricKind::Trend {
            assert_eq!(percentiles(data), percentiles(&merged.series[key]), "{key}");
        }
    }
}

fn all_kinds_snapshot() -> Snapshot {
    let mut r = Recorder::new();
    let mut rng = Lcg(11);
    for (name, status) in [
        ("vote", "200"),
        ("vote", "409"),
        ("info", "200"),
        ("ünï/cödé?x=1", "0"),
    ] {
        let h = http_series(&mut r, name, status);
        record_requests(&mut r, &h, &mut rng, 500);
    }
    let custom = r
        .series(
            MetricKind::Trend,
            ValueType::Default,
            "queue_len",
            &Tags::empty(),
        )
        .unwrap();
    r.add_trend(custom, 0.0);
    r.add_trend(custom, 1e12);
    r.take_snapshot(1_700_000_000_000, 1_700_000_001_000)
}

#[test]
fn codec_round_trips() {
    let empty = Snapshot::empty(5, 6);
    assert_eq!(Snapshot::decode(&empty.encode()).unwrap(), empty);
    let s = all_kinds_snapshot();
    let kinds: std::collections::BTreeSet<_> = s.series.values().map(SeriesData::kind).collect();
    assert_eq!(kinds.len(), 4, "all kinds present");
    let bytes = s.encode();
    assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    // A snapshot with an empty trend histogram and extreme floats round-trips too.
    let mut odd = Snapshot::empty(0, u64::MAX);
    odd.series.insert(
        SeriesKey::new("t", Tags::empty()),
        SeriesData::Trend {
            value_type: ValueType::Data,
            hist: new_trend_histogram(),
        },
    );
    odd.series.insert(
        SeriesKey::new("g", Tags::new([("a", ""), ("", "b")])),
        SeriesData::Gauge {
            last: f64::MAX,
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
            at_unix_ms: u64::MAX,
        },
    );
    assert_eq!(Snapshot::decode(&odd.encode()).unwrap(), odd);
}

#[test]
fn decode_rejects_garbage_without_panicking() {
    let mut zipped = Vec::new();
    SnapshotEncoder::compressing(0).encode_into(&all_kinds_snapshot(), &mut zipped);
    check_garbage(all_kinds_snapshot().encode());
    check_garbage(zipped);
}

/// Prefixes, mutations and noise of `bytes` (one decoder throughout, so its caches of the
/// last good table and keys meet every kind of damage).
fn check_garbage(bytes: Vec<u8>) {
    let mut decoder = SnapshotDecoder::new();
    // Prefixes shorter than the whole are errors (about 3,000 of them, all the short ones).
    let step = (bytes.len() / 3000).max(1);
    for len in (0..bytes.len()).filter(|l| *l < 512 || l % step == 0) {
        assert!(
            decoder.decode(&bytes[..len]).is_err(),
            "prefix {len} decoded"
        );
    }
    // Random mutations: errors or (rarely) a different valid snapshot, never a panic.
    let mut rng = Lcg(3);
    let mut target = Snapshot::empty(0, 0);
    for round in 0..3000 {
        let mut m = bytes.clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(m.len() as u64) as usize;
            m[i] = rng.next() as u8;
        }
        let _ = decoder.decode(&m);
        // Comparing the whole target is costly (histograms): check atomicity on a sample.
        if round % 10 == 0 {
            let before = target.clone();
            if decoder.merge_into(&m, &mut target).is_err() {
                assert_eq!(target, before, "a failed merge_into changed the target");
            }
        } else {
            let _ = decoder.merge_into(&m, &mut target);
        }
    }
    // Pure noise, and forged huge counts.
    for _ in 0..1000 {
        let n = rng.below(200) as usize;
        let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        assert!(decoder.decode(&noise).is_err());
        let mut forged = b"PNSM\x02\x00\x00".to_vec();
        forged.extend(noise);
        let _ = decoder.decode(&forged);
    }
    let huge = [
        b'P', b'N', b'S', b'M', 2, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
    ];
    let e = decoder.decode(&huge).unwrap_err().to_string();
    assert!(e.contains("more than the message can hold"), "{e}");
}

#[test]
fn merge_into_refuses_kind_conflicts_atomically() {
    let s = all_kinds_snapshot();
    let mut target = Snapshot::empty(0, 0);
    target.series.insert(
        SeriesKey::new("vus", Tags::empty()),
        SeriesData::Counter { sum: 1.0 },
    );
    let before = target.clone();
    let e = SnapshotDecoder::new()
        .merge_into(&s.encode(), &mut target)
        .unwrap_err();
    assert!(e.to_string().contains("vus"), "{e}");
    assert_eq!(target, before);
}

/// What the controller would get merging `msgs` one by one into an empty snapshot.
fn sequential(msgs: &[Vec<u8>]) -> (Snapshot, Vec<usize>) {
    let mut d = SnapshotDecoder::new();
    let mut s = Snapshot::empty(0, 0);
    let rejected = msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| d.merge_into(m, &mut s).is_err())
        .map(|(i, _)| i)
        .collect();
    (s, rejected)
}

fn check_bulk_merges(msgs: &[Vec<u8>]) {
    let (expect, expect_rejected) = sequential(msgs);
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    for threads in [1, 2, 3, 7] {
        let merged = merge_many(&refs, threads);
        let rejected: Vec<usize> = merged.rejected.iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, expect_rejected, "{threads} threads");
        assert!(merged.snapshot == expect, "{threads} threads");
    }
    let mut acc = Accumulator::new();
    for m in msgs {
        let _ = acc.add(m);
    }
    assert!(acc.finish() == expect);
    // The accumulator starts over after finish.
    assert_eq!(acc.finish(), Snapshot::empty(0, 0));
}

#[test]
fn bulk_merges_equal_merging_one_by_one() {
    let mut rng = Lcg(21);
    let mut msgs = Vec::new();
    let mut zipper = SnapshotEncoder::compressing(0);
    for agent in 0..12u64 {
        let mut r = Recorder::new();
        // Series sets differ between agents, so keys are new to some decoders.
        for name in ["vote", "info", "login"]
            .iter()
            .take(1 + agent as usize % 3)
        {
            let h = http_series(&mut r, name, if agent % 2 == 0 { "200" } else { "503" });
            record_requests(&mut r, &h, &mut rng, 50 + 20 * agent as usize);
        }
        // Intervals, including the 0..0 that widening treats as "none yet".
        let (start, end) = match agent {
            3 => (0, 0),
            7 => (500, 900),
            _ => (1000 * agent, 1000 * agent + 1000),
        };
        let s = r.take_snapshot(start, end);
        let mut bytes = Vec::new();
        if agent % 4 == 1 {
            zipper.encode_into(&s, &mut bytes);
        } else {
            SnapshotEncoder::new().encode_into(&s, &mut bytes);
        }
        msgs.push(bytes);
    }
    check_bulk_merges(&msgs);
    for first in [0, 3, 7] {
        check_bulk_merges(&msgs[first..]);
    }
    check_bulk_merges(&[]);

    // Malformed messages are left out wherever they are.
    let mut with_bad = msgs.clone();
    with_bad.insert(5, b"garbage".to_vec());
    let mut cut = msgs[2].clone();
    cut.truncate(cut.len() / 2);
    with_bad.push(cut);
    check_bulk_merges(&with_bad);

    // A kind conflict: which message loses depends on order, across shards too.
    let mut conflicting = Snapshot::empty(1, 2);
    conflicting.series.insert(
        SeriesKey::new(
            "http_reqs",
            Tags::new([("method", "GET"), ("name", "vote"), ("status", "200")]),
        ),
        SeriesData::Rate {
            passes: 1,
            total: 2,
        },
    );
    let mut with_conflict = msgs.clone();
    with_conflict.insert(1, conflicting.encode());
    with_conflict.insert(9, conflicting.encode());
    let (_, rejected) = sequential(&with_conflict);
    assert!(!rejected.is_empty());
    check_bulk_merges(&with_conflict);
}

fn run_totals() -> Totals {
    let mut rng = Lcg(5);
    let mut totals = Totals::new();
    let mut r = Recorder::new();
    let series: Vec<_> = [
        ("vote", "200"),
        ("vote", "409"),
        ("info", "200"),
        ("login", "200"),
    ]
    .iter()
    .map(|(n, s)| http_series(&mut r, n, s))
    .collect();
    let grouped = r
        .series(
            MetricKind::Rate,
            ValueType::Default,
            "checks",
            &Tags::new([("check", "voted"), ("group", "vote")]),
        )
        .unwrap();
    let iterations = r
        .series(
            MetricKind::Counter,
            ValueType::Default,
            "iterations",
            &Tags::empty(),
        )
        .unwrap();
    for second in 0..10u64 {
        for (i, h) in series.iter().enumerate() {
            record_requests(&mut r, h, &mut rng, 100 * (i + 1));
        }
        r.add_rate(grouped, second != 3);
        r.add_counter(iterations, 50.0);
        totals
            .add(&r.take_snapshot(second * 1000, (second + 1) * 1000))
            .unwrap();
    }
    totals
}

fn summary() -> Summary {
    let totals = run_totals();
    let thresholds: Vec<_> = [
        ("http_req_duration", "p(95)<200"),
        ("http_req_duration{name:vote}", "p(99.9)<100"),
        ("http_req_failed", "rate<0.05"),
        ("checks", "rate>0.99"),
        ("iterations", "count>0"),
        ("ws_sessions", "count>0"),
    ]
    .iter()
    .map(|(sel, expr)| {
        let t = Threshold::parse_str(sel, expr).unwrap();
        let o = t.evaluate(&totals);
        (t, o)
    })
    .collect();
    let meta = SummaryMeta {
        started_unix_ms: 1_700_000_000_000,
        ..SummaryMeta::new(
            "scenarios/smoke.js",
            "constant-vus",
            Duration::from_secs(10),
            50,
        )
    };
    Summary::build(&totals, &thresholds, meta)
}

#[test]
fn summary_json_matches_schema_and_shape() {
    let summary = summary();
    let json = summary.to_json();
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../summary.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{json:#}");

    assert_eq!(json["version"], 1);
    assert_eq!(json["metrics"]["http_req_duration"]["type"], "trend");
    assert_eq!(json["metrics"]["http_req_duration"]["contains"], "time");
    assert_eq!(
        json["metrics"]["http_req_duration"]["thresholds"]["p(95)<200"]["ok"],
        true
    );
    assert_eq!(json["metrics"]["http_reqs"]["values"]["count"], 10_000.0);
    assert_eq!(json["metrics"]["http_reqs"]["values"]["rate"], 1000.0);
    assert_eq!(json["metrics"]["data_sent"]["contains"], "data");
    let vote = &json["series"]["http_req_duration{name:vote}"];
    assert!(vote["values"]["p(99.9)"].is_number(), "{vote}");
    assert!(vote["thresholds"]["p(99.9)<100"]["ok"].is_boolean());
    for name in ["info", "login", "vote"] {
        for metric in ["http_req_duration", "http_reqs", "http_req_failed"] {
            assert!(
                json["series"][format!("{metric}{{name:{name}}}")].is_object(),
                "{metric} {name}"
            );
        }
    }
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[1]["group"], "vote");
    assert_eq!(checks[1]["fails"], 1);
    let t = json["thresholds"].as_array().unwrap();
    assert_eq!(t.len(), 6);
    assert_eq!(t[5]["no_data"], true);
    assert_eq!(t[5]["ok"], false);
    assert_eq!(t[4]["observed"], 500.0);

    // The schema refuses what it should.
    let mut bad = json.clone();
    bad["metrics"]["http_reqs"]["values"]["p(95)"] = 1.into();
    assert!(!validator.is_valid(&bad));
    let mut bad = json.clone();
    bad["meta"]["vus_max"] = "many".into();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn summary_text_is_deterministic_and_complete() {
    let text = summary().render_text();
    assert_eq!(text, summary().render_text());
    // The layout, line by line where values are fixed by construction.
    let expected_lines = [
        "  scenario: scenarios/smoke.js  executor: constant-vus  duration: 10.00s  max users: 50",
        "  █ THRESHOLDS",
        "    http_req_duration{name:vote}",
        "    ✓ 'rate<0.05' rate=",
        "    ✓ 'count>0' count=500",
        "    ws_sessions",
        "    ✗ 'count>0' count=0 (no data)",
        "  █ TOTAL RESULTS",
        "    ✗ status is 200",
        "     ↳  97% — ✓ 9761 / ✗ 239",
        "    █ vote",
        "    ✗ voted",
        "     ↳  90% — ✓ 9 / ✗ 1",
        "    checks.........................: 97.60% 9770 out of 10010",
        "    data_sent......................: 1.2 MB 120.0 kB/s",
        "    http_reqs......................: 10000    1000.00/s",
        "    iterations.....................: 500      50.00/s",
        "      {name:vote}..................: avg=",
        "    vus............................: 80       min=7 max=99",
        "  █ HTTP REQUESTS BY NAME",
    ];
    for line in expected_lines {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("BY NAME"))
        .skip(2)
        .collect();
    assert!(
        table[0].starts_with("    name   count   req/s      p50"),
        "{table:?}"
    );
    assert!(
        table[1].starts_with("    info    3000  300.00"),
        "{table:?}"
    );
    assert!(
        table[2].starts_with("    login   4000  400.00"),
        "{table:?}"
    );
    assert!(
        table[3].starts_with("    vote    3000  300.00"),
        "{table:?}"
    );
    assert!(table[3].ends_with("71 (2.37%)"), "{table:?}");
    let duration = text
        .lines()
        .find(|l| l.contains("http_req_duration...."))
        .unwrap();
    for part in [
        "avg=", "min=", "med=", "max=", "p(90)=", "p(95)=", "p(99)=", "ms",
    ] {
        assert!(duration.contains(part), "{duration}");
    }
    let failed = text
        .lines()
        .find(|l| l.contains("http_req_failed...."))
        .unwrap();
    assert!(
        failed.contains("% ") && failed.contains(" out of 10000"),
        "{failed}"
    );
}

#[test]
fn summary_text_exact_for_a_small_run() {
    let mut r = Recorder::new();
    let tags = Tags::new([("name", "vote"), ("status", "200")]);
    let d = r
        .series(
            MetricKind::Trend,
            ValueType::Time,
            "http_req_duration",
            &tags,
        )
        .unwrap();
    let n = r
        .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
        .unwrap();
    let f = r
        .series(
            MetricKind::Rate,
            ValueType::Default,
            "http_req_failed",
            &tags,
        )
        .unwrap();
    let c = r
        .series(
            MetricKind::Rate,
            ValueType::Default,
            "checks",
            &Tags::new([("check", "is 200")]),
        )
        .unwrap();
    for ms in [0.5, 1.0, 1.5, 2.0] {
        r.add_trend(d, ms);
        r.add_counter(n, 1.0);
        r.add_rate(f, false);
        r.add_rate(c, true);
    }
    let mut totals = Totals::new();
    totals.add(&r.take_snapshot(0, 2000)).unwrap();
    let t = Threshold::parse_str("http_req_duration{name:vote}", "p(99)<3").unwrap();
    let o = t.evaluate(&totals);
    let meta = SummaryMeta::new("s.js", "constant-vus", Duration::from_secs(2), 1);
    let text = Summary::build(&totals, &[(t, o)], meta).render_text();
    let expected = "  scenario: s.js  executor: constant-vus  duration: 2.00s  max users: 1

  █ THRESHOLDS

    http_req_duration{name:vote}
    ✓ 'p(99)<3' p(99)=2.00ms

  █ TOTAL RESULTS

    ✓ is 200

    checks.........................: 100.00% 4 out of 4
    http_req_duration..............: avg=1.25ms min=500.00µs med=1.00ms max=2.00ms p(90)=2.00ms p(95)=2.00ms p(99)=2.00ms
      {name:vote}..................: avg=1.25ms min=500.00µs med=1.00ms max=2.00ms p(90)=2.00ms p(95)=2.00ms p(99)=2.00ms
    http_req_failed................: 0.00% 0 out of 4
    http_reqs......................: 4        2.00/s

  █ HTTP REQUESTS BY NAME

    name  count  req/s     p50     p95     p99     max     failed
    vote      4   2.00  1.00ms  2.00ms  2.00ms  2.00ms  0 (0.00%)
";
    assert_eq!(text, expected, "\n{text}");
}
