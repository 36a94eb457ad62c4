//! A fake EC2 for the paths moto cannot produce: capacity and price failures, auth errors,
//! security groups still in use, instances that take time to terminate. It records every
//! call so that tests can prove which ones were (not) made.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use punisher_launcher::api::{
    ApiError, Ec2, Image, Instance, InstanceFilter, LaunchSpec, SecurityGroup, SpotQuote,
};
use punisher_launcher::tags::CLUSTER_TAG;

/// What the next RunInstances in a region does.
#[derive(Debug, Clone)]
pub(crate) enum RunOutcome {
    Fail(ApiError),
    /// Launch at most this many.
    Partial(u32),
}

#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) regions: Vec<String>,
    /// (region, operation), in call order.
    pub(crate) calls: Vec<(String, &'static str)>,
    pub(crate) instances: HashMap<String, Vec<Instance>>,
    pub(crate) groups: HashMap<String, Vec<SecurityGroup>>,
    pub(crate) run_outcomes: HashMap<String, VecDeque<RunOutcome>>,
    /// Every call in this region fails so.
    pub(crate) broken: HashMap<String, ApiError>,
    /// DeleteSecurityGroup answers DependencyViolation this many times first.
    pub(crate) group_in_use: u32,
    /// Terminated instances pass through shutting-down for this many DescribeInstances.
    pub(crate) shutting_down_polls: u32,
    /// (type, zone, price) offered in every region.
    pub(crate) prices: Vec<(String, String, f64)>,
    /// Instances that terminate_instances ignores (to test leftovers).
    pub(crate) unkillable: Vec<String>,
    pub(crate) next_id: u64,
}

pub(crate) struct FakeEc2 {
    pub(crate) state: Mutex<FakeState>,
}

pub(crate) const MUTATING: &[&str] = &[
    "RunInstances",
    "CreateSecurityGroup",
    "DeleteSecurityGroup",
    "TerminateInstances",
];

