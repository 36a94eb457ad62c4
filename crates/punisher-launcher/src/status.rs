//! `cluster status` (a cluster's instances by region and state, and which joined the
//! controller) and `cluster ls` (clusters found by tag across regions, with age and expiry).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::api::{Ec2, Instance, InstanceFilter};
use crate::error::LauncherError;
use crate::regions::{self, RegionChoice};
use crate::tags::{self, CLUSTER_TAG, CONTROLLER_TAG, EXPIRES_TAG};

/// One region's instances of a cluster, or why they could not be listed.
#[derive(Debug, Clone)]
pub struct RegionInstances {
    pub region: String,
    pub instances: Vec<Instance>,
    pub error: Option<String>,
}

/// A cluster's instances everywhere.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub name: String,
    pub regions: Vec<RegionInstances>,
}

impl ClusterStatus {
    /// Instances not yet terminated.
    pub fn live(&self) -> impl Iterator<Item = (&str, &Instance)> {
        self.regions
            .iter()
            .flat_map(|r| r.instances.iter().map(move |i| (r.region.as_str(), i)))
            .filter(|(_, i)| i.is_live())
    }

    /// A table by region and state. `joined` holds the instance ids the controller knows
    /// (agents label themselves with their instance id); `None`: the controller was not asked.
    pub fn render(&self, joined: Option<&HashSet<String>>) -> String {
        let mut s = String::new();
        for r in &self.regions {
            if let Some(e) = &r.error {
                let _ = writeln!(s, "{:<16} ERROR: {e}", r.region);
                continue;
            }
            let mut states: BTreeMap<&str, usize> = BTreeMap::new();
            for i in &r.instances {
                *states.entry(i.state.as_str()).or_default() += 1;
            }
            if states.is_empty() {
                continue;
            }
            let states: Vec<String> = states.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let mut line = format!("{:<16} {}", r.region, states.join(", "));
            if let Some(j) = joined {
                let live: Vec<&Instance> = r.instances.iter().filter(|i| i.is_live()).collect();
                let n = live.iter().filter(|i| j.contains(&i.id)).count();
                let _ = write!(line, "; joined {n}/{}", live.len());
            }
            let _ = writeln!(s, "{line}");
        }
        let live = self.live().count();
        let _ = write!(s, "cluster {}: {live} live instances", self.name);
        if joined.is_none() {
            s.push_str(" (controller not asked: joined unknown)");
        }
        s.push('\n');
        s
    }
}

/// Lists a cluster's instances in every region of the choice.
pub async fn status<E: Ec2>(
    ec2: &E,
    name: &str,
    choice: &RegionChoice,
) -> Result<ClusterStatus, LauncherError> {
    tags::validate_cluster_name(name)?;
    let regions = regions::resolve(ec2, choice).await?;
    let filter = InstanceFilter::Cluster(name.to_owned());
    let out = regions::for_each(regions, |region| {
        let filter = &filter;
        async move {
            match ec2.describe_instances(&region, filter).await {
                Ok(instances) => RegionInstances {
                    region,
                    instances,
                    error: None,
                },
                Err(e) => RegionInstances {
                    region,
                    instances: Vec::new(),
                    error: Some(e.to_string()),
                },
            }
        }
    })
    .await;
    Ok(ClusterStatus {
        name: name.to_owned(),
        regions: out,
    })
}

/// A cluster found by its tag.
#[derive(Debug, Clone)]
pub struct ClusterSummary {
    pub name: String,
    /// Live instances per region.
    pub regions: BTreeMap<String, usize>,
    pub oldest_launch: Option<SystemTime>,
    /// The earliest `punisher:expires-at` among its instances.
    pub expires_at: Option<SystemTime>,
    pub controller: Option<String>,
}

/// What `ls` found, and the regions it could not ask.
#[derive(Debug, Clone)]
pub struct ClusterList {
    pub clusters: Vec<ClusterSummary>,
    pub errors: Vec<(String, String)>,
}

