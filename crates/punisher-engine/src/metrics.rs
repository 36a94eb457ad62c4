//! The built-in metrics a worker records (k6's names) and the custom metrics scripts
//! declare, over one [`Recorder`]. Series ids are cached per tag combination so that the hot
//! path does one hash lookup and a few `Vec` writes, and never builds a [`Tags`] twice.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use punisher_clients::http::Response;
use punisher_metrics::{MetricKind, MetricsError, Recorder, SeriesId, Tags, ValueType};

/// The `scenario` tag of every sample (one scenario per run for now).
pub(crate) const SCENARIO: &str = "default";

/// Distinct request names (`params.name`, else the URL) a worker keeps apart. Each name costs
/// eight HDR histograms; URLs with ids in them (`/users/123`) would otherwise grow memory
/// without bound. Further names are recorded under [`OVERFLOW_NAME`] with one warning.
#[cfg(not(test))]
const MAX_REQUEST_NAMES: usize = 1000;
/// Small in unit tests: every name allocates histograms.
#[cfg(test)]
const MAX_REQUEST_NAMES: usize = 20;
pub(crate) const OVERFLOW_NAME: &str = "(too many names: use params.name)";
/// Tag combinations remembered in [`Metrics::recent`].
const RECENT: usize = 8;

#[derive(Clone, Copy)]
struct HttpSeries {
    reqs: SeriesId,
    duration: SeriesId,
    blocked: SeriesId,
    connecting: SeriesId,
    tls_handshaking: SeriesId,
    sending: SeriesId,
    waiting: SeriesId,
    receiving: SeriesId,
    failed: SeriesId,
}

/// A metric declared by a script (`new Trend('x', true)`).
struct CustomDef {
    kind: MetricKind,
    value_type: ValueType,
    name: Arc<str>,
}

/// Which fixed series an event goes to.
#[derive(Clone, Copy)]
pub(crate) enum Fixed {
    Iterations,
    IterationErrors,
    DroppedIterations,
    BarrierTimeouts,
}

pub(crate) struct Metrics {
    pub(crate) recorder: Recorder,
    base: Tags,
    iterations: SeriesId,
    iteration_duration: SeriesId,
    iteration_errors: SeriesId,
    dropped_iterations: SeriesId,
    barrier_timeouts: SeriesId,
    data_sent: SeriesId,
    data_received: SeriesId,
    http: HashMap<String, HttpSeries>,
    /// The last few tag combinations and their series, compared field by field before a
    /// map key is built and hashed: scenarios request a handful of URLs over and over, and
    /// this keeps a repeated request to a few string compares.
    recent: Vec<(RecentKey, HttpSeries)>,
    request_names: std::collections::HashSet<String>,
    checks: HashMap<(Rc<str>, Option<Rc<str>>), SeriesId>,
    custom: Vec<CustomDef>,
    custom_cache: HashMap<(u32, Option<Rc<str>>), SeriesId>,
}

/// An owned [`HttpTags`] plus the response facts that are tags too.
struct RecentKey {
    name: String,
    method: String,
    group: Option<String>,
    extra: Vec<(String, String)>,
    status: u16,
    error: Option<&'static str>,
}

impl RecentKey {
    fn matches(&self, tags: &HttpTags<'_>, status: u16, error: Option<&'static str>) -> bool {
        self.status == status
            && self.error == error
            && self.name == tags.name
            && self.method == tags.method
            && self.group.as_deref() == tags.group
            && self.extra == tags.extra
    }
}

