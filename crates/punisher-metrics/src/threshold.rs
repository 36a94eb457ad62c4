//! Thresholds with k6's syntax: a selector `metric{tag:value}` and an expression
//! `AGGREGATION OPERATOR NUMBER` such as `p(95)<200`, parsed once and evaluated on [`Totals`].

use std::fmt;
use std::time::Duration;

use punisher_core::ThresholdSpec;

use crate::series::{MetricKind, SeriesKey, Tags};
use crate::snapshot::{SeriesData, TREND_SCALE};
use crate::totals::Totals;

const EXPRESSION_HELP: &str = "write AGGREGATION OPERATOR NUMBER, e.g. `p(95)<200`, \
     `p(99.9)<=500`, `avg<100`, `med<50`, `rate<0.01`, `count>0`, `value<100` \
     (trend values are milliseconds, with no unit)";
const SELECTOR_HELP: &str = "write a metric name with an optional tag filter, e.g. \
     `http_req_duration` or `http_req_duration{name:vote,method:POST}`";

/// A threshold that cannot be used; the message quotes the bad part and shows valid forms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    #[error("invalid threshold selector `{selector}`: {message}; {SELECTOR_HELP}")]
    Selector { selector: String, message: String },
    #[error("invalid threshold `{expression}`: {message}; {EXPRESSION_HELP}")]
    Expression { expression: String, message: String },
    #[error(
        "threshold `{expression}` on `{metric}`: `{aggregation}` does not apply to a {kind} \
         metric; use {allowed}"
    )]
    Kind {
        expression: String,
        metric: String,
        aggregation: String,
        kind: MetricKind,
        allowed: String,
    },
}

/// How the metric's data is reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Med,
    /// `p(N)`, N in `[0, 100]`, fractional allowed.
    Percentile(f64),
    Count,
    Rate,
    /// A gauge's last value.
    Value,
}

impl Aggregation {
    /// The aggregations a metric kind supports, as k6 defines them.
    pub fn allowed_for(kind: MetricKind) -> &'static str {
        match kind {
            MetricKind::Trend => "avg, min, max, med, p(N) or count",
            MetricKind::Rate => "rate",
            MetricKind::Counter => "count or rate",
            MetricKind::Gauge => "value, min or max",
        }
    }

    pub fn applies_to(self, kind: MetricKind) -> bool {
        use Aggregation::*;
        match kind {
            MetricKind::Trend => matches!(self, Avg | Min | Max | Med | Percentile(_) | Count),
            MetricKind::Rate => matches!(self, Rate),
            MetricKind::Counter => matches!(self, Count | Rate),
            MetricKind::Gauge => matches!(self, Value | Min | Max),
        }
    }

    /// The value of this aggregation on `data`, with `elapsed` for a counter's rate.
    /// `None` when it does not apply to the data's kind or there is nothing to aggregate.
    pub fn observe(self, data: &SeriesData, elapsed: Duration) -> Option<f64> {
        use Aggregation::*;
        if !self.applies_to(data.kind()) {
            return None;
        }
        match data {
            SeriesData::Trend { hist, .. } => {
                if self == Count {
                    return Some(hist.len() as f64);
                }
                if hist.is_empty() {
                    return None;
                }
                let raw = match self {
                    Avg => hist.mean(),
                    Min => hist.min() as f64,
                    Max => hist.max() as f64,
                    Med => hist.value_at_quantile(0.5) as f64,
                    Percentile(p) => hist.value_at_quantile(p / 100.0) as f64,
                    _ => return None,
                };
                Some(raw / TREND_SCALE)
            }
            SeriesData::Counter { sum } => match self {
                Count => Some(*sum),
                Rate => {
                    let secs = elapsed.as_secs_f64();
                    Some(if secs > 0.0 { sum / secs } else { 0.0 })
                }
                _ => None,
            },
            SeriesData::Rate { passes, total } => {
                (*total > 0).then(|| *passes as f64 / *total as f64)
            }
            SeriesData::Gauge { last, min, max, .. } => match self {
                Value => Some(*last),
                Min => Some(*min),
                Max => Some(*max),
                _ => None,
            },
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Avg => f.write_str("avg"),
            Self::Min => f.write_str("min"),
            Self::Max => f.write_str("max"),
            Self::Med => f.write_str("med"),
            Self::Percentile(p) => write!(f, "p({p})"),
            Self::Count => f.write_str("count"),
            Self::Rate => f.write_str("rate"),
            Self::Value => f.write_str("value"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    /// k6 accepts `===`; it means the same as `==` on numbers.
    StrictEq,
    Ne,
}

impl Operator {
    // Longest first, so `<=` is not read as `<` followed by `=`.
    const ALL: [(&'static str, Operator); 7] = [
        ("===", Operator::StrictEq),
        ("==", Operator::Eq),
        ("!=", Operator::Ne),
        ("<=", Operator::Le),
        (">=", Operator::Ge),
        ("<", Operator::Lt),
        (">", Operator::Gt),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("?", |(s, _)| s)
    }

    pub fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Self::Lt => observed < limit,
            Self::Le => observed <= limit,
            Self::Gt => observed > limit,
            Self::Ge => observed >= limit,
            Self::Eq | Self::StrictEq => observed == limit,
            Self::Ne => observed != limit,
        }
    }
}

/// The result of evaluating one threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdOutcome {
    pub passed: bool,
    /// The aggregated value compared with the limit.
    pub observed: Option<f64>,
    /// No series matched the selector. Such thresholds pass, except `count` and `rate`,
    /// which see 0 (a counter never incremented has count 0).
    pub no_data: bool,
    /// Why the threshold could not be evaluated (its aggregation does not fit the metric).
    pub error: Option<String>,
}

