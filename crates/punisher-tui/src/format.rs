//! How numbers read on the dashboard: short, with as many digits as the magnitude deserves, and
//! never `NaN` or `inf` (a view from a misbehaving publisher still renders).

/// `mm:ss` below an hour, `h:mm:ss` above.
pub(crate) fn clock(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A rate or a latency: one decimal below 100, none above; `-` when not a number.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.abs() < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A threshold's observed value: rates like 0.0012 need more digits than latencies.
pub(crate) fn observed(v: Option<f64>) -> String {
    match v {
        None => "no data".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v != 0.0 && v.abs() < 1.0 => format!("{v:.4}"),
        Some(v) => num(v),
    }
}

/// A fraction as a percentage: `0.0012` reads `0.12%`.
pub(crate) fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.2}%", fraction * 100.0)
    } else {
        "-".to_owned()
    }
}

/// A count in at most five characters for chart axes: 1234 -> `1.2k`, 3400000 -> `3.4M`.
pub(crate) fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        num(v)
    }
}

/// A report age: `850ms`, `12.0s`, `5m`.
pub(crate) fn age(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m", ms / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(clock(312.7), "05:12");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(f64::NAN), "00:00");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(523.4), "523");
        assert_eq!(num(f64::INFINITY), "-");
        assert_eq!(observed(Some(0.0012)), "0.0012");
        assert_eq!(observed(Some(612.34)), "612");
        assert_eq!(observed(None), "no data");
        assert_eq!(percent(0.0012), "0.12%");
        assert_eq!(compact(1234.0), "1.2k");
        assert_eq!(compact(56_000.0), "56k");
        assert_eq!(compact(3_400_000.0), "3.4M");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_000), "12.0s");
        assert_eq!(age(300_000), "5m");
    }
}
