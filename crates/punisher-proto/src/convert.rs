//! Conversions between wire messages and the core vocabulary. Wire messages are checked
//! here (sizes, JSON, numbers in range) so that the controller and the agent only ever see
//! valid core values.

use std::collections::BTreeMap;

use punisher_core::{Plan, Segment};

use crate::v1;

/// A wire message that does not hold a valid value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("invalid segment [{start}, {end})")]
    Segment { start: f64, end: f64 },
    #[error("the bundle is {size} bytes; at most {limit} are allowed")]
    BundleTooLarge { size: usize, limit: usize },
    #[error("the bundle's entry {0:?} is not among its sources")]
    NoEntry(String),
    #[error("invalid JSON in {field}: {message}")]
    Json {
        field: &'static str,
        message: String,
    },
}

/// A scenario as shipped: the entry script, the modules it imports and the data files it
/// opens. The same shape as `punisher_engine::Bundle`, which this crate does not depend on
/// (the controller never runs JavaScript).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioBundle {
    pub entry: String,
    pub sources: BTreeMap<String, String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl ScenarioBundle {
    /// Bytes of every script and file, with their names.
    pub fn size(&self) -> usize {
        let sources: usize = self.sources.iter().map(|(k, v)| k.len() + v.len()).sum();
        let files: usize = self.files.iter().map(|(k, v)| k.len() + v.len()).sum();
        sources + files + self.entry.len()
    }

    /// Checks the size limit and that the entry exists.
    pub fn validate(&self) -> Result<(), ConvertError> {
        let size = self.size();
        if size > crate::MAX_BUNDLE_BYTES {
            return Err(ConvertError::BundleTooLarge {
                size,
                limit: crate::MAX_BUNDLE_BYTES,
            });
        }
        if !self.sources.contains_key(&self.entry) {
            return Err(ConvertError::NoEntry(self.entry.clone()));
        }
        Ok(())
    }
}

impl From<ScenarioBundle> for v1::Bundle {
    fn from(b: ScenarioBundle) -> v1::Bundle {
        v1::Bundle {
            entry: b.entry,
            sources: b.sources,
            files: b.files.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }
}

impl TryFrom<v1::Bundle> for ScenarioBundle {
    type Error = ConvertError;
    fn try_from(b: v1::Bundle) -> Result<ScenarioBundle, ConvertError> {
        let bundle = ScenarioBundle {
            entry: b.entry,
            sources: b.sources,
            files: b.files.into_iter().map(|(k, v)| (k, v.to_vec())).collect(),
        };
        bundle.validate()?;
        Ok(bundle)
    }
}

impl From<Segment> for v1::Segment {
    fn from(s: Segment) -> v1::Segment {
        v1::Segment {
            start: s.start,
            end: s.end,
        }
    }
}

/// A segment from the wire: `0 <= start <= end <= 1`, no NaN.
pub fn segment_from_wire(s: Option<v1::Segment>) -> Result<Segment, ConvertError> {
    let s = s.ok_or(ConvertError::Missing("segment"))?;
    let ok = s.start.is_finite()
        && s.end.is_finite()
        && 0.0 <= s.start
        && s.start <= s.end
        && s.end <= 1.0;
    if !ok {
        return Err(ConvertError::Segment {
            start: s.start,
            end: s.end,
        });
    }
    Ok(Segment {
        start: s.start,
        end: s.end,
    })
}

/// The plan as it travels: JSON of `punisher_core::Plan`.
pub fn plan_to_json(plan: &Plan) -> String {
    // Plan holds only strings, numbers, booleans and durations: serialising cannot fail.
    serde_json::to_string(plan).unwrap_or_default()
}

pub fn plan_from_json(json: &str) -> Result<Plan, ConvertError> {
    serde_json::from_str(json).map_err(|e| ConvertError::Plan(e.to_string()))
}

/// JSON text from the wire (`setup()` data); empty means null.
pub fn json_from_wire(field: &'static str, text: &str) -> Result<serde_json::Value, ConvertError> {
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text).map_err(|e| ConvertError::Json {
        field,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_round_trip_and_limits() {
        let b = ScenarioBundle {
            entry: "x.js".into(),
            sources: BTreeMap::from([("x.js".into(), "export default function(){}".into())]),
            files: BTreeMap::from([("d.csv".into(), b"a,b\n1,2\n".to_vec())]),
        };
        let wire: v1::Bundle = b.clone().into();
        assert_eq!(ScenarioBundle::try_from(wire).unwrap(), b);
        let mut no_entry = v1::Bundle::from(b.clone());
        no_entry.entry = "y.js".into();
        assert!(matches!(
            ScenarioBundle::try_from(no_entry),
            Err(ConvertError::NoEntry(_))
        ));
        let mut big = v1::Bundle::from(b);
        big.files
            .insert("big".into(), vec![0; crate::MAX_BUNDLE_BYTES + 1].into());
        assert!(matches!(
            ScenarioBundle::try_from(big),
            Err(ConvertError::BundleTooLarge { .. })
        ));
    }

    #[test]
    fn segments_are_checked() {
        let ok = segment_from_wire(Some(v1::Segment {
            start: 0.25,
            end: 0.5,
        }))
        .unwrap();
        assert_eq!(ok.fraction(), 0.25);
        for (start, end) in [(0.5, 0.25), (f64::NAN, 1.0), (-0.1, 0.5), (0.0, 1.5)] {
            assert!(segment_from_wire(Some(v1::Segment { start, end })).is_err());
        }
        assert!(segment_from_wire(None).is_err());
    }

    #[test]
    fn plan_json_round_trip() {
        let plan = Plan::from_options(
            &serde_json::json!({"vus": 2, "duration": "1s", "thresholds": {"http_reqs": ["count>0"]}}),
            &punisher_core::Overrides::default(),
        )
        .unwrap();
        assert_eq!(plan_from_json(&plan_to_json(&plan)).unwrap(), plan);
        assert!(plan_from_json("{").is_err());
    }
}
