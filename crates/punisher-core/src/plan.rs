//! The [`Plan`]: what a scenario's exported `options`, after command-line overrides, ask
//! for. Executors here are pure schedules (who starts when); running them is the engine's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::{DurationError, parse_duration_value};

/// Options that are invalid. The message names the option and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("options.{option}: {source}")]
    Duration {
        option: String,
        source: DurationError,
    },
    #[error("options.{option}: {message}")]
    Invalid { option: String, message: String },
    #[error(
        "options define no workload: set `users` and `rampUp` (session users), `vus` and \
         `duration`, `stages`, or `rate` and `duration` (or pass --users / --vus / --stages / --rate)"
    )]
    NoWorkload,
    #[error("options mix executors ({0}); keep one of them")]
    Conflicting(String),
}

fn invalid(option: &str, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        option: option.to_owned(),
        message: message.into(),
    }
}

/// One step of a ramping executor: reach `target` linearly over `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    #[serde(with = "crate::duration::serde_human")]
    pub duration: Duration,
    pub target: u64,
}

/// How virtual users are started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Executor {
    /// Users arrive evenly over `ramp_up`; each runs the default function once (a session).
    SessionUsers {
        users: u64,
        #[serde(with = "crate::duration::serde_human")]
        ramp_up: Duration,
        #[serde(with = "crate::duration::serde_human::option")]
        max_duration: Option<Duration>,
    },
    /// `vus` looping users for `duration`.
    ConstantVus {
        vus: u64,
        #[serde(with = "crate::duration::serde_human")]
        duration: Duration,
    },
    /// Looping users whose number follows `stages` linearly, from `start_vus`.
    RampingVus { start_vus: u64, stages: Vec<Stage> },
    /// An open model: `rate` iterations per `time_unit`, each on a free pre-allocated user.
    ConstantArrivalRate {
        rate: f64,
        #[serde(with = "crate::duration::serde_human")]
        time_unit: Duration,
        #[serde(with = "crate::duration::serde_human")]
        duration: Duration,
        pre_allocated_vus: u64,
        max_vus: u64,
    },
}

impl Executor {
    /// A one-word name for plans and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SessionUsers { .. } => "session-users",
            Self::ConstantVus { .. } => "constant-vus",
            Self::RampingVus { .. } => "ramping-vus",
            Self::ConstantArrivalRate { .. } => "constant-arrival-rate",
        }
    }

    /// How long the schedule runs, not counting the graceful stop. Session users have no
    /// fixed end: this is their ramp (or their cap when one is set).
    pub fn planned_duration(&self) -> Duration {
        match self {
            Self::SessionUsers {
                ramp_up,
                max_duration,
                ..
            } => max_duration.unwrap_or(*ramp_up),
            Self::ConstantVus { duration, .. } | Self::ConstantArrivalRate { duration, .. } => {
                *duration
            }
            Self::RampingVus { stages, .. } => stages.iter().map(|s| s.duration).sum(),
        }
    }

    /// The largest number of concurrent users the schedule asks for (before live scaling).
    pub fn max_users(&self) -> u64 {
        match self {
            Self::SessionUsers { users, .. } => *users,
            Self::ConstantVus { vus, .. } => *vus,
            Self::RampingVus { start_vus, stages } => stages
                .iter()
                .map(|s| s.target)
                .chain([*start_vus])
                .max()
                .unwrap_or(0),
            Self::ConstantArrivalRate { max_vus, .. } => *max_vus,
        }
    }

    /// When session user or arrival number `k` (0-based, test-wide) is due, from the start.
    /// `None` for looping executors, and past the end of the schedule.
    pub fn arrival_offset(&self, k: u64) -> Option<Duration> {
        match self {
            Self::SessionUsers { users, ramp_up, .. } => {
                (k < *users).then(|| ramp_up.mul_f64(k as f64 / *users as f64))
            }
            Self::ConstantArrivalRate {
                rate,
                time_unit,
                duration,
                ..
            } => {
                let at = time_unit.mul_f64(k as f64 / rate);
                (at < *duration).then_some(at)
            }
            Self::ConstantVus { .. } | Self::RampingVus { .. } => None,
        }
    }

    /// The number of looping users wanted `elapsed` after the start (looping executors).
    pub fn target_vus_at(&self, elapsed: Duration) -> u64 {
        match self {
            Self::ConstantVus { vus, duration } => {
                if elapsed < *duration {
                    *vus
                } else {
                    0
                }
            }
            Self::RampingVus { start_vus, stages } => {
                let mut from = *start_vus as f64;
                let mut stage_start = Duration::ZERO;
                for stage in stages {
                    let stage_end = stage_start + stage.duration;
                    if elapsed < stage_end {
                        let progress = if stage.duration.is_zero() {
                            1.0
                        } else {
                            (elapsed - stage_start).as_secs_f64() / stage.duration.as_secs_f64()
                        };
                        return (from + (stage.target as f64 - from) * progress).round() as u64;
                    }
                    from = stage.target as f64;
                    stage_start = stage_end;
                }
                0
            }
            Self::SessionUsers { .. } | Self::ConstantArrivalRate { .. } => 0,
        }
    }
}

