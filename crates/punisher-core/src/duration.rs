//! Durations as scenario authors write them: `"30s"`, `"1m30s"`, `"250ms"`, `"2h"`, or a
//! plain number of milliseconds.

use std::time::Duration;

/// A duration that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (write it like \"30s\", \"1m30s\", \"250ms\" or a number of milliseconds)"
)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

fn err(input: &str, reason: &'static str) -> DurationError {
    DurationError {
        input: input.to_owned(),
        reason,
    }
}

/// Parses `"1h30m"`, `"1.5s"`, `"250ms"`, `"100us"`, `"0"`. A bare number is milliseconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "it is empty"));
    }
    if let Ok(ms) = s.parse::<f64>() {
        return from_secs(input, ms / 1000.0);
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err(input, "a number needs a unit (h, m, s, ms, us)"))?;
        if number_len == 0 {
            return Err(err(input, "expected a number before each unit"));
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| err(input, "bad number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(err(input, "unknown unit (use h, m, s, ms, us)")),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    from_secs(input, total)
}

fn from_secs(input: &str, secs: f64) -> Result<Duration, DurationError> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(err(input, "it must be a finite, non-negative time"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| err(input, "it is too long"))
}

/// Parses a JSON option value: a string duration or a number of milliseconds.
pub fn parse_duration_value(value: &serde_json::Value) -> Result<Duration, DurationError> {
    match value {
        serde_json::Value::String(s) => parse_duration(s),
        serde_json::Value::Number(n) => {
            let ms = n.as_f64().unwrap_or(f64::NAN);
            from_secs(&n.to_string(), ms / 1000.0)
        }
        other => Err(err(
            &other.to_string(),
            "expected a string like \"30s\" or milliseconds",
        )),
    }
}

/// Formats a duration the way users write them (`1m30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor();
    let m = ((secs - h * 3600.0) / 60.0).floor();
    let s = secs - h * 3600.0 - m * 60.0;
    let mut out = String::new();
    if h > 0.0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0.0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0.0 || out.is_empty() {
        let s = (s * 1000.0).round() / 1000.0;
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect_ms: u64) {
        assert_eq!(
            parse_duration(input).unwrap(),
            Duration::from_millis(expect_ms),
            "{input}"
        );
    }

    #[test]
    fn parses_what_users_write() {
        check("30s", 30_000);
        check("1m30s", 90_000);
        check("1h", 3_600_000);
        check("250ms", 250);
        check("1.5s", 1_500);
        check("2h3m4s", 7_384_000);
        check("1500", 1_500);
        check("0", 0);
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        for bad in ["", "s", "10x", "-5s", "1m-3s", "abc", "10 s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("write it like"), "{bad}: {e}");
        }
    }

    #[test]
    fn json_values() {
        assert_eq!(
            parse_duration_value(&serde_json::json!(1500)).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration_value(&serde_json::json!("2s")).unwrap(),
            Duration::from_secs(2)
        );
        assert!(parse_duration_value(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn formats_round_trip() {
        for ms in [250, 1_000, 90_000, 3_600_000, 7_384_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}

/// Serde for [`Duration`] as users write it (`"1m30s"`, `"250ms"`), so that plans in
/// `run.json`, reports and on the wire read like the options they came from. Durations
/// that are not whole milliseconds are written in nanoseconds, so nothing is lost.
pub mod serde_human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        super::parse_duration_value(&value).map_err(serde::de::Error::custom)
    }

    pub(crate) fn to_text(d: Duration) -> String {
        if d.subsec_nanos().is_multiple_of(1_000_000) {
            super::format_duration(d)
        } else {
            format!("{}ns", d.as_nanos())
        }
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&super::to_text(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let value = Option::<serde_json::Value>::deserialize(d)?;
            value
                .map(|v| super::super::parse_duration_value(&v).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod serde_tests {
    use std::time::Duration;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "super::serde_human")]
        d: Duration,
        #[serde(with = "super::serde_human::option", default)]
        o: Option<Duration>,
    }

    #[test]
    fn durations_serialize_as_users_write_them_and_round_trip_exactly() {
        for (d, text) in [
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_nanos(1_500_001), "1500001ns"),
            (Duration::ZERO, "0us"),
        ] {
            let holder = Holder { d, o: Some(d) };
            let json = serde_json::to_string(&holder).unwrap();
            assert_eq!(json, format!("{{\"d\":\"{text}\",\"o\":\"{text}\"}}"));
            assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
        }
        let none: Holder = serde_json::from_str("{\"d\":1500,\"o\":null}").unwrap();
        assert_eq!(
            none,
            Holder {
                d: Duration::from_millis(1500),
                o: None
            }
        );
    }
}
