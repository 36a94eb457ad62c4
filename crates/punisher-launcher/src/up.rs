//! `cluster up`: plan (read-only calls: images, spot prices), show the cost, then launch in
//! every region in parallel, falling back to the next type or zone when one fails.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::ami::{self, Arch};
use crate::api::{ApiErrorKind, Ec2, Instance, LaunchSpec};
use crate::error::LauncherError;
use crate::pricing::{self, Candidate, MaxPrice};
use crate::progress::Progress;
use crate::regions::{self, RegionChoice};
use crate::tags;
use crate::userdata::{self, UserDataParams};

/// The default candidate types: Graviton first (cheapest per core), then x86.
pub const DEFAULT_INSTANCE_TYPES: &[&str] = &[
    "c7g.large",
    "c6g.large",
    "c7i.large",
    "c6i.large",
    "c5.large",
];
/// RunInstances attempts per region at most: every candidate is a (type, zone) pair, and a
/// region with 6 zones and 5 types would otherwise try 30 times.
const MAX_ATTEMPTS_PER_REGION: usize = 12;

/// A validated `cluster up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub name: String,
    pub agents: Option<u32>,
    pub per_region: Option<u32>,
    /// `HOST:PORT` the agents dial.
    pub controller: String,
    pub token: String,
    pub controller_fingerprint: String,
    pub regions: RegionChoice,
    pub instance_types: Vec<String>,
    pub max_price: MaxPrice,
    pub ttl: Duration,
    /// `--ami REGION=ami-...`.
    pub ami_overrides: HashMap<String, String>,
    /// Base URL serving `/<target-triple>` and `/<target-triple>.sha256`; default
    /// `http://HOST:PORT+1/agent` for `--controller HOST:PORT`: the controller's gRPC port
    /// is TLS, its plain-HTTP binary endpoint (`punisher controller --http-listen`) is by
    /// convention on the next port.
    pub agent_url: Option<String>,
    /// Checksums by target triple, when given; otherwise read from the controller at launch.
    pub agent_sha256: HashMap<String, String>,
}