/// One threshold expression on a metric selector, e.g. `p(95)<200` on `http_req_duration{name:vote}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSpec {
    /// The metric name with an optional tag filter: `http_req_duration{name:vote}`.
    pub selector: String,
    /// The expression: `p(95)<200`, `rate<0.01`, `count>0`.
    pub expression: String,
    pub abort_on_fail: bool,
    #[serde(with = "crate::duration::serde_human::option")]
    pub delay_abort_eval: Option<Duration>,
}

/// HTTP options from `options.http` (and `insecureSkipTLSVerify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOptions {
    /// Users share one connection pool per worker instead of each having its own.
    pub share_connections: bool,
    /// Response bytes kept per body; the rest is read, counted and discarded.
    pub max_body_bytes: u64,
    /// Default request timeout.
    #[serde(with = "crate::duration::serde_human")]
    pub timeout: Duration,
    pub insecure_skip_tls_verify: bool,
}

/// What to run: the validated, typed form of a scenario's options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub executor: Executor,
    pub thresholds: Vec<ThresholdSpec>,
    pub http: HttpOptions,
    /// Time that in-flight iterations get to finish when the schedule ends or a stop is asked.
    #[serde(with = "crate::duration::serde_human")]
    pub graceful_stop: Duration,
    #[serde(with = "crate::duration::serde_human")]
    pub setup_timeout: Duration,
    #[serde(with = "crate::duration::serde_human")]
    pub teardown_timeout: Duration,
    /// Options we did not recognise: shown as warnings, never fatal (k6 ignores them too).
    pub unknown_options: Vec<String>,
}

/// Command-line overrides of the scenario's options (`--users`, `--ramp-up`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub users: Option<u64>,
    pub ramp_up: Option<String>,
    pub duration: Option<String>,
    pub vus: Option<u64>,
    pub rate: Option<f64>,
    /// `"30s:100,1m:100,10s:0"`.
    pub stages: Option<String>,
    pub insecure: bool,
}

const SESSION_KEYS: &[&str] = &["users", "rampUp"];
const RATE_KEYS: &[&str] = &["rate", "timeUnit", "preAllocatedVUs", "maxVUs"];
const STAGE_KEYS: &[&str] = &["stages"];
const VU_KEYS: &[&str] = &["vus"];
const KNOWN_KEYS: &[&str] = &[
    "users",
    "rampUp",
    "duration",
    "vus",
    "stages",
    "rate",
    "timeUnit",
    "preAllocatedVUs",
    "maxVUs",
    "thresholds",
    "http",
    "insecureSkipTLSVerify",
    "gracefulStop",
    "setupTimeout",
    "teardownTimeout",
    "summaryTrendStats",
    "tags",
    "socketio",
];

