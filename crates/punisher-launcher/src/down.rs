//! `cluster down`: terminate everything tagged for the cluster in every region, delete its
//! security groups once the instances are gone, and prove that nothing is left. Idempotent:
//! a second run finds nothing and says so.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{ApiErrorKind, Ec2, InstanceFilter};
use crate::error::LauncherError;
use crate::progress::Progress;
use crate::regions::{self, RegionChoice};
use crate::tags;

/// A validated `cluster down`.
#[derive(Debug, Clone)]
pub struct DownConfig {
    pub name: String,
    /// Default: every enabled region, since a cluster may span them all.
    pub regions: RegionChoice,
    /// How long to wait for instances to reach `terminated` (EC2 takes ~1 minute).
    pub wait: Duration,
    /// How often to look while waiting.
    pub poll_interval: Duration,
}

impl DownConfig {
    pub fn new(name: &str, regions: RegionChoice) -> DownConfig {
        DownConfig {
            name: name.to_owned(),
            regions,
            wait: Duration::from_secs(600),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// One region's teardown.
#[derive(Debug, Clone, Default)]
pub struct RegionDown {
    pub region: String,
    /// Instances this run asked EC2 to terminate.
    pub terminated: Vec<String>,
    pub groups_deleted: Vec<String>,
    /// Found alive (not `terminated`) at the final check.
    pub left_instances: Vec<String>,
    pub left_groups: Vec<String>,
    pub error: Option<String>,
}

impl RegionDown {
    fn is_clean(&self) -> bool {
        self.error.is_none() && self.left_instances.is_empty() && self.left_groups.is_empty()
    }
}

/// What `down` did, region by region.
#[derive(Debug, Clone)]
pub struct DownReport {
    pub regions: Vec<RegionDown>,
}

impl DownReport {
    /// Whether every region was checked and holds nothing of the cluster.
    pub fn is_clean(&self) -> bool {
        self.regions.iter().all(RegionDown::is_clean)
    }

    /// One line per region that had something (or failed), then the verdict.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.regions {
            if r.terminated.is_empty() && r.groups_deleted.is_empty() && r.is_clean() {
                continue;
            }
            let _ = write!(
                s,
                "{:<16} terminated {}, security groups deleted {}",
                r.region,
                r.terminated.len(),
                r.groups_deleted.len()
            );
            if !r.left_instances.is_empty() || !r.left_groups.is_empty() {
                let _ = write!(
                    s,
                    "; LEFT: instances {:?} groups {:?}",
                    r.left_instances, r.left_groups
                );
            }
            if let Some(e) = &r.error {
                let _ = write!(s, "; ERROR: {e}");
            }
            s.push('\n');
        }
        let n: usize = self.regions.iter().map(|r| r.terminated.len()).sum();
        if self.is_clean() {
            let _ = writeln!(
                s,
                "verified: nothing of the cluster is left in {} regions ({n} instances \
                 terminated by this run)",
                self.regions.len()
            );
        } else {
            let _ = writeln!(s, "NOT clean: run `punisher cluster down` again");
        }
        s
    }

    /// `Err(Leftovers)` unless clean, for callers that want a `Result`.
    pub fn into_result(self) -> Result<DownReport, LauncherError> {
        if self.is_clean() {
            return Ok(self);
        }
        let bad: Vec<String> = self
            .regions
            .iter()
            .filter(|r| !r.is_clean())
            .map(|r| r.region.clone())
            .collect();
        Err(LauncherError::Leftovers(format!(
            "regions {}",
            bad.join(", ")
        )))
    }
}

/// Tears the cluster down in every region of the choice, in parallel.
pub async fn down<E: Ec2>(
    ec2: &E,
    config: &DownConfig,
    progress: &dyn Progress,
) -> Result<DownReport, LauncherError> {
    tags::validate_cluster_name(&config.name)?;
    let regions = regions::resolve(ec2, &config.regions).await?;
    let out = regions::for_each(regions, |region| async move {
        let mut r = RegionDown {
            region: region.clone(),
            ..RegionDown::default()
        };
        if let Err(e) = down_region(ec2, config, &mut r, progress).await {
            progress.line(&region, &format!("error: {e}"));
            r.error = Some(e);
        }
        r
    })
    .await;
    Ok(DownReport { regions: out })
}

async fn down_region<E: Ec2>(
    ec2: &E,
    config: &DownConfig,
    r: &mut RegionDown,
    progress: &dyn Progress,
) -> Result<(), String> {
    let region = r.region.clone();
    let filter = InstanceFilter::Cluster(config.name.clone());
    let deadline = Instant::now() + config.wait;
    let live: Vec<String> = ec2
        .describe_instances(&region, &filter)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|i| i.is_live() && i.state != "shutting-down")
        .map(|i| i.id)
        .collect();
    if !live.is_empty() {
        progress.line(&region, &format!("terminating {} instances", live.len()));
        match ec2.terminate_instances(&region, &live).await {
            Ok(()) => r.terminated = live,
            // Gone between the listing and the call: that is what we wanted.
            Err(e) if e.kind == ApiErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // Wait until nothing is left but `terminated`: a security group cannot be deleted
    // while an instance (or its network interface) still uses it.
    loop {
        let alive: Vec<String> = ec2
            .describe_instances(&region, &filter)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.is_live())
            .map(|i| i.id)
            .collect();
        if alive.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            r.left_instances = alive;
            return Err(format!(
                "instances still terminating after {:?}",
                config.wait
            ));
        }
        tokio::time::sleep(config.poll_interval).await;
    }
    let groups = ec2
        .security_groups(&region, &config.name)
        .await
        .map_err(|e| e.to_string())?;
    for g in groups {
        loop {
            match ec2.delete_security_group(&region, &g.id).await {
                Ok(()) => {
                    progress.line(&region, &format!("deleted security group {}", g.id));
                    r.groups_deleted.push(g.id.clone());
                    break;
                }
                Err(e) if e.kind == ApiErrorKind::NotFound => break,
                // Network interfaces outlive their instance by a little.
                Err(e)
                    if e.kind == ApiErrorKind::DependencyViolation && Instant::now() < deadline =>
                {
                    progress.line(
                        &region,
                        &format!("security group {} still in use; waiting", g.id),
                    );
                    tokio::time::sleep(config.poll_interval).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    // The proof: look again.
    r.left_instances = ec2
        .describe_instances(&region, &filter)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|i| i.is_live())
        .map(|i| i.id)
        .collect();
    r.left_groups = ec2
        .security_groups(&region, &config.name)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|g| g.id)
        .collect();
    Ok(())
}