impl UpConfig {
    /// Checks what can be checked without AWS.
    pub fn validate(&self) -> Result<(), LauncherError> {
        tags::validate_cluster_name(&self.name)?;
        if split_host_port(&self.controller).is_none() {
            return Err(LauncherError::Invalid(format!(
                "invalid --controller {:?}: expected HOST:PORT",
                self.controller
            )));
        }
        if self.token.is_empty() {
            return Err(LauncherError::Invalid(
                "--token is empty: agents need the controller's token".into(),
            ));
        }
        for (what, v) in [
            ("--token", &self.token),
            ("--controller-fingerprint", &self.controller_fingerprint),
        ] {
            if v.chars().any(char::is_control) {
                return Err(LauncherError::Invalid(format!(
                    "{what} contains a control character"
                )));
            }
        }
        if self.controller_fingerprint.is_empty() {
            return Err(LauncherError::Invalid(
                "--controller-fingerprint is empty: agents pin the controller's certificate; \
                 the controller prints it at start"
                    .into(),
            ));
        }
        if self.instance_types.is_empty() {
            return Err(LauncherError::Invalid("--instance-types is empty".into()));
        }
        for t in &self.instance_types {
            let ok = t.split_once('.').is_some_and(|(f, s)| {
                !f.is_empty()
                    && !s.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            });
            if !ok {
                return Err(LauncherError::Invalid(format!(
                    "invalid instance type {t:?}: expected a name like c7g.large"
                )));
            }
        }
        if !(tags::MIN_TTL..=tags::MAX_TTL).contains(&self.ttl) {
            return Err(LauncherError::Invalid(
                "--ttl must be between 10m and 24h".into(),
            ));
        }
        match (self.agents, self.per_region) {
            (None, None) => {
                return Err(LauncherError::Invalid(
                    "say how many agents: --agents N (spread over the regions) or --per-region M"
                        .into(),
                ));
            }
            (Some(0), _) | (_, Some(0)) => {
                return Err(LauncherError::Invalid(
                    "--agents and --per-region must be at least 1".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn agent_url(&self) -> String {
        if let Some(url) = &self.agent_url {
            return url.clone();
        }
        match split_host_port(&self.controller) {
            Some((host, port)) => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                format!("http://{host}:{}/agent", port.saturating_add(1))
            }
            None => format!("http://{}/agent", self.controller),
        }
    }
}

/// `HOST:PORT` (IPv6 in brackets) into its parts.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    ok.then_some((host, port))
}

/// What one region will do.
#[derive(Debug, Clone)]
pub struct RegionPlan {
    pub region: String,
    pub agents: u32,
    /// Cheapest first; the launch walks them until the region has its agents.
    pub candidates: Vec<Candidate>,
    /// The image for each architecture in use.
    pub images: HashMap<Arch, String>,
    /// Types or zones left out, and why.
    pub notes: Vec<String>,
}

/// A region that cannot launch, and why (known before spending).
#[derive(Debug, Clone)]
pub struct RegionProblem {
    pub region: String,
    pub agents: u32,
    pub reason: String,
}

/// The plan shown before spending.
#[derive(Debug, Clone)]
pub struct UpPlan {
    pub config: UpConfig,
    pub expires_at: SystemTime,
    pub regions: Vec<RegionPlan>,
    pub problems: Vec<RegionProblem>,
    /// Controller reachability and checksum warnings.
    pub warnings: Vec<String>,
}

impl UpPlan {
    pub fn wanted_agents(&self) -> u32 {
        self.regions.iter().map(|r| r.agents).sum::<u32>()
            + self.problems.iter().map(|p| p.agents).sum::<u32>()
    }

    /// Estimated dollars per hour at current spot prices (first candidate per region).
    pub fn hourly_cost(&self) -> f64 {
        self.regions
            .iter()
            .filter_map(|r| {
                r.candidates
                    .first()
                    .map(|c| c.spot_price * f64::from(r.agents))
            })
            .sum()
    }

    /// The most the cluster can cost per hour: every instance at its bid.
    pub fn hourly_cap(&self) -> f64 {
        self.regions
            .iter()
            .map(|r| {
                let max_bid = r.candidates.iter().map(|c| c.bid).fold(0.0, f64::max);
                max_bid * f64::from(r.agents)
            })
            .sum()
    }

    /// The table shown before the confirmation.
    pub fn cost_table(&self) -> String {
        let mut s = String::new();
        let ttl_h = self.config.ttl.as_secs_f64() / 3600.0;
        let _ = writeln!(
            s,
            "{:<16} {:>6}  {:<12} {:<16} {:>10} {:>10} {:>10}",
            "REGION", "AGENTS", "TYPE", "ZONE", "SPOT $/H", "BID $/H", "EST $/H"
        );
        for r in &self.regions {
            if let Some(c) = r.candidates.first() {
                let _ = writeln!(
                    s,
                    "{:<16} {:>6}  {:<12} {:<16} {:>10.5} {:>10}{} {:>10.4}",
                    r.region,
                    r.agents,
                    c.instance_type,
                    c.zone,
                    c.spot_price,
                    c.bid_string(),
                    if c.on_demand_known { " " } else { "*" },
                    c.spot_price * f64::from(r.agents)
                );
            }
            for n in &r.notes {
                let _ = writeln!(s, "{:<16}   note: {n}", "");
            }
        }
        for p in &self.problems {
            let _ = writeln!(
                s,
                "{:<16} {:>6}  cannot launch: {}",
                p.region, p.agents, p.reason
            );
        }
        let planned: u32 = self.regions.iter().map(|r| r.agents).sum();
        let _ = writeln!(
            s,
            "total: {planned} of {} agents in {} regions; estimated ${:.4}/h, ${:.2} for the \
             whole TTL of {}; at most ${:.4}/h if every price rose to its bid",
            self.wanted_agents(),
            self.regions.len(),
            self.hourly_cost(),
            self.hourly_cost() * ttl_h,
            tags::human_duration(self.config.ttl),
            self.hourly_cap(),
        );
        if self
            .regions
            .iter()
            .flat_map(|r| r.candidates.first())
            .any(|c| !c.on_demand_known)
        {
            let _ = writeln!(
                s,
                "* on-demand price not in the built-in table: bid is spot +{:.0}% without an \
                 on-demand cap",
                pricing::AUTO_MARGIN * 100.0
            );
        }
        if self.config.max_price == MaxPrice::Auto
            && self
                .regions
                .iter()
                .flat_map(|r| r.candidates.first())
                .any(|c| c.on_demand_known)
        {
            // The built-in table holds us-east-1 prices only (no pricing API is called): say
            // so, since the cap is then not the region's own on-demand price.
            let _ = writeln!(
                s,
                "bids are capped by the us-east-1 on-demand price (built-in table) in every \
                 region; a region's own on-demand price may be higher"
            );
        }
        let _ = writeln!(
            s,
            "instances terminate by themselves at {} (punisher:expires-at)",
            tags::format_time(self.expires_at)
        );
        s
    }
}

/// Plans every region in parallel with read-only calls only.
pub async fn plan<E: Ec2>(
    ec2: &E,
    config: UpConfig,
    progress: &dyn Progress,
) -> Result<UpPlan, LauncherError> {
    config.validate()?;
    let regions = regions::resolve(ec2, &config.regions).await?;
    let spread = regions::spread(&regions, config.agents, config.per_region)?;
    let expires_at = SystemTime::now() + config.ttl;
    let since = SystemTime::now() - Duration::from_secs(3600);
    let planned = regions::for_each(spread, |(region, agents)| {
        let config = &config;
        async move {
            progress.line(&region, "looking up images and spot prices");
            match plan_region(ec2, config, &region, agents, since).await {
                Ok(p) => {
                    if let Some(c) = p.candidates.first() {
                        progress.line(
                            &region,
                            &format!(
                                "{agents} agents: cheapest {} in {} at ${:.5}/h",
                                c.instance_type, c.zone, c.spot_price
                            ),
                        );
                    }
                    Ok(p)
                }
                Err(reason) => {
                    progress.line(&region, &format!("cannot launch: {reason}"));
                    Err(RegionProblem {
                        region,
                        agents,
                        reason,
                    })
                }
            }
        }
    })
    .await;
    let mut plan = UpPlan {
        warnings: preflight(&config).await,
        config,
        expires_at,
        regions: Vec::new(),
        problems: Vec::new(),
    };
    for p in planned {
        match p {
            Ok(r) => plan.regions.push(r),
            Err(e) => plan.problems.push(e),
        }
    }
    Ok(plan)
}

async fn plan_region<E: Ec2>(
    ec2: &E,
    config: &UpConfig,
    region: &str,
    agents: u32,
    since: SystemTime,
) -> Result<RegionPlan, String> {
    let mut notes = Vec::new();
    let mut images = HashMap::new();
    let arches: BTreeSet<Arch> = config
        .instance_types
        .iter()
        .map(|t| Arch::of_instance_type(t))
        .collect();
    for arch in arches {
        if let Some(ami) = config.ami_overrides.get(region) {
            // One override for the region: it serves the architecture of the first type;
            // types of the other architecture are dropped below.
            let first = Arch::of_instance_type(&config.instance_types[0]);
            if arch == first {
                images.insert(arch, ami.clone());
            }
            continue;
        }
        match ami::latest_al2023(ec2, region, arch).await {
            Ok(Some(id)) => {
                images.insert(arch, id);
            }
            Ok(None) => notes.push(format!(
                "no Amazon Linux 2023 image for {} here; pass --ami {region}=ami-...",
                arch.ec2_name()
            )),
            Err(e) => return Err(e.to_string()),
        }
    }
    let types: Vec<String> = config
        .instance_types
        .iter()
        .filter(|t| images.contains_key(&Arch::of_instance_type(t)))
        .cloned()
        .collect();
    if types.is_empty() {
        return Err(notes.join("; "));
    }
    let quotes = ec2
        .spot_prices(region, &types, since)
        .await
        .map_err(|e| format!("reading spot prices failed ({e})"))?;
    let (candidates, skipped) = pricing::candidates(&quotes, &types, config.max_price);
    notes.extend(skipped);
    if candidates.is_empty() {
        return Err(format!(
            "no type and zone within the price cap: {}",
            notes.join("; ")
        ));
    }
    Ok(RegionPlan {
        region: region.to_owned(),
        agents,
        candidates,
        images,
        notes,
    })
}

/// Warnings about the controller (never fatal: `up` does not need it running) and the
/// agent checksums read from it.
async fn preflight(config: &UpConfig) -> Vec<String> {
    let mut w = Vec::new();
    if let Some((host, port)) = split_host_port(&config.controller) {
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        if loopback {
            w.push(format!(
                "--controller {} is a loopback address: agents on EC2 cannot reach it (fine \
                 for tests against an emulator)",
                config.controller
            ));
        }
        let reach = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await;
        if !matches!(reach, Ok(Ok(_))) {
            w.push(format!(
                "cannot reach the controller at {} from here; agents will keep retrying \
                 until it answers",
                config.controller
            ));
        }
    }
    w
}

/// The checksum to embed for a triple: given by flag, or read from the controller now.
async fn agent_checksum(config: &UpConfig, triple: &str) -> Option<String> {
    if let Some(s) = config.agent_sha256.get(triple) {
        return Some(s.clone());
    }
    let url = format!(
        "{}/{triple}.sha256",
        config.agent_url().trim_end_matches('/')
    );
    let r = punisher_proto::plain_http::request("GET", &url, &[], Duration::from_secs(3))
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    let text = String::from_utf8(r.body).ok()?;
    let hex = text.split_whitespace().next()?.to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// One region's outcome.
#[derive(Debug, Clone)]
pub struct RegionOutcome {
    pub region: String,
    pub wanted: u32,
    pub launched: Vec<Instance>,
    /// Failed attempts (type, zone, why) before the region got its agents or gave up.
    pub attempts: Vec<String>,
    /// Why the region stopped short, when it did.
    pub error: Option<String>,
}

/// What `up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub regions: Vec<RegionOutcome>,
}

impl UpReport {
    pub fn wanted(&self) -> u32 {
        self.regions.iter().map(|r| r.wanted).sum()
    }

    pub fn launched(&self) -> usize {
        self.regions.iter().map(|r| r.launched.len()).sum()
    }

    /// Whether every wanted agent was launched (the CLI exits non-zero otherwise).
    pub fn is_complete(&self) -> bool {
        self.launched() >= self.wanted() as usize
    }

    /// The per-region result table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.regions {
            let status = match &r.error {
                None if r.launched.len() >= r.wanted as usize => "ok".to_owned(),
                None => "short".to_owned(),
                Some(e) => format!("FAILED: {e}"),
            };
            let _ = writeln!(
                s,
                "{:<16} {:>3}/{:<3} {status}",
                r.region,
                r.launched.len(),
                r.wanted
            );
        }
        let _ = writeln!(
            s,
            "launched {} of {} agents",
            self.launched(),
            self.wanted()
        );
        s
    }
}

/// Launches the plan: a security group and the instances in every planned region, in
/// parallel. Regions known to be impossible at planning are reported as failed.
pub async fn execute<E: Ec2>(ec2: &E, plan: &UpPlan, progress: &dyn Progress) -> UpReport {
    let config = &plan.config;
    let expires = tags::format_time(plan.expires_at);
    let tags = tags::cluster_tags(&config.name, plan.expires_at, &config.controller);
    // Scripts per architecture, rendered once: the checksum lookup is a network call.
    let mut scripts: HashMap<Arch, Result<String, String>> = HashMap::new();
    let agent_url = config.agent_url();
    for arch in plan.regions.iter().flat_map(|r| r.images.keys().copied()) {
        if scripts.contains_key(&arch) {
            continue;
        }
        let triple = arch.target_triple();
        let sha = agent_checksum(config, triple).await;
        let rendered = userdata::render(&UserDataParams {
            cluster: &config.name,
            controller: &config.controller,
            token: &config.token,
            controller_fingerprint: &config.controller_fingerprint,
            agent_url: &agent_url,
            target_triple: triple,
            agent_sha256: sha.as_deref(),
            ttl: config.ttl,
            expires_at: &expires,
        })
        .map(|s| userdata::encode(&s))
        .map_err(|e| e.to_string());
        scripts.insert(arch, rendered);
    }
    let mut outcomes = regions::for_each(plan.regions.clone(), |rp| {
        let (tags, scripts) = (&tags, &scripts);
        async move { launch_region(ec2, config, &rp, tags, scripts, progress).await }
    })
    .await;
    outcomes.extend(plan.problems.iter().map(|p| RegionOutcome {
        region: p.region.clone(),
        wanted: p.agents,
        launched: Vec::new(),
        attempts: Vec::new(),
        error: Some(p.reason.clone()),
    }));
    UpReport { regions: outcomes }
}

async fn launch_region<E: Ec2>(
    ec2: &E,
    config: &UpConfig,
    rp: &RegionPlan,
    tags: &[(String, String)],
    scripts: &HashMap<Arch, Result<String, String>>,
    progress: &dyn Progress,
) -> RegionOutcome {
    let region = rp.region.as_str();
    let mut out = RegionOutcome {
        region: region.to_owned(),
        wanted: rp.agents,
        launched: Vec::new(),
        attempts: Vec::new(),
        error: None,
    };
    // Refuse before creating anything when a script could not be rendered.
    for arch in rp.images.keys() {
        if let Some(Err(e)) = scripts.get(arch) {
            progress.line(region, &format!("user data: {e}"));
            out.error = Some(e.clone());
            return out;
        }
    }
    let sg = match ensure_security_group(ec2, region, &config.name, tags).await {
        Ok(id) => id,
        Err(e) => {
            progress.line(region, &format!("security group: {e}"));
            out.error = Some(format!("security group: {e}"));
            return out;
        }
    };
    progress.line(region, &format!("security group {sg} (no inbound rule)"));
    for c in rp.candidates.iter().take(MAX_ATTEMPTS_PER_REGION) {
        let remaining = rp.agents.saturating_sub(out.launched.len() as u32);
        if remaining == 0 {
            break;
        }
        let arch = Arch::of_instance_type(&c.instance_type);
        let (Some(image), Some(Ok(user_data))) = (rp.images.get(&arch), scripts.get(&arch)) else {
            continue;
        };
        let mut spec = LaunchSpec {
            image_id: image.clone(),
            instance_type: c.instance_type.clone(),
            zone: c.zone.clone(),
            count: remaining,
            // All of the region's agents in one zone first; when the zone lacks capacity for
            // all, take what it has (min 1) before moving on. (moto also launches exactly
            // MinCount instances, ignoring MaxCount, so all-or-nothing is what it honours.)
            min_count: remaining,
            max_price: Some(c.bid_string()),
            user_data_base64: user_data.clone(),
            security_group_id: Some(sg.clone()),
            tags: tags.to_vec(),
        };
        loop {
            match ec2.run_instances(region, &spec).await {
                Ok(instances) => {
                    progress.line(
                        region,
                        &format!(
                            "launched {} x {} in {} (bid ${}/h)",
                            instances.len(),
                            c.instance_type,
                            c.zone,
                            c.bid_string()
                        ),
                    );
                    out.launched.extend(instances);
                }
                Err(e) if e.kind.try_next_candidate() => {
                    let msg = format!("{} in {}: {e}", c.instance_type, c.zone);
                    out.attempts.push(msg.clone());
                    if e.kind == ApiErrorKind::Capacity && spec.min_count > 1 {
                        progress.line(region, &format!("{msg}; taking what the zone has"));
                        spec.min_count = 1;
                        continue;
                    }
                    progress.line(region, &format!("{msg}; trying the next type or zone"));
                }
                Err(e) => {
                    let hint = if e.kind == ApiErrorKind::Auth {
                        " (check the credentials and the IAM policy in deploy/iam/)"
                    } else {
                        ""
                    };
                    progress.line(region, &format!("{e}{hint}; giving up on this region"));
                    out.error = Some(format!("{e}{hint}"));
                    return out;
                }
            }
            break;
        }
    }
    if out.launched.len() < rp.agents as usize {
        let why = out
            .attempts
            .last()
            .cloned()
            .unwrap_or_else(|| "no candidate left".into());
        out.error = Some(format!(
            "launched {} of {}: every type and zone was tried; last: {why}",
            out.launched.len(),
            rp.agents
        ));
    } else {
        progress.line(region, &format!("done: {} agents", out.launched.len()));
    }
    out
}

/// The cluster's security group in a region: found by tag, or created (idempotent, so that a
/// second `up` with the same name reuses it).
async fn ensure_security_group<E: Ec2>(
    ec2: &E,
    region: &str,
    cluster: &str,
    tags: &[(String, String)],
) -> Result<String, crate::api::ApiError> {
    if let Some(g) = ec2
        .security_groups(region, cluster)
        .await?
        .into_iter()
        .next()
    {
        return Ok(g.id);
    }
    let name = format!("punisher-{cluster}");
    let description = format!("punisher agents of cluster {cluster}: outbound only");
    match ec2
        .create_security_group(region, &name, &description, tags)
        .await
    {
        Ok(id) => Ok(id),
        Err(e) if e.kind == ApiErrorKind::Duplicate => {
            // Created concurrently, or an untagged group of that name: use it only if tagged.
            ec2.security_groups(region, cluster)
                .await?
                .into_iter()
                .next()
                .map(|g| g.id)
                .ok_or(e)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("10.0.0.1:7600"), Some(("10.0.0.1", 7600)));
        assert_eq!(split_host_port("[::1]:7600"), Some(("::1", 7600)));
        assert_eq!(
            split_host_port("ctl.example.com:1"),
            Some(("ctl.example.com", 1))
        );
        for bad in ["x", "x:0", ":80", "a b:80", "x:99999", "$(id):80"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