impl Overrides {
    /// Applies the overrides to the raw options object. A flag that picks an executor
    /// removes the keys of the other executors, so `--vus 10` wins over `users` in the script.
    pub fn apply(&self, options: &mut Map<String, Value>) -> Result<(), PlanError> {
        let mut family: Option<&[&str]> = None;
        if let Some(users) = self.users {
            options.insert("users".into(), users.into());
            family = Some(SESSION_KEYS);
        }
        if let Some(ramp) = &self.ramp_up {
            options.insert("rampUp".into(), ramp.clone().into());
            family.get_or_insert(SESSION_KEYS);
        }
        if let Some(rate) = self.rate {
            options.insert("rate".into(), rate.into());
            family = Some(RATE_KEYS);
        }
        if let Some(stages) = &self.stages {
            options.insert("stages".into(), parse_stages_flag(stages)?);
            family = Some(STAGE_KEYS);
        }
        if let Some(vus) = self.vus {
            options.insert("vus".into(), vus.into());
            if family.is_none() {
                family = Some(VU_KEYS);
            }
        }
        if let Some(duration) = &self.duration {
            options.insert("duration".into(), duration.clone().into());
        }
        if self.insecure {
            options.insert("insecureSkipTLSVerify".into(), true.into());
        }
        if let Some(keep) = family {
            for other in [SESSION_KEYS, RATE_KEYS, STAGE_KEYS, VU_KEYS] {
                if std::ptr::eq(other, keep) {
                    continue;
                }
                // `vus` is the start level of stages and a sizing hint for arrival rate.
                if std::ptr::eq(other, VU_KEYS)
                    && (std::ptr::eq(keep, STAGE_KEYS) || self.vus.is_some())
                {
                    continue;
                }
                for key in other {
                    options.remove(*key);
                }
            }
        }
        Ok(())
    }
}

/// Parses `--stages 30s:100,1m:100,10s:0`.
fn parse_stages_flag(flag: &str) -> Result<Value, PlanError> {
    let mut stages = Vec::new();
    for part in flag.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (duration, target) = part.split_once(':').ok_or_else(|| {
            invalid(
                "stages",
                format!("{part:?}: write DURATION:TARGET, e.g. 30s:100"),
            )
        })?;
        let target: u64 = target.trim().parse().map_err(|_| {
            invalid(
                "stages",
                format!("{part:?}: the target must be a whole number"),
            )
        })?;
        stages.push(serde_json::json!({ "duration": duration.trim(), "target": target }));
    }
    if stages.is_empty() {
        return Err(invalid(
            "stages",
            "no stage given; write e.g. 30s:100,1m:100,10s:0",
        ));
    }
    Ok(Value::Array(stages))
}

fn duration_opt(options: &Map<String, Value>, key: &str) -> Result<Option<Duration>, PlanError> {
    options
        .get(key)
        .filter(|v| !v.is_null())
        .map(|v| {
            parse_duration_value(v).map_err(|source| PlanError::Duration {
                option: key.to_owned(),
                source,
            })
        })
        .transpose()
}

fn count_opt(options: &Map<String, Value>, key: &str) -> Result<Option<u64>, PlanError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| invalid(key, format!("expected a whole number >= 0, got {v}"))),
    }
}

impl Plan {
    /// Builds the plan from the scenario's `options` (a JSON object, or null when the
    /// script exports none) after applying the command-line overrides.
    pub fn from_options(options: &Value, overrides: &Overrides) -> Result<Plan, PlanError> {
        let mut options = match options {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => {
                return Err(invalid(
                    "",
                    format!("options must be an object, got {other}"),
                ));
            }
        };
        overrides.apply(&mut options)?;
        let executor = executor_from(&options)?;
        let thresholds = thresholds_from(options.get("thresholds"))?;
        let http = http_from(&options)?;
        let unknown_options = options
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok(Plan {
            executor,
            thresholds,
            http,
            graceful_stop: duration_opt(&options, "gracefulStop")?
                .unwrap_or(Duration::from_secs(30)),
            setup_timeout: duration_opt(&options, "setupTimeout")?
                .unwrap_or(Duration::from_secs(60)),
            teardown_timeout: duration_opt(&options, "teardownTimeout")?
                .unwrap_or(Duration::from_secs(60)),
            unknown_options,
        })
    }
}

