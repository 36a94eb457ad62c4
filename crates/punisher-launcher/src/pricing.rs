//! Spot prices into launch candidates: the cheapest zone and type first, each with its bid.
//!
//! `--max-price auto` is the seed's semi-automatic bidding: bid [`AUTO_MARGIN`] over the
//! current spot price, capped by the type's on-demand price, so that a price spike during
//! the run does not reclaim every agent at once and the bill can never pass on-demand.
//! On-demand prices come from a small built-in table ([`on_demand_price`]): there is no
//! pricing API in EC2 itself, and the Pricing API would be a second SDK crate to compile.

use std::collections::HashMap;

use crate::api::SpotQuote;
use crate::error::LauncherError;

/// The margin over the current spot price that `auto` bids.
pub const AUTO_MARGIN: f64 = 0.30;

/// Built-in Linux on-demand prices (US dollars per hour, us-east-1, 2025). Other regions
/// cost 0-30% more; the cap is a safety net, not a quote. Types missing here are capped at
/// the spot price plus the margin only, and the cost table says so.
const ON_DEMAND_US_EAST_1: &[(&str, f64)] = &[
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c5n.large", 0.108),
    ("c6a.large", 0.0765),
    ("c6g.large", 0.068),
    ("c6g.xlarge", 0.136),
    ("c6gn.large", 0.0864),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c7a.large", 0.10264),
    ("c7g.large", 0.0725),
    ("c7g.xlarge", 0.145),
    ("c7gn.large", 0.0998),
    ("c7i.large", 0.08925),
    ("c8g.large", 0.07976),
    ("m5.large", 0.096),
    ("m6g.large", 0.077),
    ("m6i.large", 0.096),
    ("m7g.large", 0.0816),
    ("m7i.large", 0.1008),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t4g.medium", 0.0336),
    ("t4g.large", 0.0672),
];

/// The built-in on-demand price of a type, when known.
pub fn on_demand_price(instance_type: &str) -> Option<f64> {
    ON_DEMAND_US_EAST_1
        .iter()
        .find(|(t, _)| *t == instance_type)
        .map(|(_, p)| *p)
}

/// `--max-price`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxPrice {
    /// Spot price plus [`AUTO_MARGIN`], capped by the on-demand price.
    Auto,
    /// A fixed cap in dollars per hour.
    Fixed(f64),
}

impl MaxPrice {
    pub fn parse(s: &str) -> Result<MaxPrice, LauncherError> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(MaxPrice::Auto);
        }
        match s.parse::<f64>() {
            Ok(p) if p.is_finite() && p > 0.0 && p < 1000.0 => Ok(MaxPrice::Fixed(p)),
            _ => Err(LauncherError::Invalid(format!(
                "invalid --max-price {s:?}: write `auto` or dollars per instance-hour such as 0.05"
            ))),
        }
    }
}

/// A type and zone to try, with what it costs now and what we bid.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub instance_type: String,
    pub zone: String,
    pub spot_price: f64,
    /// The max price sent with RunInstances (dollars per hour).
    pub bid: f64,
    /// Whether the bid was capped by a known on-demand price.
    pub on_demand_known: bool,
}

impl Candidate {
    /// The bid as RunInstances wants it: a decimal string, rounded up to 1/100,000 dollar.
    pub fn bid_string(&self) -> String {
        format!("{:.5}", (self.bid * 100_000.0).ceil() / 100_000.0)
    }
}

