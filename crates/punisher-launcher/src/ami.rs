//! Which machine image an agent boots: the latest Amazon Linux 2023 for the instance type's
//! architecture, unless `--ami REGION=ami-...` names one.

use std::collections::HashMap;

use crate::api::Ec2;
use crate::error::LauncherError;

/// A CPU architecture as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// EC2's name (`x86_64`, `arm64`), used in image filters and AL2023 image names.
    pub fn ec2_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple of the agent binary the controller serves for it.
    pub fn target_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The architecture of an instance type: Graviton families carry a `g` after the
    /// generation digit (`c7g`, `m6gd`, `t4g`, `c7gn`, `r8g`); `a1` is Graviton 1.
    pub fn of_instance_type(instance_type: &str) -> Arch {
        let family = instance_type.split('.').next().unwrap_or("");
        if family == "a1" {
            return Arch::Arm64;
        }
        let after_digit = family
            .find(|c: char| c.is_ascii_digit())
            .map(|i| &family[i..])
            .map(|s| s.trim_start_matches(|c: char| c.is_ascii_digit()));
        match after_digit {
            Some(rest) if rest.starts_with('g') => Arch::Arm64,
            _ => Arch::X86_64,
        }
    }
}

/// `--ami REGION=ami-...` overrides, parsed.
pub fn parse_overrides(flags: &[String]) -> Result<HashMap<String, String>, LauncherError> {
    let mut map = HashMap::new();
    for f in flags {
        let Some((region, ami)) = f.split_once('=') else {
            return Err(LauncherError::Invalid(format!(
                "invalid --ami {f:?}: write REGION=ami-..., e.g. --ami eu-west-1=ami-0abc"
            )));
        };
        crate::regions::validate_region_name(region)?;
        if !ami.starts_with("ami-") || !ami[4..].chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(LauncherError::Invalid(format!(
                "invalid --ami {f:?}: the image id must look like ami-0123abcd"
            )));
        }
        map.insert(region.to_owned(), ami.to_owned());
    }
    Ok(map)
}

/// The AL2023 name pattern for an architecture (the `kernel-*` variants included).
pub fn al2023_pattern(arch: Arch) -> String {
    format!("al2023-ami-2023.*-{}", arch.ec2_name())
}

/// The newest AL2023 image for `arch` in `region`; `Ok(None)` when there is none.
pub async fn latest_al2023<E: Ec2>(
    ec2: &E,
    region: &str,
    arch: Arch,
) -> Result<Option<String>, LauncherError> {
    let images = ec2
        .describe_images(region, &al2023_pattern(arch), arch.ec2_name())
        .await
        .map_err(|source| LauncherError::Region {
            region: region.to_owned(),
            what: "finding the Amazon Linux 2023 image",
            source,
        })?;
    // Minimal images carry "minimal" in the name and lack tools the bootstrap uses (curl is
    // there, but not always sha256sum in older builds): prefer the standard image. Ties
    // on date: the name sorts by version.
    Ok(images
        .into_iter()
        .filter(|i| !i.name.contains("minimal"))
        .max_by(|a, b| {
            a.creation_date
                .cmp(&b.creation_date)
                .then_with(|| a.name.cmp(&b.name))
        })
        .map(|i| i.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_from_type() {
        for t in [
            "c7g.large",
            "m6gd.xlarge",
            "t4g.micro",
            "c7gn.large",
            "r8g.large",
            "a1.large",
        ] {
            assert_eq!(Arch::of_instance_type(t), Arch::Arm64, "{t}");
        }
        for t in [
            "c6i.large",
            "c5.large",
            "m7a.large",
            "t3.micro",
            "c5n.large",
            "g5.xlarge",
        ] {
            assert_eq!(Arch::of_instance_type(t), Arch::X86_64, "{t}");
        }
    }

    #[test]
    fn overrides() {
        let m = parse_overrides(&["eu-west-1=ami-0abc123".into()]).unwrap();
        assert_eq!(m["eu-west-1"], "ami-0abc123");
        assert!(parse_overrides(&["eu-west-1".into()]).is_err());
        assert!(parse_overrides(&["eu-west-1=ami-$(x)".into()]).is_err());
        assert!(parse_overrides(&["nope=ami-1".into()]).is_err());
    }
}