/// A parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub spec: ThresholdSpec,
    pub metric: String,
    pub filter: Tags,
    pub aggregation: Aggregation,
    pub operator: Operator,
    pub limit: f64,
}

impl Threshold {
    pub fn parse(spec: &ThresholdSpec) -> Result<Threshold, ThresholdError> {
        let (metric, filter) = parse_selector(&spec.selector)?;
        let (aggregation, operator, limit) = parse_expression(&spec.expression)?;
        Ok(Threshold {
            spec: spec.clone(),
            metric,
            filter,
            aggregation,
            operator,
            limit,
        })
    }

    /// Shorthand for tests and tools: `Threshold::parse_str("http_reqs", "count>0")`.
    pub fn parse_str(selector: &str, expression: &str) -> Result<Threshold, ThresholdError> {
        Threshold::parse(&ThresholdSpec {
            selector: selector.to_owned(),
            expression: expression.to_owned(),
            abort_on_fail: false,
            delay_abort_eval: None,
        })
    }

    /// The series the threshold reads, e.g. `http_req_duration{name:vote}`.
    pub fn selector_key(&self) -> SeriesKey {
        SeriesKey::new(self.metric.as_str(), self.filter.clone())
    }

    /// Whether the aggregation fits the metric's kind, once the kind is known (the first
    /// data of the metric, or its registration).
    pub fn check_kind(&self, kind: MetricKind) -> Result<(), ThresholdError> {
        if self.aggregation.applies_to(kind) {
            return Ok(());
        }
        Err(ThresholdError::Kind {
            expression: self.spec.expression.trim().to_owned(),
            metric: self.spec.selector.trim().to_owned(),
            aggregation: self.aggregation.to_string(),
            kind,
            allowed: Aggregation::allowed_for(kind).to_owned(),
        })
    }

    pub fn evaluate(&self, totals: &Totals) -> ThresholdOutcome {
        let judge = |observed: f64, no_data: bool| ThresholdOutcome {
            passed: self.operator.holds(observed, self.limit),
            observed: Some(observed),
            no_data,
            error: None,
        };
        let no_data = || match self.aggregation {
            Aggregation::Count | Aggregation::Rate => judge(0.0, true),
            _ => ThresholdOutcome {
                passed: true,
                observed: None,
                no_data: true,
                error: None,
            },
        };
        let Some(data) = totals.aggregate(&self.metric, &self.filter) else {
            return no_data();
        };
        if let Err(e) = self.check_kind(data.kind()) {
            return ThresholdOutcome {
                passed: false,
                observed: None,
                no_data: false,
                error: Some(e.to_string()),
            };
        }
        match self.aggregation.observe(&data, totals.elapsed()) {
            Some(v) => judge(v, false),
            None => no_data(),
        }
    }
}