fn executor_from(options: &Map<String, Value>) -> Result<Executor, PlanError> {
    let has = |keys: &[&str]| {
        keys.iter()
            .any(|k| options.get(*k).is_some_and(|v| !v.is_null()))
    };
    let families: Vec<&str> = [
        (has(&["users"]), "users"),
        (has(&["rate"]), "rate"),
        (has(STAGE_KEYS), "stages"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    if families.len() > 1 {
        return Err(PlanError::Conflicting(families.join(", ")));
    }
    let duration = duration_opt(options, "duration")?;
    if has(&["users"]) {
        let users = count_opt(options, "users")?.unwrap_or(0);
        let ramp_up = duration_opt(options, "rampUp")?.unwrap_or(Duration::ZERO);
        if users == 0 {
            return Err(invalid("users", "must be at least 1"));
        }
        return Ok(Executor::SessionUsers {
            users,
            ramp_up,
            max_duration: duration,
        });
    }
    if has(&["rate"]) {
        let rate = options["rate"]
            .as_f64()
            .filter(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| invalid("rate", "must be a number > 0 (iterations per timeUnit)"))?;
        let duration =
            duration.ok_or_else(|| invalid("duration", "an arrival rate needs a duration"))?;
        let time_unit = duration_opt(options, "timeUnit")?.unwrap_or(Duration::from_secs(1));
        if time_unit.is_zero() {
            return Err(invalid("timeUnit", "must be longer than 0"));
        }
        let per_sec = rate / time_unit.as_secs_f64();
        let default_pre = (per_sec.ceil() as u64).clamp(1, 1_000);
        let pre_allocated_vus = count_opt(options, "preAllocatedVUs")?
            .or(count_opt(options, "vus")?)
            .unwrap_or(default_pre);
        let max_vus = count_opt(options, "maxVUs")?
            .unwrap_or_else(|| pre_allocated_vus.max(default_pre * 10));
        if max_vus < pre_allocated_vus {
            return Err(invalid("maxVUs", "must be at least preAllocatedVUs"));
        }
        return Ok(Executor::ConstantArrivalRate {
            rate,
            time_unit,
            duration,
            pre_allocated_vus,
            max_vus,
        });
    }
    if has(STAGE_KEYS) {
        let Value::Array(raw) = &options["stages"] else {
            return Err(invalid("stages", "must be an array of {duration, target}"));
        };
        let mut stages = Vec::with_capacity(raw.len());
        for (i, stage) in raw.iter().enumerate() {
            let name = format!("stages[{i}]");
            let duration = stage
                .get("duration")
                .ok_or_else(|| invalid(&name, "missing duration"))
                .and_then(|d| {
                    parse_duration_value(d).map_err(|source| PlanError::Duration {
                        option: name.clone(),
                        source,
                    })
                })?;
            let target = stage
                .get("target")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid(&name, "missing target (a whole number >= 0)"))?;
            stages.push(Stage { duration, target });
        }
        if stages.is_empty() {
            return Err(invalid("stages", "needs at least one stage"));
        }
        let start_vus = count_opt(options, "vus")?.unwrap_or(0);
        return Ok(Executor::RampingVus { start_vus, stages });
    }
    if let Some(vus) = count_opt(options, "vus")? {
        let duration =
            duration.ok_or_else(|| invalid("duration", "`vus` needs a duration, e.g. '30s'"))?;
        if vus == 0 {
            return Err(invalid("vus", "must be at least 1"));
        }
        return Ok(Executor::ConstantVus { vus, duration });
    }
    Err(PlanError::NoWorkload)
}

fn thresholds_from(raw: Option<&Value>) -> Result<Vec<ThresholdSpec>, PlanError> {
    let Some(raw) = raw.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = raw else {
        return Err(invalid(
            "thresholds",
            "must be an object: { 'metric{tag:value}': ['p(95)<200'] }",
        ));
    };
    let mut specs = Vec::new();
    for (selector, conditions) in map {
        let option = format!("thresholds[{selector:?}]");
        let list = match conditions {
            Value::Array(list) => list.clone(),
            single => vec![single.clone()],
        };
        for condition in list {
            let spec = match condition {
                Value::String(expression) => ThresholdSpec {
                    selector: selector.clone(),
                    expression,
                    abort_on_fail: false,
                    delay_abort_eval: None,
                },
                Value::Object(obj) => {
                    let expression = obj
                        .get("threshold")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            invalid(
                                &option,
                                "an object threshold needs `threshold: 'p(95)<200'`",
                            )
                        })?
                        .to_owned();
                    let abort_on_fail = obj
                        .get("abortOnFail")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let delay_abort_eval = obj
                        .get("delayAbortEval")
                        .map(|v| {
                            parse_duration_value(v).map_err(|source| PlanError::Duration {
                                option: option.clone(),
                                source,
                            })
                        })
                        .transpose()?;
                    ThresholdSpec {
                        selector: selector.clone(),
                        expression,
                        abort_on_fail,
                        delay_abort_eval,
                    }
                }
                other => {
                    return Err(invalid(
                        &option,
                        format!("expected a string or {{threshold, abortOnFail}}, got {other}"),
                    ));
                }
            };
            specs.push(spec);
        }
    }
    Ok(specs)
}

