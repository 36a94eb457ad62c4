//! Which regions a cluster uses and how many agents each gets.

use std::future::Future;

use futures_util::stream::{self, StreamExt};

use crate::api::Ec2;

/// Regions worked at the same time: all of them in practice (there are ~34), bounded so
/// that a long list cannot open hundreds of connections at once.
const MAX_PARALLEL_REGIONS: usize = 16;
use crate::error::LauncherError;

/// `--regions`: every enabled region of the account, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionChoice {
    All,
    List(Vec<String>),
}

impl RegionChoice {
    /// Parses `all` or `r1,r2,...` (duplicates removed, order kept).
    pub fn parse(s: &str) -> Result<RegionChoice, LauncherError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(RegionChoice::All);
        }
        let mut list: Vec<String> = Vec::new();
        for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            validate_region_name(r)?;
            if !list.iter().any(|x| x == r) {
                list.push(r.to_owned());
            }
        }
        if list.is_empty() {
            return Err(LauncherError::Invalid(
                "--regions is empty: write `all` or a list such as us-east-1,eu-west-1".into(),
            ));
        }
        Ok(RegionChoice::List(list))
    }
}

/// A region name must look like one (`us-east-1`): it becomes part of a host name.
pub fn validate_region_name(r: &str) -> Result<(), LauncherError> {
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(LauncherError::Invalid(format!(
            "invalid region name {r:?}: expected a name like us-east-1"
        )))
    }
}

/// Resolves the choice: `All` asks DescribeRegions for the enabled regions. GovCloud and
/// China regions are dropped because they live in other partitions (other credentials);
/// name them explicitly to use them.
pub async fn resolve<E: Ec2>(ec2: &E, choice: &RegionChoice) -> Result<Vec<String>, LauncherError> {
    match choice {
        RegionChoice::List(list) => Ok(list.clone()),
        RegionChoice::All => {
            let regions = ec2
                .describe_regions()
                .await
                .map_err(LauncherError::Regions)?;
            let regions: Vec<String> = regions
                .into_iter()
                .filter(|r| !r.starts_with("us-gov-") && !r.starts_with("cn-"))
                .collect();
            if regions.is_empty() {
                return Err(LauncherError::NothingToLaunch(
                    "DescribeRegions returned no enabled region".into(),
                ));
            }
            Ok(regions)
        }
    }
}

/// How many agents each region gets: `agents` spread evenly (the first regions take the
/// remainder), or `per_region` each until `agents` is reached.
pub fn spread(
    regions: &[String],
    agents: Option<u32>,
    per_region: Option<u32>,
) -> Result<Vec<(String, u32)>, LauncherError> {
    let n = u32::try_from(regions.len()).unwrap_or(u32::MAX);
    if n == 0 {
        return Err(LauncherError::Invalid("no region to launch in".into()));
    }
    let counts: Vec<u32> = match (agents, per_region) {
        (None, None) => {
            return Err(LauncherError::Invalid(
                "say how many agents: --agents N (spread over the regions) or --per-region M"
                    .into(),
            ));
        }
        (_, Some(0)) | (Some(0), _) => {
            return Err(LauncherError::Invalid(
                "--agents and --per-region must be at least 1".into(),
            ));
        }
        (Some(total), None) => (0..n)
            .map(|i| total / n + u32::from(i < total % n))
            .collect(),
        (None, Some(m)) => vec![m; regions.len()],
        (Some(total), Some(m)) => {
            if u64::from(total) > u64::from(m) * u64::from(n) {
                return Err(LauncherError::Invalid(format!(
                    "--agents {total} does not fit --per-region {m} in {n} regions; raise \
                     --per-region or add regions"
                )));
            }
            let mut left = total;
            (0..n)
                .map(|_| {
                    let c = left.min(m);
                    left -= c;
                    c
                })
                .collect()
        }
    };
    Ok(regions
        .iter()
        .cloned()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .collect())
}

/// Runs `f` for every item concurrently (bounded) and returns the results in input order.
pub(crate) async fn for_each<I, T, F, Fut>(items: Vec<I>, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T>,
{
    let mut out: Vec<(usize, T)> = stream::iter(items.into_iter().enumerate().map(|(i, x)| {
        let fut = f(x);
        async move { (i, fut.await) }
    }))
    .buffer_unordered(MAX_PARALLEL_REGIONS)
    .collect()
    .await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn spreads_evenly() {
        let regions = r(&["a-b-1", "c-d-1", "e-f-1"]);
        let s = spread(&regions, Some(12), None).unwrap();
        assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), [4, 4, 4]);
        let s = spread(&regions, Some(5), None).unwrap();
        assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), [2, 2, 1]);
        // Fewer agents than regions: the regions with none are dropped.
        let s = spread(&regions, Some(2), None).unwrap();
        assert_eq!(s.len(), 2);
        let s = spread(&regions, None, Some(3)).unwrap();
        assert_eq!(s.iter().map(|x| x.1).sum::<u32>(), 9);
        let s = spread(&regions, Some(7), Some(3)).unwrap();
        assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), [3, 3, 1]);
        assert!(spread(&regions, Some(10), Some(3)).is_err());
        assert!(spread(&regions, None, None).is_err());
        assert!(spread(&regions, Some(0), None).is_err());
    }

    #[test]
    fn parses_regions() {
        assert_eq!(RegionChoice::parse("all").unwrap(), RegionChoice::All);
        assert_eq!(
            RegionChoice::parse("us-east-1, eu-west-1,us-east-1").unwrap(),
            RegionChoice::List(r(&["us-east-1", "eu-west-1"]))
        );
        for bad in [
            "",
            ",",
            "us-east",
            "US-EAST-1",
            "us_east_1",
            "http://x",
            "us-east-1;x",
        ] {
            assert!(RegionChoice::parse(bad).is_err(), "{bad}");
        }
        assert!(RegionChoice::parse("ap-southeast-7").is_ok());
    }
}