impl ClusterList {
    pub fn render(&self, now: SystemTime) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<24} {:>9}  {:<8} {:<22} {:<24} REGIONS",
            "CLUSTER", "INSTANCES", "AGE", "EXPIRES", "CONTROLLER"
        );
        for c in &self.clusters {
            let total: usize = c.regions.values().sum();
            let age = c
                .oldest_launch
                .and_then(|t| now.duration_since(t).ok())
                .map(tags::human_duration)
                .unwrap_or_else(|| "-".into());
            let expires = match c.expires_at {
                Some(t) if t <= now => format!("{} (EXPIRED)", tags::format_time(t)),
                Some(t) => tags::format_time(t),
                None => "-".into(),
            };
            let regions: Vec<String> = c.regions.iter().map(|(r, n)| format!("{r}:{n}")).collect();
            let _ = writeln!(
                s,
                "{:<24} {total:>9}  {age:<8} {expires:<22} {:<24} {}",
                c.name,
                c.controller.as_deref().unwrap_or("-"),
                regions.join(",")
            );
        }
        if self.clusters.is_empty() {
            s.push_str("no live cluster found\n");
        }
        for (r, e) in &self.errors {
            let _ = writeln!(s, "{r}: ERROR {e}");
        }
        s
    }
}

/// Finds every cluster with live instances, by tag, across the regions of the choice.
pub async fn list_clusters<E: Ec2>(
    ec2: &E,
    choice: &RegionChoice,
) -> Result<ClusterList, LauncherError> {
    let regions = regions::resolve(ec2, choice).await?;
    let per_region = regions::for_each(regions, |region| async move {
        let r = ec2
            .describe_instances(&region, &InstanceFilter::AnyCluster)
            .await;
        (region, r)
    })
    .await;
    let mut by_name: BTreeMap<String, ClusterSummary> = BTreeMap::new();
    let mut errors = Vec::new();
    for (region, result) in per_region {
        let instances = match result {
            Ok(i) => i,
            Err(e) => {
                errors.push((region, e.to_string()));
                continue;
            }
        };
        for i in instances.iter().filter(|i| i.is_live()) {
            let Some(name) = i.tag(CLUSTER_TAG) else {
                continue;
            };
            let c = by_name
                .entry(name.to_owned())
                .or_insert_with(|| ClusterSummary {
                    name: name.to_owned(),
                    regions: BTreeMap::new(),
                    oldest_launch: None,
                    expires_at: None,
                    controller: None,
                });
            *c.regions.entry(region.clone()).or_default() += 1;
            c.oldest_launch = min_opt(c.oldest_launch, i.launch_time);
            c.expires_at = min_opt(c.expires_at, i.tag(EXPIRES_TAG).and_then(tags::parse_time));
            if c.controller.is_none() {
                c.controller = i.tag(CONTROLLER_TAG).map(str::to_owned);
            }
        }
    }
    Ok(ClusterList {
        clusters: by_name.into_values().collect(),
        errors,
    })
}

fn min_opt(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: &str) -> Instance {
        Instance {
            id: id.into(),
            instance_type: "c7g.large".into(),
            zone: "eu-west-1a".into(),
            state: state.into(),
            launch_time: None,
            lifecycle: Some("spot".into()),
            private_ip: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn joined_counts_live_instances_whose_agent_said_hello() {
        let st = ClusterStatus {
            name: "tv".into(),
            regions: vec![
                RegionInstances {
                    region: "eu-west-1".into(),
                    instances: vec![
                        instance("i-1", "running"),
                        instance("i-2", "running"),
                        instance("i-3", "pending"),
                        instance("i-4", "terminated"),
                    ],
                    error: None,
                },
                RegionInstances {
                    region: "us-east-1".into(),
                    instances: vec![instance("i-5", "running")],
                    error: None,
                },
            ],
        };
        // i-4 is gone (its agent may still be listed by the controller for a while).
        let joined: HashSet<String> = ["i-1", "i-4", "i-5"].map(String::from).into();
        let text = st.render(Some(&joined));
        assert!(
            text.contains("eu-west-1        1 pending, 2 running, 1 terminated; joined 1/3"),
            "{text}"
        );
        assert!(
            text.contains("us-east-1        1 running; joined 1/1"),
            "{text}"
        );
        assert!(text.contains("cluster tv: 4 live instances\n"), "{text}");
        assert!(st.render(None).contains("joined unknown"));
    }
}