fn http_from(options: &Map<String, Value>) -> Result<HttpOptions, PlanError> {
    let http = options.get("http").cloned().unwrap_or(Value::Null);
    let empty = Map::new();
    let http = match &http {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => return Err(invalid("http", "must be an object")),
    };
    let timeout = duration_opt(http, "timeout")
        .map_err(|e| match e {
            PlanError::Duration { source, .. } => PlanError::Duration {
                option: "http.timeout".into(),
                source,
            },
            other => other,
        })?
        .unwrap_or(Duration::from_secs(60));
    let max_body_bytes = count_opt(http, "maxBodyBytes")
        .map_err(|_| invalid("http.maxBodyBytes", "expected a whole number of bytes"))?
        .unwrap_or(10 * 1024 * 1024);
    let share_connections = match http.get("shareConnections") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("http.shareConnections", "expected true or false")),
    };
    let insecure_skip_tls_verify = options
        .get("insecureSkipTLSVerify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(HttpOptions {
        share_connections,
        max_body_bytes,
        timeout,
        insecure_skip_tls_verify,
    })
}

/// A share of a test's users: the interval `[start, end)` of `[0, 1)`.
///
/// User (or arrival) number `k` belongs to the segment that contains the `k`-th point of the
/// base-2 van der Corput sequence. Segments that tile `[0, 1)` therefore own every user exactly
/// once, each gets its proportion of any prefix `0..n` within O(log n), and the rule needs no
/// coordination: the controller splits a run among agents, an agent among its workers, and
/// `k + 1` stays the test-wide `vu.idInTest`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
}

impl Segment {
    /// The whole test.
    pub const FULL: Segment = Segment {
        start: 0.0,
        end: 1.0,
    };

    /// No share: owns nothing (the host of `setup()` and `teardown()` holds no data rows).
    pub const EMPTY: Segment = Segment {
        start: 0.0,
        end: 0.0,
    };

    /// Whether user or arrival number `k` (0-based, test-wide) belongs to this segment.
    pub fn owns(&self, k: u64) -> bool {
        let x = Segment::position(k);
        x >= self.start && x < self.end
    }

    /// Where user or arrival number `k` sits in `[0, 1)`: the base-2 radical inverse of `k`
    /// (its bits mirrored behind the binary point). A segment owns the numbers whose position
    /// it contains, so consecutive numbers land far apart and every segment gets its share
    /// of any prefix.
    pub fn position(k: u64) -> f64 {
        (k.reverse_bits() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The share of the test this segment holds.
    pub fn fraction(&self) -> f64 {
        self.end - self.start
    }

    /// Splits this segment in proportion to `weights` (e.g. each worker's or agent's
    /// capacity). Boundaries are shared exactly, so the parts tile this segment.
    pub fn split(&self, weights: &[f64]) -> Vec<Segment> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        let mut parts = Vec::with_capacity(weights.len());
        let mut start = self.start;
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w.max(0.0);
            let end = if i + 1 == weights.len() || total == 0.0 {
                self.end
            } else {
                self.start + (self.end - self.start) * (acc / total)
            };
            parts.push(Segment { start, end });
            start = end;
        }
        parts
    }

    /// How many of the users `0..n` this segment owns.
    pub fn count_below(&self, n: u64) -> u64 {
        (0..n).filter(|k| self.owns(*k)).count() as u64
    }