/// Turns the price history into candidates, cheapest first. Each (type, zone) uses its most
/// recent quote; a type with no quote is not offered as spot in the region. Returns the
/// candidates and, for the cost table, why others were left out.
pub fn candidates(
    quotes: &[SpotQuote],
    instance_types: &[String],
    max: MaxPrice,
) -> (Vec<Candidate>, Vec<String>) {
    let mut latest: HashMap<(&str, &str), &SpotQuote> = HashMap::new();
    for q in quotes {
        if !instance_types.contains(&q.instance_type) {
            continue;
        }
        let key = (q.instance_type.as_str(), q.zone.as_str());
        match latest.get(&key) {
            Some(old) if old.at >= q.at => {}
            _ => {
                latest.insert(key, q);
            }
        }
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for t in instance_types {
        if !latest.keys().any(|(lt, _)| lt == t) {
            skipped.push(format!(
                "{t}: no spot price in the last hour (not offered here?)"
            ));
        }
    }
    for ((t, zone), q) in &latest {
        let od = on_demand_price(t);
        let bid = match max {
            MaxPrice::Fixed(cap) => {
                if q.price > cap {
                    skipped.push(format!(
                        "{t} in {zone}: spot ${:.4}/h is over the cap ${cap:.4}/h",
                        q.price
                    ));
                    continue;
                }
                cap
            }
            MaxPrice::Auto => {
                let wanted = q.price * (1.0 + AUTO_MARGIN);
                match od {
                    Some(od) if q.price >= od => {
                        skipped.push(format!(
                            "{t} in {zone}: spot ${:.4}/h is not below on-demand ${od:.4}/h",
                            q.price
                        ));
                        continue;
                    }
                    Some(od) => wanted.min(od),
                    None => wanted,
                }
            }
        };
        out.push(Candidate {
            instance_type: (*t).to_owned(),
            zone: (*zone).to_owned(),
            spot_price: q.price,
            bid,
            on_demand_known: od.is_some(),
        });
    }
    // Cheapest first; ties go to the order the user listed the types in, then the zone name,
    // so that plans are reproducible.
    let rank = |t: &str| {
        instance_types
            .iter()
            .position(|x| x == t)
            .unwrap_or(usize::MAX)
    };
    out.sort_by(|a, b| {
        a.spot_price
            .total_cmp(&b.spot_price)
            .then_with(|| rank(&a.instance_type).cmp(&rank(&b.instance_type)))
            .then_with(|| a.zone.cmp(&b.zone))
    });
    skipped.sort();
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn q(t: &str, z: &str, p: f64, at: u64) -> SpotQuote {
        SpotQuote {
            instance_type: t.into(),
            zone: z.into(),
            price: p,
            at: Some(UNIX_EPOCH + Duration::from_secs(at)),
        }
    }

    fn types(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cheapest_first_latest_quote_wins() {
        let quotes = [
            q("c7g.large", "a", 0.02, 10),
            q("c7g.large", "a", 0.05, 5), // older: ignored
            q("c6i.large", "b", 0.03, 10),
            q("c6i.large", "a", 0.01, 10),
            q("m5.large", "a", 0.001, 10), // not a candidate type
        ];
        let (c, skipped) = candidates(
            &quotes,
            &types(&["c7g.large", "c6i.large", "c5.large"]),
            MaxPrice::Auto,
        );
        let order: Vec<_> = c
            .iter()
            .map(|c| (c.instance_type.as_str(), c.zone.as_str()))
            .collect();
        assert_eq!(
            order,
            [("c6i.large", "a"), ("c7g.large", "a"), ("c6i.large", "b")]
        );
        assert!((c[1].bid - 0.026).abs() < 1e-9);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("c5.large"));
    }

    #[test]
    fn auto_is_capped_by_on_demand_and_fixed_caps() {
        let quotes = [q("c7g.large", "a", 0.07, 1), q("c7g.large", "b", 0.08, 1)];
        let (c, skipped) = candidates(&quotes, &types(&["c7g.large"]), MaxPrice::Auto);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].bid, 0.0725);
        assert_eq!(skipped.len(), 1);
        let (c, skipped) = candidates(&quotes, &types(&["c7g.large"]), MaxPrice::Fixed(0.075));
        assert_eq!((c.len(), skipped.len()), (1, 1));
        assert_eq!(c[0].bid_string(), "0.07500");
    }

    #[test]
    fn bid_string_rounds_up() {
        let c = Candidate {
            instance_type: "x".into(),
            zone: "z".into(),
            spot_price: 0.00001,
            bid: 0.000013,
            on_demand_known: false,
        };
        assert_eq!(c.bid_string(), "0.00002");
        assert!(MaxPrice::parse("nan").is_err());
        assert!(MaxPrice::parse("-1").is_err());
        assert_eq!(MaxPrice::parse("AUTO").unwrap(), MaxPrice::Auto);
    }
}
