//! `cluster up / status / ls / down` against moto's EC2 server.
//!
//! What moto does not implement or store is listed in the crate docs (`punisher_launcher`,
//! "What moto cannot show"); those paths are tested against the fake in `fake_ec2.rs`, and
//! what moto drops on the floor (the spot options) is read from moto's request recording.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine;
use punisher_launcher::AwsEc2;
use punisher_launcher::down::{self, DownConfig};
use punisher_launcher::pricing::MaxPrice;
use punisher_launcher::regions::RegionChoice;
use punisher_launcher::status;
use punisher_launcher::tags::{CLUSTER_TAG, CONTROLLER_TAG, EXPIRES_TAG};
use punisher_launcher::up::{self, DEFAULT_INSTANCE_TYPES, UpConfig};

use crate::util::{ACCESS_KEY, Lines, Moto, SECRET_KEY, skip};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-northeast-1"];
const FINGERPRINT: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn config(name: &str, regions: &str, agents: u32) -> UpConfig {
    UpConfig {
        name: name.into(),
        agents: Some(agents),
        per_region: None,
        // A closed loopback port: `up` must only warn.
        controller: "127.0.0.1:9".into(),
        token: "run-token-123".into(),
        controller_fingerprint: FINGERPRINT.into(),
        regions: RegionChoice::parse(regions).unwrap(),
        instance_types: DEFAULT_INSTANCE_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        max_price: MaxPrice::Auto,
        ttl: Duration::from_secs(7200),
        ami_overrides: HashMap::new(),
        agent_url: None,
        agent_sha256: HashMap::new(),
    }
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

async fn tagged_instances(
    moto: &Moto,
    region: &str,
    cluster: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = moto
        .client(region)
        .await
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values(cluster)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

#[tokio::test]
async fn up_status_ls_down_across_three_regions() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let ec2 = AwsEc2::from_sdk_config(moto.sdk_config().await);
    let lines = Lines::default();
    let cfg = config("tv-1", &REGIONS.join(","), 12);

    let plan = up::plan(&ec2, cfg, &lines).await.unwrap();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.wanted_agents(), 12);
    assert!(
        plan.warnings.iter().any(|w| w.contains("loopback")),
        "{:?}",
        plan.warnings
    );
    let table = plan.cost_table();
    for r in REGIONS {
        assert!(table.contains(r), "{table}");
    }
    assert!(
        table.contains("total: 12 of 12 agents in 3 regions"),
        "{table}"
    );
    assert!(
        table.contains("capped by the us-east-1 on-demand price"),
        "{table}"
    );

    let report = up::execute(&ec2, &plan, &lines).await;
    assert!(report.is_complete(), "{}", report.render());
    assert_eq!(report.launched(), 12);

    for region in REGIONS {
        assert!(
            lines
                .for_region(region)
                .iter()
                .any(|l| l.starts_with("launched 4 x")),
            "{region}: {:?}",
            lines.for_region(region)
        );
        let client = moto.client(region).await;
        let instances = tagged_instances(&moto, region, "tv-1").await;
        assert_eq!(instances.len(), 4, "{region}");
        for i in &instances {
            let id = i.instance_id().unwrap();
            assert_eq!(tag(i.tags(), CLUSTER_TAG), Some("tv-1"));
            assert_eq!(tag(i.tags(), CONTROLLER_TAG), Some("127.0.0.1:9"));
            let expires = tag(i.tags(), EXPIRES_TAG).unwrap();
            assert!(
                punisher_launcher::tags::parse_time(expires).is_some(),
                "{expires}"
            );
            assert_eq!(
                i.instance_lifecycle().map(|l| l.as_str()),
                Some("spot"),
                "{id}"
            );
            assert!(
                i.placement()
                    .unwrap()
                    .availability_zone()
                    .unwrap()
                    .starts_with(region)
            );
            // Graviton first in the default list: the AMI must be arm64 then.
            let arch = i.architecture().map(|a| a.as_str().to_owned());
            let t = i.instance_type().unwrap().as_str().to_owned();
            let want = if t.contains("g.") { "arm64" } else { "x86_64" };
            assert_eq!(arch.as_deref(), Some(want), "{t}");

            let shutdown = client
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
                .send()
                .await
                .unwrap();
            assert_eq!(
                shutdown
                    .instance_initiated_shutdown_behavior()
                    .and_then(|v| v.value()),
                Some("terminate")
            );
            let ud = client
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(InstanceAttributeName::UserData)
                .send()
                .await
                .unwrap();
            let encoded = ud.user_data().and_then(|v| v.value()).unwrap();
            let script = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap(),
            )
            .unwrap();
            assert!(script.starts_with("#!/bin/bash"), "{script}");
            assert!(script.contains("CONTROLLER='127.0.0.1:9'"));
            assert!(script.contains(&format!("FINGERPRINT='{FINGERPRINT}'")));
            assert!(script.contains("TOKEN='run-token-123'"));
            // The controller's binary endpoint: by convention its gRPC port + 1.
            assert!(script.contains("AGENT_URL='http://127.0.0.1:10/agent'"));
            assert!(script.contains("aarch64-unknown-linux-gnu") || script.contains("x86_64"));
            assert!(script.contains("shutdown -h \"+${TTL_MINUTES}\""));
            assert!(!script.contains(SECRET_KEY), "secret key in user data");
            assert!(!script.contains(ACCESS_KEY), "access key in user data");
            assert!(!script.contains("AWS_"), "AWS variables in user data");
        }
        // Volumes carry the tags too.
        let volumes = client
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name(format!("tag:{CLUSTER_TAG}"))
                    .values("tv-1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(volumes.volumes().len(), 4, "{region}");
        assert!(
            volumes
                .volumes()
                .iter()
                .all(|v| tag(v.tags(), EXPIRES_TAG).is_some())
        );
        // One security group, tagged, with no inbound rule.
        let groups = client
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name(format!("tag:{CLUSTER_TAG}"))
                    .values("tv-1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(groups.security_groups().len(), 1, "{region}");
        assert!(groups.security_groups()[0].ip_permissions().is_empty());
        let sg_id = groups.security_groups()[0].group_id().unwrap();
        assert!(instances.iter().all(|i| {
            i.security_groups()
                .iter()
                .any(|g| g.group_id() == Some(sg_id))
        }));
    }

    // The spot market options as RunInstances sent them. moto keeps only the market type
    // (it answers `instanceLifecycle` spot, asserted above) and drops SpotOptions: no spot
    // request is created, and DescribeInstances has no field for them. So they are read
    // from moto's recording of the requests it received: the exact wire form, which the
    // fake EC2 (behind the `Ec2` trait, before the SDK request is built) cannot see.
    let runs: Vec<_> = moto
        .calls()
        .into_iter()
        .filter(|c| c.action == "RunInstances")
        .collect();
    assert_eq!(runs.len(), 3, "one RunInstances per region: {runs:?}");
    let mut run_regions: Vec<&str> = runs.iter().map(|c| c.region.as_str()).collect();
    run_regions.sort();
    assert_eq!(run_regions, ["ap-northeast-1", "eu-west-1", "us-east-1"]);
    for run in &runs {
        let p = |name: &str| run.param(name);
        assert_eq!(
            p("InstanceMarketOptions.MarketType"),
            Some("spot"),
            "{run:?}"
        );
        assert_eq!(
            p("InstanceMarketOptions.SpotOptions.SpotInstanceType"),
            Some("one-time"),
            "{run:?}"
        );
        assert_eq!(
            p("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"),
            Some("terminate"),
            "{run:?}"
        );
        // The bid: moto quotes every spot price at $0.00001/h, and auto bids 30% over it,
        // rounded up to the next 1/100,000 dollar.
        assert_eq!(
            p("InstanceMarketOptions.SpotOptions.MaxPrice"),
            Some("0.00002"),
            "{run:?}"
        );
        assert_eq!(p("InstanceInitiatedShutdownBehavior"), Some("terminate"));
        assert_eq!((p("MinCount"), p("MaxCount")), (Some("4"), Some("4")));
        assert_eq!(p("TagSpecification.1.ResourceType"), Some("instance"));
        assert_eq!(p("TagSpecification.2.ResourceType"), Some("volume"));
    }

    // status sees them.
    let st = status::status(
        &ec2,
        "tv-1",
        &RegionChoice::parse(&REGIONS.join(",")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(st.live().count(), 12);
    let text = st.render(None);
    assert!(text.contains("cluster tv-1: 12 live instances"), "{text}");

    // ls finds the cluster by tag across every enabled region (moto has 34 outside gov/cn).
    let list = status::list_clusters(&ec2, &RegionChoice::All)
        .await
        .unwrap();
    assert!(list.errors.is_empty(), "{:?}", list.errors);
    assert_eq!(list.clusters.len(), 1);
    assert_eq!(list.clusters[0].name, "tv-1");
    assert_eq!(list.clusters[0].regions.values().sum::<usize>(), 12);
    assert!(list.clusters[0].expires_at.is_some());
    assert!(list.render(std::time::SystemTime::now()).contains("tv-1"));

    // down, in every region, leaves nothing running and no security group.
    let mut dc = DownConfig::new("tv-1", RegionChoice::All);
    dc.poll_interval = Duration::from_millis(200);
    let report = down::down(&ec2, &dc, &lines).await.unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(
        report
            .regions
            .iter()
            .map(|r| r.terminated.len())
            .sum::<usize>(),
        12
    );
    assert_eq!(
        report
            .regions
            .iter()
            .map(|r| r.groups_deleted.len())
            .sum::<usize>(),
        3
    );
    for region in REGIONS {
        let left: Vec<_> = tagged_instances(&moto, region, "tv-1")
            .await
            .into_iter()
            .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
            .collect();
        assert!(left.is_empty(), "{region}: {left:?}");
    }
    // Idempotent: a second down finds nothing and is still clean.
    let again = down::down(&ec2, &dc, &lines).await.unwrap();
    assert!(again.is_clean());
    assert_eq!(
        again
            .regions
            .iter()
            .map(|r| r.terminated.len())
            .sum::<usize>(),
        0
    );
    let list = status::list_clusters(&ec2, &RegionChoice::All)
        .await
        .unwrap();
    assert!(list.clusters.is_empty());
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let ec2 = AwsEc2::from_sdk_config(moto.sdk_config().await);
    let before = moto.census(&REGIONS).await;
    // --dry-run is `plan` and the cost table, without `execute`.
    let plan = up::plan(
        &ec2,
        config("dry", &REGIONS.join(","), 12),
        &Lines::default(),
    )
    .await
    .unwrap();
    assert_eq!(plan.regions.len(), 3);
    assert!(plan.cost_table().contains("12 of 12"));
    assert_eq!(moto.census(&REGIONS).await, before);
    // Not a single mutating call reached moto, in any region.
    let calls = moto.calls();
    assert!(calls.iter().any(|c| c.action == "DescribeSpotPriceHistory"));
    let writes: Vec<_> = calls.iter().filter(|c| !c.is_read_only()).collect();
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test]
async fn a_failing_region_is_reported_while_the_others_launch() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let ec2 = AwsEc2::from_sdk_config(moto.sdk_config().await);
    let lines = Lines::default();
    // A well-formed name that no endpoint serves: moto answers 500 for it.
    let plan = up::plan(
        &ec2,
        config("part", "us-east-1,xx-nowhere-9,eu-west-1", 6),
        &lines,
    )
    .await
    .unwrap();
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    assert_eq!(plan.problems[0].region, "xx-nowhere-9");
    let reason = &plan.problems[0].reason;
    assert!(
        reason.contains("HTTP 500") && !reason.contains("<html"),
        "{reason}"
    );
    assert!(plan.cost_table().contains("xx-nowhere-9"));
    let report = up::execute(&ec2, &plan, &lines).await;
    assert!(!report.is_complete());
    assert_eq!(report.launched(), 4);
    let text = report.render();
    assert!(
        text.contains("xx-nowhere-9") && text.contains("FAILED"),
        "{text}"
    );
    assert!(text.contains("launched 4 of 6 agents"), "{text}");
    assert!(
        lines
            .for_region("xx-nowhere-9")
            .iter()
            .any(|l| l.starts_with("cannot launch"))
    );
    for r in ["us-east-1", "eu-west-1"] {
        assert_eq!(tagged_instances(&moto, r, "part").await.len(), 2, "{r}");
    }
}
