//! The launch and teardown logic against the fake EC2: the failure paths moto cannot
//! produce (no capacity, price over the cap, auth errors, a security group still in use,
//! slow termination) and the proof that planning makes no mutating call.

use std::collections::HashMap;
use std::time::Duration;

use punisher_launcher::api::ApiError;
use punisher_launcher::down::{self, DownConfig};
use punisher_launcher::pricing::MaxPrice;
use punisher_launcher::progress::Quiet;
use punisher_launcher::regions::RegionChoice;
use punisher_launcher::up::{self, UpConfig};

use crate::util::Lines;
use crate::util::fake::{FakeEc2, MUTATING, RunOutcome};

fn config(regions: RegionChoice, agents: u32) -> UpConfig {
    UpConfig {
        name: "fk".into(),
        agents: Some(agents),
        per_region: None,
        controller: "10.1.2.3:7600".into(),
        token: "tok".into(),
        controller_fingerprint: "sha256:00".into(),
        regions,
        instance_types: vec!["c7g.large".into(), "c6i.large".into()],
        max_price: MaxPrice::Auto,
        ttl: Duration::from_secs(3600),
        ami_overrides: HashMap::new(),
        agent_url: Some("http://127.0.0.1:9/agent".into()),
        agent_sha256: HashMap::new(),
    }
}

#[tokio::test]
async fn planning_is_read_only_and_all_regions_skip_other_partitions() {
    let ec2 = FakeEc2::new(&["us-east-1", "eu-west-1", "us-gov-west-1", "cn-north-1"]);
    let plan = up::plan(&ec2, config(RegionChoice::All, 4), &Quiet)
        .await
        .unwrap();
    let regions: Vec<_> = plan.regions.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(regions, ["us-east-1", "eu-west-1"]);
    assert!(
        ec2.mutating_calls().is_empty(),
        "{:?}",
        ec2.mutating_calls()
    );
    // The newest standard image, not the minimal one; cheapest type and zone first.
    let r = &plan.regions[0];
    assert_eq!(
        r.images
            .get(&punisher_launcher::ami::Arch::Arm64)
            .map(String::as_str),
        Some("ami-newarm64")
    );
    assert_eq!(
        r.images
            .get(&punisher_launcher::ami::Arch::X86_64)
            .map(String::as_str),
        Some("ami-newx8664")
    );
    assert_eq!(r.candidates[0].instance_type, "c7g.large");
    assert_eq!(r.candidates[0].zone, "us-east-1a");
    assert!((r.candidates[0].bid - 0.026).abs() < 1e-9);
    assert!((plan.hourly_cost() - 0.08).abs() < 1e-9);
    let _ = MUTATING;
}