impl FakeEc2 {
    pub(crate) fn new(regions: &[&str]) -> FakeEc2 {
        let state = FakeState {
            regions: regions.iter().map(|s| s.to_string()).collect(),
            prices: vec![
                ("c7g.large".into(), "a".into(), 0.02),
                ("c7g.large".into(), "b".into(), 0.025),
                ("c6i.large".into(), "a".into(), 0.03),
            ],
            ..FakeState::default()
        };
        FakeEc2 {
            state: Mutex::new(state),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub(crate) fn mutating_calls(&self) -> Vec<(String, &'static str)> {
        self.with(|s| {
            s.calls
                .iter()
                .filter(|(_, op)| MUTATING.contains(op))
                .cloned()
                .collect()
        })
    }

    fn enter(&self, region: &str, op: &'static str) -> Result<(), ApiError> {
        self.with(|s| {
            s.calls.push((region.to_owned(), op));
            match s.broken.get(region) {
                Some(e) => Err(ApiError {
                    operation: op,
                    ..e.clone()
                }),
                None => Ok(()),
            }
        })
    }
}

impl Ec2 for FakeEc2 {
    async fn describe_regions(&self) -> Result<Vec<String>, ApiError> {
        self.enter("-", "DescribeRegions")?;
        Ok(self.with(|s| s.regions.clone()))
    }

    async fn describe_images(
        &self,
        region: &str,
        pattern: &str,
        arch: &str,
    ) -> Result<Vec<Image>, ApiError> {
        self.enter(region, "DescribeImages")?;
        assert!(pattern.starts_with("al2023-ami-2023.") && pattern.ends_with(arch));
        Ok(vec![
            Image {
                id: format!("ami-old{arch}"),
                name: format!("al2023-ami-2023.1-{arch}"),
                creation_date: "2024-01-01T00:00:00.000Z".into(),
            },
            Image {
                id: format!("ami-new{}", arch.replace('_', "")),
                name: format!("al2023-ami-2023.9-{arch}"),
                creation_date: "2025-06-01T00:00:00.000Z".into(),
            },
            Image {
                id: "ami-minimal".into(),
                name: format!("al2023-ami-minimal-2023.9-{arch}"),
                creation_date: "2026-01-01T00:00:00.000Z".into(),
            },
        ])
    }

    async fn spot_prices(
        &self,
        region: &str,
        types: &[String],
        _since: SystemTime,
    ) -> Result<Vec<SpotQuote>, ApiError> {
        self.enter(region, "DescribeSpotPriceHistory")?;
        Ok(self.with(|s| {
            s.prices
                .iter()
                .filter(|(t, _, _)| types.contains(t))
                .map(|(t, z, p)| SpotQuote {
                    instance_type: t.clone(),
                    zone: format!("{region}{z}"),
                    price: *p,
                    at: Some(SystemTime::now()),
                })
                .collect()
        }))
    }

    async fn security_groups(
        &self,
        region: &str,
        cluster: &str,
    ) -> Result<Vec<SecurityGroup>, ApiError> {
        self.enter(region, "DescribeSecurityGroups")?;
        Ok(self.with(|s| {
            s.groups
                .get(region)
                .into_iter()
                .flatten()
                .filter(|g| g.tags.iter().any(|(k, v)| k == CLUSTER_TAG && v == cluster))
                .cloned()
                .collect()
        }))
    }

    async fn create_security_group(
        &self,
        region: &str,
        name: &str,
        _d: &str,
        tags: &[(String, String)],
    ) -> Result<String, ApiError> {
        self.enter(region, "CreateSecurityGroup")?;
        Ok(self.with(|s| {
            s.next_id += 1;
            let id = format!("sg-{}", s.next_id);
            s.groups
                .entry(region.to_owned())
                .or_default()
                .push(SecurityGroup {
                    id: id.clone(),
                    name: name.to_owned(),
                    tags: tags.to_vec(),
                });
            id
        }))
    }

    async fn delete_security_group(&self, region: &str, id: &str) -> Result<(), ApiError> {
        self.enter(region, "DeleteSecurityGroup")?;
        self.with(|s| {
            if s.group_in_use > 0 {
                s.group_in_use -= 1;
                return Err(ApiError::coded(
                    "DeleteSecurityGroup",
                    "DependencyViolation",
                    "in use",
                ));
            }
            let groups = s.groups.entry(region.to_owned()).or_default();
            let before = groups.len();
            groups.retain(|g| g.id != id);
            if groups.len() == before {
                return Err(ApiError::coded(
                    "DeleteSecurityGroup",
                    "InvalidGroup.NotFound",
                    "gone",
                ));
            }
            Ok(())
        })
    }

    async fn run_instances(
        &self,
        region: &str,
        spec: &LaunchSpec,
    ) -> Result<Vec<Instance>, ApiError> {
        self.enter(region, "RunInstances")?;
        self.with(|s| {
            let n = match s.run_outcomes.get_mut(region).and_then(|q| q.pop_front()) {
                Some(RunOutcome::Fail(e)) => return Err(e),
                Some(RunOutcome::Partial(n)) if n >= spec.min_count => n.min(spec.count),
                Some(RunOutcome::Partial(_)) => {
                    return Err(ApiError::coded(
                        "RunInstances",
                        "InsufficientInstanceCapacity",
                        "partial",
                    ));
                }
                None => spec.count,
            };
            let mut out = Vec::new();
            for _ in 0..n {
                s.next_id += 1;
                out.push(Instance {
                    id: format!("i-{:08}", s.next_id),
                    instance_type: spec.instance_type.clone(),
                    zone: spec.zone.clone(),
                    state: "pending".into(),
                    launch_time: Some(SystemTime::now()),
                    lifecycle: Some("spot".into()),
                    private_ip: None,
                    tags: spec.tags.clone(),
                });
            }
            s.instances
                .entry(region.to_owned())
                .or_default()
                .extend(out.clone());
            Ok(out)
        })
    }

    async fn describe_instances(
        &self,
        region: &str,
        filter: &InstanceFilter,
    ) -> Result<Vec<Instance>, ApiError> {
        self.enter(region, "DescribeInstances")?;
        Ok(self.with(|s| {
            let polls_left = s.shutting_down_polls;
            let list = s.instances.entry(region.to_owned()).or_default();
            for i in list.iter_mut() {
                if i.state == "shutting-down" && polls_left == 0 {
                    i.state = "terminated".into();
                }
            }
            let out: Vec<Instance> = list
                .iter()
                .filter(|i| match filter {
                    InstanceFilter::Cluster(c) => i.tag(CLUSTER_TAG) == Some(c.as_str()),
                    InstanceFilter::AnyCluster => i.tag(CLUSTER_TAG).is_some(),
                })
                .cloned()
                .collect();
            if out.iter().any(|i| i.state == "shutting-down") {
                s.shutting_down_polls = s.shutting_down_polls.saturating_sub(1);
            }
            out
        }))
    }

    async fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), ApiError> {
        self.enter(region, "TerminateInstances")?;
        self.with(|s| {
            let unkillable = s.unkillable.clone();
            let next = if s.shutting_down_polls > 0 {
                "shutting-down"
            } else {
                "terminated"
            };
            for i in s.instances.entry(region.to_owned()).or_default() {
                if ids.contains(&i.id) && !unkillable.contains(&i.id) {
                    i.state = next.into();
                }
            }
        });
        Ok(())
    }
}