/// The request facts that make up an HTTP series' tags.
#[derive(Clone, Copy)]
pub(crate) struct HttpTags<'a> {
    pub(crate) name: &'a str,
    pub(crate) method: &'a str,
    pub(crate) group: Option<&'a str>,
    pub(crate) extra: &'a [(String, String)],
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut recorder = Recorder::new();
        let base = Tags::new([("scenario", SCENARIO)]);
        let mut fixed = |kind, vt, name: &str| {
            recorder
                .series(kind, vt, name, &base)
                .expect("built-in metric names are valid and distinct")
        };
        use MetricKind::{Counter, Trend};
        let iterations = fixed(Counter, ValueType::Default, "iterations");
        let iteration_duration = fixed(Trend, ValueType::Time, "iteration_duration");
        let iteration_errors = fixed(Counter, ValueType::Default, "iteration_errors");
        let dropped_iterations = fixed(Counter, ValueType::Default, "dropped_iterations");
        let barrier_timeouts = fixed(Counter, ValueType::Default, "barrier_timeouts");
        let data_sent = fixed(Counter, ValueType::Data, "data_sent");
        let data_received = fixed(Counter, ValueType::Data, "data_received");
        Self {
            recorder,
            base,
            iterations,
            iteration_duration,
            iteration_errors,
            dropped_iterations,
            barrier_timeouts,
            data_sent,
            data_received,
            http: HashMap::new(),
            recent: Vec::with_capacity(RECENT),
            request_names: std::collections::HashSet::new(),
            checks: HashMap::new(),
            custom: Vec::new(),
            custom_cache: HashMap::new(),
        }
    }

    pub(crate) fn count(&mut self, which: Fixed, n: f64) {
        let id = match which {
            Fixed::Iterations => self.iterations,
            Fixed::IterationErrors => self.iteration_errors,
            Fixed::DroppedIterations => self.dropped_iterations,
            Fixed::BarrierTimeouts => self.barrier_timeouts,
        };
        self.recorder.add_counter(id, n);
    }

    pub(crate) fn iteration_duration(&mut self, d: std::time::Duration) {
        self.recorder.add_trend(self.iteration_duration, ms(d));
    }

    pub(crate) fn http(&mut self, tags: &HttpTags<'_>, resp: &Response) {
        let status = resp.status;
        let error = resp.error.map(|e| e.code());
        let series = match self
            .recent
            .iter()
            .find(|(k, _)| k.matches(tags, status, error))
        {
            Some((_, s)) => *s,
            None => {
                let s = self.http_lookup(tags, status, error);
                if self.recent.len() == RECENT {
                    self.recent.pop();
                }
                let key = RecentKey {
                    name: tags.name.to_owned(),
                    method: tags.method.to_owned(),
                    group: tags.group.map(str::to_owned),
                    extra: tags.extra.to_vec(),
                    status,
                    error,
                };
                self.recent.insert(0, (key, s));
                s
            }
        };
        let s = &series;
        let t = &resp.timings;
        let r = &mut self.recorder;
        r.add_counter(s.reqs, 1.0);
        r.add_trend(s.duration, ms(t.duration));
        r.add_trend(s.blocked, ms(t.blocked));
        r.add_trend(s.connecting, ms(t.connecting));
        r.add_trend(s.tls_handshaking, ms(t.tls_handshaking));
        r.add_trend(s.sending, ms(t.sending));
        r.add_trend(s.waiting, ms(t.waiting));
        r.add_trend(s.receiving, ms(t.receiving));
        // k6: a request failed unless its status is 2xx or 3xx.
        r.add_rate(s.failed, !(200..400).contains(&status));
        r.add_counter(self.data_sent, resp.bytes_sent as f64);
        r.add_counter(self.data_received, resp.bytes_received as f64);
    }

    /// The series of a tag combination, made on first use; names past
    /// [`MAX_REQUEST_NAMES`] go to [`OVERFLOW_NAME`].
    fn http_lookup(&mut self, tags: &HttpTags<'_>, status: u16, error: Option<&str>) -> HttpSeries {
        if !self.request_names.contains(tags.name) {
            if self.request_names.len() >= MAX_REQUEST_NAMES {
                let capped = HttpTags {
                    name: OVERFLOW_NAME,
                    ..*tags
                };
                if self.request_names.insert(OVERFLOW_NAME.to_owned()) {
                    tracing::warn!(
                        "more than {MAX_REQUEST_NAMES} distinct request names (URLs); the rest are \
                         recorded as {OVERFLOW_NAME:?}: pass params.name to group dynamic URLs"
                    );
                }
                return self.http_lookup(&capped, status, error);
            }
            self.request_names.insert(tags.name.to_owned());
        }
        let mut key = String::with_capacity(64);
        for part in [
            tags.name,
            tags.method,
            tags.group.unwrap_or(""),
            error.unwrap_or(""),
        ] {
            key.push_str(part);
            key.push('\0');
        }
        key.push_str(itoa(status).as_str());
        for (k, v) in tags.extra {
            key.push('\0');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        if let Some(s) = self.http.get(&key) {
            return *s;
        }
        let series = self.http_series(tags, status, error);
        self.http.insert(key, series);
        series
    }

    fn http_series(&mut self, tags: &HttpTags<'_>, status: u16, error: Option<&str>) -> HttpSeries {
        let mut pairs: Vec<(String, String)> = vec![
            ("scenario".into(), SCENARIO.into()),
            ("name".into(), tags.name.into()),
            ("method".into(), tags.method.into()),
            ("status".into(), status.to_string()),
        ];
        if let Some(g) = tags.group {
            pairs.push(("group".into(), g.into()));
        }
        if let Some(e) = error {
            pairs.push(("error_code".into(), e.into()));
        }
        pairs.extend(tags.extra.iter().cloned());
        let t = Tags::new(pairs);
        let r = &mut self.recorder;
        let mut s = |kind, vt, name: &str| {
            r.series(kind, vt, name, &t)
                .expect("built-in http metric names are valid")
        };
        use MetricKind::{Counter, Rate, Trend};
        use ValueType::{Default, Time};
        HttpSeries {
            reqs: s(Counter, Default, "http_reqs"),
            duration: s(Trend, Time, "http_req_duration"),
            blocked: s(Trend, Time, "http_req_blocked"),
            connecting: s(Trend, Time, "http_req_connecting"),
            tls_handshaking: s(Trend, Time, "http_req_tls_handshaking"),
            sending: s(Trend, Time, "http_req_sending"),
            waiting: s(Trend, Time, "http_req_waiting"),
            receiving: s(Trend, Time, "http_req_receiving"),
            failed: s(Rate, Default, "http_req_failed"),
        }
    }

    pub(crate) fn check(&mut self, name: &Rc<str>, group: Option<&Rc<str>>, pass: bool) {
        let key = (name.clone(), group.cloned());
        let id = match self.checks.get(&key) {
            Some(id) => *id,
            None => {
                let mut tags = self.base.with("check", name);
                if let Some(g) = group {
                    tags = tags.with("group", g);
                }
                let id = self
                    .recorder
                    .series(MetricKind::Rate, ValueType::Default, "checks", &tags)
                    .expect("checks is a built-in rate");
                self.checks.insert(key, id);
                id
            }
        };
        self.recorder.add_rate(id, pass);
    }

    /// Declares a script metric; the same name and kind give the same handle.
    pub(crate) fn declare(
        &mut self,
        kind: MetricKind,
        name: &str,
        is_time: bool,
    ) -> Result<u32, MetricsError> {
        if let Some(i) = self.custom.iter().position(|d| &*d.name == name) {
            let d = &self.custom[i];
            if d.kind != kind {
                return Err(MetricsError::KindMismatch {
                    metric: name.to_owned(),
                    existing: d.kind,
                    new: kind,
                });
            }
            return Ok(i as u32);
        }
        let value_type = if is_time {
            ValueType::Time
        } else {
            ValueType::Default
        };
        // Registering once validates the name and the kind against built-in metrics.
        self.recorder.series(kind, value_type, name, &self.base)?;
        self.custom.push(CustomDef {
            kind,
            value_type,
            name: name.into(),
        });
        Ok((self.custom.len() - 1) as u32)
    }

    /// Adds a sample to a script metric, tagged with the group and the script's tags.
    pub(crate) fn custom_add(
        &mut self,
        handle: u32,
        value: f64,
        group: Option<&Rc<str>>,
        extra: &[(String, String)],
    ) -> Result<(), MetricsError> {
        let Some(def) = self.custom.get(handle as usize) else {
            return Err(MetricsError::InvalidName(format!("#{handle}")));
        };
        let (kind, vt) = (def.kind, def.value_type);
        let id = if extra.is_empty() {
            let key = (handle, group.cloned());
            match self.custom_cache.get(&key) {
                Some(id) => *id,
                None => {
                    let tags = match group {
                        Some(g) => self.base.with("group", g),
                        None => self.base.clone(),
                    };
                    let id = self.recorder.series(kind, vt, &def.name.clone(), &tags)?;
                    self.custom_cache.insert(key, id);
                    id
                }
            }
        } else {
            let mut pairs: Vec<(String, String)> = vec![("scenario".into(), SCENARIO.into())];
            if let Some(g) = group {
                pairs.push(("group".into(), g.to_string()));
            }
            pairs.extend(extra.iter().cloned());
            let name = def.name.clone();
            self.recorder.series(kind, vt, &name, &Tags::new(pairs))?
        };
        match kind {
            MetricKind::Counter => self.recorder.add_counter(id, value),
            MetricKind::Gauge => self.recorder.set_gauge(id, value),
            MetricKind::Rate => self.recorder.add_rate(id, value != 0.0 && !value.is_nan()),
            MetricKind::Trend => self.recorder.add_trend(id, value),
        }
        Ok(())
    }
}

/// Formats a status code without going through `fmt` machinery twice.
fn itoa(n: u16) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_are_capped() {
        let mut m = Metrics::new();
        let resp = Response {
            status: 200,
            ..Default::default()
        };
        for i in 0..MAX_REQUEST_NAMES + 50 {
            let name = format!("http://x/users/{i}");
            let tags = HttpTags {
                name: &name,
                method: "GET",
                group: None,
                extra: &[],
            };
            m.http(&tags, &resp);
        }
        // One series set per kept name plus the overflow name.
        assert_eq!(m.http.len(), MAX_REQUEST_NAMES + 1);
        let snap = m.recorder.take_snapshot(0, 1000);
        let overflow = snap
            .series
            .iter()
            .find(|(k, _)| &*k.metric == "http_reqs" && k.tags.get("name") == Some(OVERFLOW_NAME))
            .map(|(_, v)| v.clone());
        assert!(
            matches!(overflow, Some(punisher_metrics::SeriesData::Counter { sum }) if sum == 50.0)
        );
    }
}