#[tokio::test]
async fn falls_back_to_next_zone_and_type_on_capacity_and_price() {
    let ec2 = FakeEc2::new(&["us-east-1"]);
    ec2.with(|s| {
        s.run_outcomes.insert(
            "us-east-1".into(),
            [
                RunOutcome::Fail(ApiError::coded(
                    "RunInstances",
                    "InsufficientInstanceCapacity",
                    "no",
                )),
                RunOutcome::Partial(1),
                RunOutcome::Fail(ApiError::coded("RunInstances", "SpotMaxPriceTooLow", "low")),
                RunOutcome::Fail(ApiError::coded(
                    "RunInstances",
                    "InsufficientInstanceCapacity",
                    "no",
                )),
                RunOutcome::Fail(ApiError::coded(
                    "RunInstances",
                    "InsufficientInstanceCapacity",
                    "no",
                )),
            ]
            .into(),
        );
    });
    let lines = Lines::default();
    let plan = up::plan(
        &ec2,
        config(RegionChoice::parse("us-east-1").unwrap(), 3),
        &lines,
    )
    .await
    .unwrap();
    let report = up::execute(&ec2, &plan, &lines).await;
    // c7g a: no capacity for 3, then 1 with min 1; c7g b: price too low; c6i a: no
    // capacity for 2, nor for 1; nothing left to try -> 1 of 3.
    assert_eq!(report.launched(), 1);
    assert!(!report.is_complete());
    let r = &report.regions[0];
    assert_eq!(r.attempts.len(), 4, "{:?}", r.attempts);
    assert!(
        r.attempts[0].starts_with("c7g.large in us-east-1a")
            && r.attempts[0].contains("InsufficientInstanceCapacity")
    );
    assert!(
        r.attempts[1].starts_with("c7g.large in us-east-1b")
            && r.attempts[1].contains("SpotMaxPriceTooLow")
    );
    let l = lines.for_region("us-east-1");
    assert!(
        l.iter().any(|m| m.contains("taking what the zone has")),
        "{l:?}"
    );
    assert!(r.error.as_deref().unwrap().contains("launched 1 of 3"));
    let l = lines.for_region("us-east-1");
    assert!(
        l.iter().any(|m| m.contains("trying the next type or zone")),
        "{l:?}"
    );

    // With capacity back, a second `up` of the same name reuses the security group.
    let report = up::execute(&ec2, &plan, &Quiet).await;
    assert!(report.is_complete());
    let creates = ec2
        .mutating_calls()
        .iter()
        .filter(|c| c.1 == "CreateSecurityGroup")
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test]
async fn an_auth_error_stops_one_region_and_not_the_others() {
    let ec2 = FakeEc2::new(&[]);
    ec2.with(|s| {
        s.run_outcomes.insert(
            "eu-west-1".into(),
            [RunOutcome::Fail(ApiError::coded(
                "RunInstances",
                "UnauthorizedOperation",
                "denied",
            ))]
            .into(),
        );
    });
    let lines = Lines::default();
    let plan = up::plan(
        &ec2,
        config(RegionChoice::parse("us-east-1,eu-west-1").unwrap(), 4),
        &lines,
    )
    .await
    .unwrap();
    let report = up::execute(&ec2, &plan, &lines).await;
    assert_eq!(report.launched(), 2);
    let eu = report
        .regions
        .iter()
        .find(|r| r.region == "eu-west-1")
        .unwrap();
    let err = eu.error.as_deref().unwrap();
    assert!(
        err.contains("UnauthorizedOperation") && err.contains("deploy/iam"),
        "{err}"
    );
    // Gave up at once: one RunInstances in eu-west-1.
    let runs = ec2.with(|s| {
        s.calls
            .iter()
            .filter(|c| c.0 == "eu-west-1" && c.1 == "RunInstances")
            .count()
    });
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn a_broken_region_fails_at_planning() {
    let ec2 = FakeEc2::new(&[]);
    ec2.with(|s| {
        s.broken.insert(
            "ap-south-1".into(),
            ApiError::other("x", "connection refused"),
        );
    });
    let plan = up::plan(
        &ec2,
        config(RegionChoice::parse("us-east-1,ap-south-1").unwrap(), 4),
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!(plan.problems.len(), 1);
    assert!(plan.problems[0].reason.contains("connection refused"));
    let report = up::execute(&ec2, &plan, &Quiet).await;
    assert_eq!((report.launched(), report.wanted()), (2, 4));
    assert!(ec2.with(|s| {
        s.calls
            .iter()
            .all(|c| c.0 != "ap-south-1" || c.1 == "DescribeImages")
    }));
}

#[tokio::test(start_paused = true)]
async fn down_waits_for_termination_and_for_the_group_to_be_free() {
    let ec2 = FakeEc2::new(&["us-east-1", "eu-west-1"]);
    let plan = up::plan(&ec2, config(RegionChoice::All, 4), &Quiet)
        .await
        .unwrap();
    assert!(up::execute(&ec2, &plan, &Quiet).await.is_complete());
    ec2.with(|s| {
        s.shutting_down_polls = 3;
        s.group_in_use = 2;
    });
    let lines = Lines::default();
    let report = down::down(&ec2, &DownConfig::new("fk", RegionChoice::All), &lines)
        .await
        .unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(
        report
            .regions
            .iter()
            .map(|r| r.groups_deleted.len())
            .sum::<usize>(),
        2
    );
    let waited = lines
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.contains("still in use"));
    assert!(waited);
    assert!(
        report
            .render()
            .contains("verified: nothing of the cluster is left in 2 regions")
    );
    // Idempotent.
    let again = down::down(&ec2, &DownConfig::new("fk", RegionChoice::All), &Quiet)
        .await
        .unwrap();
    assert!(again.is_clean());
    assert!(again.regions.iter().all(|r| r.terminated.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn down_reports_what_it_could_not_remove() {
    let ec2 = FakeEc2::new(&["us-east-1"]);
    let plan = up::plan(&ec2, config(RegionChoice::All, 2), &Quiet)
        .await
        .unwrap();
    let launched = up::execute(&ec2, &plan, &Quiet).await;
    let stuck = launched.regions[0].launched[0].id.clone();
    ec2.with(|s| s.unkillable.push(stuck.clone()));
    let mut dc = DownConfig::new("fk", RegionChoice::All);
    dc.wait = Duration::from_secs(30);
    let report = down::down(&ec2, &dc, &Quiet).await.unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.regions[0].left_instances, [stuck]);
    assert!(report.render().contains("NOT clean"));
    assert!(report.into_result().is_err());
}

#[tokio::test]
async fn bad_input_is_refused_before_any_call() {
    let ec2 = FakeEc2::new(&["us-east-1"]);
    let mut c = config(RegionChoice::All, 4);
    c.name = "Bad Name".into();
    let e = up::plan(&ec2, c, &Quiet).await.unwrap_err().to_string();
    assert!(e.contains("invalid cluster name"), "{e}");
    let mut c = config(RegionChoice::All, 4);
    c.controller = "nohost".into();
    assert!(up::plan(&ec2, c, &Quiet).await.is_err());
    let mut c = config(RegionChoice::All, 4);
    c.token = "a\nb".into();
    let e = up::plan(&ec2, c, &Quiet).await.unwrap_err().to_string();
    assert!(e.contains("control character"), "{e}");
    assert!(ec2.with(|s| s.calls.is_empty()), "a call was made");
}