    /// The numbers among `0..n` this segment owns, in order: the rows of a data file of `n`
    /// rows that go to this segment's users (`SharedRows` in the scenario API). Row `k`
    /// belongs where user `k` does, so segments that tile `[0, 1)` share out every row
    /// exactly once, with no coordination.
    pub fn owned_below(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        (0..n).filter(|k| self.owns(*k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(options: Value) -> Result<Plan, PlanError> {
        Plan::from_options(&options, &Overrides::default())
    }

    /// Rows (or users) split among agents, and each agent's share among its workers: every
    /// number belongs to exactly one worker of the cluster, whatever the weights.
    #[test]
    fn owned_rows_of_nested_segments_tile_all_rows() {
        for (agents, workers) in [
            (vec![1.0], vec![1.0]),
            (vec![1.0, 1.0, 1.0], vec![1.0, 1.0]),
            (vec![2.0, 1.0, 4.0], vec![1.0, 3.0, 1.0]),
            (vec![8.0, 8.0, 2.0, 1.0], vec![1.0; 7]),
        ] {
            for n in [0u64, 1, 2, 3, 7, 100, 1000, 1027] {
                let workers: Vec<Segment> = Segment::FULL
                    .split(&agents)
                    .iter()
                    .flat_map(|a| a.split(&workers))
                    .collect();
                let mut owner = vec![None; n as usize];
                for (w, segment) in workers.iter().enumerate() {
                    let rows: Vec<u64> = segment.owned_below(n).collect();
                    assert_eq!(rows.len() as u64, segment.count_below(n));
                    assert!(rows.windows(2).all(|p| p[0] < p[1]), "in order");
                    for k in rows {
                        assert_eq!(owner[k as usize], None, "row {k} of {n} owned twice");
                        owner[k as usize] = Some(w);
                    }
                }
                assert!(
                    owner.iter().all(Option::is_some),
                    "a row of {n} has no owner"
                );
                // Shares follow the weights to within a few rows (low discrepancy).
                if n >= 1000 {
                    for segment in &workers {
                        let expected = segment.fraction() * n as f64;
                        let got = segment.count_below(n) as f64;
                        assert!((got - expected).abs() <= 12.0, "{got} vs {expected}");
                    }
                }
            }
        }
    }

    #[test]
    fn session_users_from_options() {
        let p = plan(json!({"users": 300000, "rampUp": "30m"})).unwrap();
        assert_eq!(
            p.executor,
            Executor::SessionUsers {
                users: 300_000,
                ramp_up: Duration::from_secs(1800),
                max_duration: None
            }
        );
        assert_eq!(
            p.executor.arrival_offset(150_000),
            Some(Duration::from_secs(900))
        );
        assert_eq!(p.executor.arrival_offset(300_000), None);
    }

    #[test]
    fn arrival_rate_schedule_and_sizing() {
        let p = plan(json!({"rate": 200, "duration": "10s"})).unwrap();
        let Executor::ConstantArrivalRate {
            pre_allocated_vus,
            max_vus,
            ..
        } = p.executor
        else {
            panic!("wrong executor {:?}", p.executor)
        };
        assert_eq!((pre_allocated_vus, max_vus), (200, 2000));
        assert_eq!(
            p.executor.arrival_offset(100),
            Some(Duration::from_millis(500))
        );
        assert_eq!(p.executor.arrival_offset(2000), None);
    }

    #[test]
    fn ramping_vus_interpolates() {
        let p = plan(json!({"stages": [{"duration": "10s", "target": 100}, {"duration": "10s", "target": 0}]}))
            .unwrap();
        assert_eq!(p.executor.target_vus_at(Duration::from_secs(5)), 50);
        assert_eq!(p.executor.target_vus_at(Duration::from_secs(10)), 100);
        assert_eq!(p.executor.target_vus_at(Duration::from_secs(15)), 50);
        assert_eq!(p.executor.target_vus_at(Duration::from_secs(20)), 0);
        assert_eq!(p.executor.max_users(), 100);
    }

    #[test]
    fn cli_overrides_pick_the_executor() {
        let options = json!({"users": 10, "rampUp": "10s", "thresholds": {"checks": ["rate>0.9"]}});
        let overrides = Overrides {
            vus: Some(5),
            duration: Some("3s".into()),
            ..Default::default()
        };
        let p = Plan::from_options(&options, &overrides).unwrap();
        assert_eq!(
            p.executor,
            Executor::ConstantVus {
                vus: 5,
                duration: Duration::from_secs(3)
            }
        );
        assert_eq!(p.thresholds.len(), 1);

        let overrides = Overrides {
            stages: Some("1s:10, 2s:0".into()),
            ..Default::default()
        };
        let p = Plan::from_options(&options, &overrides).unwrap();
        assert_eq!(p.executor.planned_duration(), Duration::from_secs(3));
    }

    #[test]
    fn invalid_options_say_what_to_write() {
        let cases = [
            (json!({}), "define no workload"),
            (
                json!({"users": 10, "rate": 5, "duration": "1s"}),
                "mix executors",
            ),
            (json!({"vus": 10}), "needs a duration"),
            (json!({"users": "many"}), "whole number"),
            (json!({"users": 1, "rampUp": "soon"}), "options.rampUp"),
            (
                json!({"rate": -1, "duration": "1s"}),
                "must be a number > 0",
            ),
            (
                json!({"vus": 1, "duration": "1s", "thresholds": {"x": [{"abortOnFail": true}]}}),
                "needs `threshold",
            ),
        ];
        for (options, expect) in cases {
            let e = plan(options.clone()).unwrap_err().to_string();
            assert!(e.contains(expect), "{options}: {e}");
        }
    }

    #[test]
    fn thresholds_in_both_forms() {
        let p = plan(json!({"vus": 1, "duration": "1s", "thresholds": {
            "http_req_duration{name:vote}": ["p(99)<500", {"threshold": "avg<100", "abortOnFail": true, "delayAbortEval": "10s"}],
            "http_req_failed": "rate<0.01"
        }}))
        .unwrap();
        assert_eq!(p.thresholds.len(), 3);
        let abort = p.thresholds.iter().find(|t| t.abort_on_fail).unwrap();
        assert_eq!(abort.delay_abort_eval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn plans_serialize_durations_as_users_write_them_and_round_trip() {
        let p = plan(json!({"users": 10, "rampUp": "1m30s", "duration": "2m",
            "thresholds": {"checks": [{"threshold": "rate>0.9", "delayAbortEval": "10s"}]}}))
        .unwrap();
        let text = serde_json::to_value(&p).unwrap();
        assert_eq!(text["executor"]["ramp_up"], "1m30s");
        assert_eq!(text["executor"]["max_duration"], "2m");
        assert_eq!(text["graceful_stop"], "30s");
        assert_eq!(text["http"]["timeout"], "1m");
        assert_eq!(serde_json::from_value::<Plan>(text).unwrap(), p);
    }

    #[test]
    fn segments_own_every_user_exactly_once() {
        let parts = Segment::FULL.split(&[2.0, 1.0, 1.0]);
        let n = 10_000u64;
        let mut counts = [0u64; 3];
        for k in 0..n {
            let owners: Vec<_> = parts
                .iter()
                .enumerate()
                .filter(|(_, s)| s.owns(k))
                .collect();
            assert_eq!(owners.len(), 1, "user {k}");
            counts[owners[0].0] += 1;
        }
        assert_eq!(counts.iter().sum::<u64>(), n);
        assert!((counts[0] as i64 - 5000).abs() <= 20, "{counts:?}");
        assert!((counts[1] as i64 - 2500).abs() <= 20, "{counts:?}");
        // Nested splits (agents, then workers) tile as well.
        let sub = parts[1].split(&[1.0, 1.0]);
        let nested: u64 = sub.iter().map(|s| s.count_below(n)).sum();
        assert_eq!(nested, counts[1]);
    }

    #[test]
    fn segments_spread_every_prefix() {
        let halves = Segment::FULL.split(&[1.0, 1.0]);
        for n in [1u64, 2, 3, 10, 101, 1000] {
            let a = halves[0].count_below(n);
            assert!(a.abs_diff(n - a) <= 1, "n={n}: {a}");
        }
    }
}