fn selector_error(selector: &str, message: impl Into<String>) -> ThresholdError {
    ThresholdError::Selector {
        selector: selector.to_owned(),
        message: message.into(),
    }
}

fn parse_selector(selector: &str) -> Result<(String, Tags), ThresholdError> {
    let s = selector.trim();
    let err = |m: String| selector_error(selector, m);
    let (metric, inner) = match s.find('{') {
        None => (s, None),
        Some(i) => {
            let rest = s[i + 1..].trim_end();
            let Some(inner) = rest.strip_suffix('}') else {
                return Err(err("the tag filter has no closing `}`".into()));
            };
            (s[..i].trim(), Some(inner))
        }
    };
    if metric.is_empty() {
        return Err(err("the metric name is missing".into()));
    }
    if let Some(c) = metric
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '{' | '}' | ':' | ',' | '"' | '\''))
    {
        return Err(err(format!("the metric name contains {c:?}")));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(inner) = inner {
        if inner.contains(['{', '}']) {
            return Err(err("nested braces in the tag filter".into()));
        }
        if !inner.trim().is_empty() {
            for part in inner.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    return Err(err(
                        "an empty entry in the tag filter (a stray comma?)".into()
                    ));
                }
                let Some((k, v)) = part.split_once(':') else {
                    return Err(err(format!("tag `{part}` has no value; write key:value")));
                };
                let k = unquote(k.trim());
                let v = unquote(v.trim());
                if k.is_empty() {
                    return Err(err(format!("tag `{part}` has no name")));
                }
                if pairs.iter().any(|(seen, _)| seen == k) {
                    return Err(err(format!("tag `{k}` appears twice")));
                }
                pairs.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    Ok((metric.to_owned(), Tags::new(pairs)))
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

fn parse_expression(expression: &str) -> Result<(Aggregation, Operator, f64), ThresholdError> {
    let err = |m: String| ThresholdError::Expression {
        expression: expression.to_owned(),
        message: m,
    };
    let s = expression.trim();
    if s.is_empty() {
        return Err(err("the expression is empty".into()));
    }
    let word_end = s
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(s.len());
    let word = &s[..word_end];
    let mut rest = s[word_end..].trim_start();
    let aggregation = match word {
        "avg" => Aggregation::Avg,
        "min" => Aggregation::Min,
        "max" => Aggregation::Max,
        "med" => Aggregation::Med,
        "count" => Aggregation::Count,
        "rate" => Aggregation::Rate,
        "value" => Aggregation::Value,
        "p" => {
            let Some(after) = rest.strip_prefix('(') else {
                return Err(err(
                    "`p` needs a percentile in parentheses, like p(95)".into()
                ));
            };
            let Some(close) = after.find(')') else {
                return Err(err("`p(` has no closing `)`".into()));
            };
            let number = after[..close].trim();
            let p: f64 = number
                .parse()
                .ok()
                .filter(|p: &f64| p.is_finite() && (0.0..=100.0).contains(p))
                .ok_or_else(|| {
                    err(format!(
                        "percentile `{number}` is not a number from 0 to 100"
                    ))
                })?;
            rest = after[close + 1..].trim_start();
            Aggregation::Percentile(p)
        }
        "" => return Err(err("the aggregation method is missing".into())),
        w if w.starts_with('p') && w[1..].parse::<f64>().is_ok() => {
            return Err(err(format!("write percentiles as p({}), not {w}", &w[1..])));
        }
        w => {
            return Err(err(format!(
                "unknown aggregation method `{w}` (known: avg, min, max, med, p(N), count, rate, value)"
            )));
        }
    };
    let Some((token, operator)) = Operator::ALL
        .iter()
        .find(|(token, _)| rest.starts_with(token))
        .copied()
    else {
        let found = rest
            .chars()
            .next()
            .map_or("nothing".to_owned(), |c| format!("`{c}`"));
        return Err(err(format!(
            "expected an operator (<, <=, >, >=, ==, !=) after `{aggregation}`, found {found}"
        )));
    };
    let number = rest[token.len()..].trim();
    if number.is_empty() {
        return Err(err(format!("a number is missing after `{token}`")));
    }
    let limit: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| err(format!("`{number}` is not a plain number")))?;
    Ok((aggregation, operator, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Recorder;
    use crate::series::ValueType;

    fn parse(selector: &str, expression: &str) -> Result<Threshold, ThresholdError> {
        Threshold::parse_str(selector, expression)
    }

    #[test]
    fn parses_good_thresholds() {
        use Aggregation as A;
        use Operator as O;
        let cases: &[(&str, &str, &str, &str, A, O, f64)] = &[
            (
                "http_req_duration",
                "p(95)<200",
                "http_req_duration",
                "",
                A::Percentile(95.0),
                O::Lt,
                200.0,
            ),
            (
                "http_req_duration",
                " p( 99.9 ) <= 500.5 ",
                "http_req_duration",
                "",
                A::Percentile(99.9),
                O::Le,
                500.5,
            ),
            (
                "http_req_duration{name:vote}",
                "avg<100",
                "http_req_duration",
                "{name:vote}",
                A::Avg,
                O::Lt,
                100.0,
            ),
            (
                " d { name : vote , method:POST } ",
                "med>=1",
                "d",
                "{method:POST,name:vote}",
                A::Med,
                O::Ge,
                1.0,
            ),
            ("d{}", "min>0", "d", "", A::Min, O::Gt, 0.0),
            (
                "d{url:http://x/y}",
                "max<1e3",
                "d",
                "{url:http://x/y}",
                A::Max,
                O::Lt,
                1000.0,
            ),
            (
                "d{name:'a b'}",
                "count==3",
                "d",
                "{name:a b}",
                A::Count,
                O::Eq,
                3.0,
            ),
            ("checks", "rate>0.95", "checks", "", A::Rate, O::Gt, 0.95),
            ("vus", "value!=0", "vus", "", A::Value, O::Ne, 0.0),
            ("vus", "value===-1", "vus", "", A::Value, O::StrictEq, -1.0),
            (
                "http_req_failed",
                "rate<=.01",
                "http_req_failed",
                "",
                A::Rate,
                O::Le,
                0.01,
            ),
            ("d", "p(0)>0", "d", "", A::Percentile(0.0), O::Gt, 0.0),
            ("d", "p(100)>0", "d", "", A::Percentile(100.0), O::Gt, 0.0),
        ];
        for (selector, expression, metric, tags, agg, op, limit) in cases {
            let t = parse(selector, expression)
                .unwrap_or_else(|e| panic!("{selector} {expression}: {e}"));
            assert_eq!(t.metric, *metric, "{selector}");
            assert_eq!(t.filter.to_string(), *tags, "{selector}");
            assert_eq!(
                (t.aggregation, t.operator, t.limit),
                (*agg, *op, *limit),
                "{expression}"
            );
        }
    }

    #[test]
    fn rejects_bad_thresholds_with_a_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("d", "", "empty"),
            ("d", "<200", "aggregation method is missing"),
            ("d", "p95<200", "p(95)"),
            ("d", "p(95<200", "no closing"),
            ("d", "p(101)<200", "from 0 to 100"),
            ("d", "p(x)<200", "from 0 to 100"),
            ("d", "p<200", "parentheses"),
            ("d", "average<200", "unknown aggregation method `average`"),
            ("d", "avg 200", "expected an operator"),
            ("d", "avg=200", "expected an operator"),
            ("d", "avg<", "number is missing"),
            ("d", "avg<200ms", "`200ms` is not a plain number"),
            ("d", "avg<inf", "not a plain number"),
            ("d", "avg<NaN", "not a plain number"),
            ("d", "avg<1 2", "not a plain number"),
            ("", "avg<1", "metric name is missing"),
            ("{name:x}", "avg<1", "metric name is missing"),
            ("d{name:x", "avg<1", "closing `}`"),
            ("d{name}", "avg<1", "has no value"),
            ("d{name:x,}", "avg<1", "empty entry"),
            ("d{:x}", "avg<1", "has no name"),
            ("d{a:1,a:2}", "avg<1", "appears twice"),
            ("d{a:{b}}", "avg<1", "nested"),
            ("my metric", "avg<1", "contains"),
        ];
        for (selector, expression, expect) in cases {
            let e = parse(selector, expression).unwrap_err().to_string();
            assert!(e.contains(expect), "{selector:?} {expression:?}: {e}");
            // Every message shows how to write it instead.
            assert!(e.contains("e.g."), "{e}");
        }
    }

    #[test]
    fn check_kind_lists_what_applies() {
        let t = parse("http_req_duration", "rate<0.1").unwrap();
        let e = t.check_kind(MetricKind::Trend).unwrap_err().to_string();
        assert!(e.contains("avg, min, max, med, p(N) or count"), "{e}");
        assert!(t.check_kind(MetricKind::Rate).is_ok());
        assert!(t.check_kind(MetricKind::Counter).is_ok());
        assert!(
            parse("x", "value<1")
                .unwrap()
                .check_kind(MetricKind::Trend)
                .is_err()
        );
        assert!(
            parse("x", "min<1")
                .unwrap()
                .check_kind(MetricKind::Gauge)
                .is_ok()
        );
    }

    fn totals() -> Totals {
        let mut r = Recorder::new();
        let vote = Tags::new([("name", "vote")]);
        let info = Tags::new([("name", "info")]);
        let dv = r
            .series(MetricKind::Trend, ValueType::Time, "d", &vote)
            .unwrap();
        let di = r
            .series(MetricKind::Trend, ValueType::Time, "d", &info)
            .unwrap();
        let reqs = r
            .series(MetricKind::Counter, ValueType::Default, "reqs", &vote)
            .unwrap();
        let failed = r
            .series(MetricKind::Rate, ValueType::Default, "failed", &vote)
            .unwrap();
        let vus = r
            .series(MetricKind::Gauge, ValueType::Default, "vus", &Tags::empty())
            .unwrap();
        for v in 1..=100 {
            r.add_trend(dv, v as f64); // 1..100 ms
            r.add_trend(di, 1000.0);
            r.add_counter(reqs, 1.0);
            r.add_rate(failed, v % 10 == 0);
        }
        r.set_gauge(vus, 7.0);
        r.set_gauge(vus, 3.0);
        let mut t = Totals::new();
        t.add(&r.take_snapshot(0, 10_000)).unwrap();
        t
    }

    #[test]
    fn evaluates_on_hand_built_totals() {
        let totals = totals();
        // (selector, expression, passed, observed, no_data)
        let cases: &[(&str, &str, bool, Option<f64>, bool)] = &[
            ("d{name:vote}", "avg<51", true, Some(50.5), false),
            ("d{name:vote}", "avg<50", false, Some(50.5), false),
            ("d{name:vote}", "min==1", true, Some(1.0), false),
            ("d{name:vote}", "max>=100", true, Some(100.0), false),
            ("d{name:vote}", "med<=50.1", true, Some(50.0), false),
            ("d{name:vote}", "p(90)<90.5", true, Some(90.0), false),
            ("d{name:vote}", "p(99.9)<100", false, Some(100.0), false),
            ("d{name:vote}", "count==100", true, Some(100.0), false),
            ("d", "count==200", true, Some(200.0), false),
            ("d", "p(50)<=100.1", true, Some(100.0), false),
            ("d", "p(51)<=100", false, Some(1000.0), false),
            ("d{name:nope}", "p(95)<1", true, None, true),
            ("nothing", "avg<1", true, None, true),
            ("nothing", "count>0", false, Some(0.0), true),
            ("nothing", "rate<0.01", true, Some(0.0), true),
            ("reqs", "count>99", true, Some(100.0), false),
            ("reqs", "rate==10", true, Some(10.0), false),
            ("failed", "rate<0.1", false, Some(0.1), false),
            ("failed", "rate<=0.1", true, Some(0.1), false),
            ("vus", "value==3", true, Some(3.0), false),
            ("vus", "max==7", true, Some(7.0), false),
            ("vus", "min!=3", false, Some(3.0), false),
        ];
        for (selector, expression, passed, observed, no_data) in cases {
            let t = parse(selector, expression).unwrap();
            let o = t.evaluate(&totals);
            // HDR values are exact to 3 significant digits: compare within 0.1%.
            let close = match (o.observed, observed) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                (a, b) => a == *b,
            };
            assert!(
                close && (o.passed, o.no_data, o.error.is_none()) == (*passed, *no_data, true),
                "{selector} {expression}: {o:?}"
            );
        }
        // The wrong aggregation for the kind fails with a message.
        let o = parse("d", "rate<1").unwrap().evaluate(&totals);
        assert!(
            !o.passed && o.error.as_deref().unwrap().contains("does not apply"),
            "{o:?}"
        );
    }
}
