//! `junit.xml`: one test case per threshold, so that CI systems show a failed sign-off as a
//! failed test with the observed value.

use std::fmt::Write as _;
use std::time::Duration;

use punisher_metrics::ThresholdSummary;

use crate::escape::xml;
use crate::format::num;

/// The name of a threshold's test case: `metric{tags}: expression`.
pub fn case_name(t: &ThresholdSummary) -> String {
    format!("{}: {}", t.metric, t.expression)
}

/// Renders the thresholds of run `run_id` as a JUnit XML report.
pub fn render(run_id: &str, thresholds: &[ThresholdSummary], duration: Duration) -> String {
    let failures = thresholds.iter().filter(|t| !t.ok).count();
    let tests = thresholds.len();
    let time = duration.as_secs_f64();
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<testsuites name="punisher" tests="{tests}" failures="{failures}" errors="0" time="{time:.3}">"#
    );
    let _ = writeln!(
        out,
        r#"  <testsuite name="{}" tests="{tests}" failures="{failures}" errors="0" skipped="0" time="{time:.3}">"#,
        xml(&format!("thresholds of {run_id}"))
    );
    for t in thresholds {
        let name = xml(&case_name(t));
        let observed = match (t.observed, &t.error) {
            (_, Some(e)) => format!("error: {e}"),
            (Some(v), None) => format!("observed {}", num(v)),
            (None, None) => "no data".to_owned(),
        };
        let observed = if t.no_data && t.error.is_none() && t.observed.is_some() {
            format!("{observed} (no data)")
        } else {
            observed
        };
        if t.ok {
            let _ = writeln!(
                out,
                r#"    <testcase classname="punisher.thresholds" name="{name}" time="0">"#
            );
            let _ = writeln!(out, "      <system-out>{}</system-out>", xml(&observed));
            let _ = writeln!(out, "    </testcase>");
        } else {
            let _ = writeln!(
                out,
                r#"    <testcase classname="punisher.thresholds" name="{name}" time="0">"#
            );
            let message = format!("{} failed: {observed}", t.expression);
            let _ = writeln!(
                out,
                r#"      <failure message="{}" type="threshold">{} on {}: {}</failure>"#,
                xml(&message),
                xml(&t.expression),
                xml(&t.metric),
                xml(&observed)
            );
            let _ = writeln!(out, "    </testcase>");
        }
    }
    let _ = writeln!(out, "  </testsuite>");
    let _ = writeln!(out, "</testsuites>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(metric: &str, expr: &str, ok: bool, observed: Option<f64>) -> ThresholdSummary {
        ThresholdSummary {
            metric: metric.into(),
            expression: expr.into(),
            ok,
            observed,
            no_data: observed.is_none(),
            abort_on_fail: false,
            error: None,
        }
    }

    #[test]
    fn exact_document() {
        let ts = [
            threshold(
                "http_req_duration{name:vote}",
                "p(99)<500",
                false,
                Some(612.5),
            ),
            threshold("http_req_failed", "rate<0.01", true, Some(0.0)),
            threshold("x{name:<a&b>}", "avg<\"1\"", true, None),
        ];
        let got = render("run-1", &ts, Duration::from_millis(61_500));
        let expect = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="punisher" tests="3" failures="1" errors="0" time="61.500">
  <testsuite name="thresholds of run-1" tests="3" failures="1" errors="0" skipped="0" time="61.500">
    <testcase classname="punisher.thresholds" name="http_req_duration{name:vote}: p(99)&lt;500" time="0">
      <failure message="p(99)&lt;500 failed: observed 612.50" type="threshold">p(99)&lt;500 on http_req_duration{name:vote}: observed 612.50</failure>
    </testcase>
    <testcase classname="punisher.thresholds" name="http_req_failed: rate&lt;0.01" time="0">
      <system-out>observed 0</system-out>
    </testcase>
    <testcase classname="punisher.thresholds" name="x{name:&lt;a&amp;b&gt;}: avg&lt;&quot;1&quot;" time="0">
      <system-out>no data</system-out>
    </testcase>
  </testsuite>
</testsuites>
"#;
        assert_eq!(got, expect);
    }

    #[test]
    fn no_thresholds_is_an_empty_passing_suite() {
        let got = render("r", &[], Duration::ZERO);
        assert!(got.contains(r#"tests="0" failures="0""#), "{got}");
    }
}
