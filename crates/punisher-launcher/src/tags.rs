//! The tags that make every cloud resource findable (and teardown complete), the cluster
//! name rules, and the TTL / expiry arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};

use crate::error::LauncherError;

/// The cluster's name: how `down`, `status` and `ls` find everything.
pub const CLUSTER_TAG: &str = "punisher:cluster";
/// RFC 3339 UTC time after which the resource may be reaped.
pub const EXPIRES_TAG: &str = "punisher:expires-at";
/// The controller address the agents dial.
pub const CONTROLLER_TAG: &str = "punisher:controller";
/// The shortest and longest TTL accepted: a cluster must not outlive a working day by
/// accident, and a TTL under ten minutes cannot even boot and join.
pub const MIN_TTL: Duration = Duration::from_secs(10 * 60);
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Checks a cluster name: it goes into tags, a security group name and a shell script.
pub fn validate_cluster_name(name: &str) -> Result<(), LauncherError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LauncherError::Invalid(format!(
            "invalid cluster name {name:?}: use 1-40 characters a-z, 0-9 and '-', starting \
             with a letter (e.g. --name tvshow-1)"
        )))
    }
}

/// Parses a TTL such as `2h`, `90m`, `1h30m`, `45m`, `3600s`.
pub fn parse_ttl(s: &str) -> Result<Duration, LauncherError> {
    let bad = || {
        LauncherError::Invalid(format!(
            "invalid --ttl {s:?}: write it like 2h, 90m or 1h30m (between {}m and {}h)",
            MIN_TTL.as_secs() / 60,
            MAX_TTL.as_secs() / 3600
        ))
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    let ttl = Duration::from_secs(total);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(bad());
    }
    Ok(ttl)
}

/// `t` as RFC 3339 UTC without fractions (`2026-01-02T15:04:05Z`).
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DateTime::from_secs(i64::try_from(secs).unwrap_or(i64::MAX))
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

/// Parses what [`format_time`] wrote.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    DateTime::from_str(s, DateTimeFormat::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
}

/// The tags put on instances, volumes and security groups.
pub fn cluster_tags(
    cluster: &str,
    expires_at: SystemTime,
    controller: &str,
) -> Vec<(String, String)> {
    vec![
        (CLUSTER_TAG.to_owned(), cluster.to_owned()),
        (EXPIRES_TAG.to_owned(), format_time(expires_at)),
        (CONTROLLER_TAG.to_owned(), controller.to_owned()),
        ("Name".to_owned(), format!("punisher-{cluster}")),
    ]
}

/// A duration for humans: `2h05m`, `12m`, `40s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "2",
            "h",
            "2d",
            "5m",
            "25h",
            "-1h",
            "1h30",
            "99999999999999999999h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_cluster_name("tv-1").is_ok());
        for bad in ["", "1tv", "Tv", "a b", "a;rm", &"a".repeat(41)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = format_time(t);
        assert_eq!(s, "2027-01-15T08:00:00Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }
}
