//! `punisher cluster up | status | ls | down` end to end: the real binary against moto's EC2
//! server on 127.0.0.1 (`--endpoint-url`), with dummy credentials and none of the caller's
//! AWS configuration in its environment, so that nothing can reach real AWS. Skipped (failed
//! under CI) when moto_server is not installed.
//!
//! The launcher's own tests check the instances in detail (tags, user data, spot options);
//! these check what the command line adds: the plan table, `--dry-run`, `--yes`, the
//! refusal to launch unconfirmed, the warnings about the controller, and the exit codes.

use crate::moto::Moto;
use crate::skip::skip;
use crate::util::{self, Output};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-northeast-1"];
const FINGERPRINT: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Runs `punisher ARGS --endpoint-url MOTO` with dummy credentials: every `AWS_*` variable of
/// the caller is removed, and no profile or instance metadata can be read.
async fn punisher(moto: &Moto, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--endpoint-url", &moto.url]);
    let mut cmd = util::command(&args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "AKIAPUNISHERCLITEST")
        .env("AWS_SECRET_ACCESS_KEY", "punisher-cli-dummy-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/punisher-test/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/punisher-test/aws-credentials",
        );
    tokio::task::spawn_blocking(move || util::run(cmd))
        .await
        .unwrap()
}

/// A loopback address where nothing listens (bound, then released).
fn closed_loopback() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `cluster up` arguments for NAME with AGENTS over REGIONS, the controller at CONTROLLER.
fn up_args<'a>(
    name: &'a str,
    agents: &'a str,
    regions: &'a str,
    controller: &'a str,
) -> Vec<&'a str> {
    vec![
        "cluster",
        "up",
        "--name",
        name,
        "--agents",
        agents,
        "--regions",
        regions,
        "--controller",
        controller,
        "--token",
        "cli-token",
        "--controller-fingerprint",
        FINGERPRINT,
    ]
}

/// The line of `text` that starts with `region` followed by whitespace.
fn region_line<'a>(text: &'a str, region: &str) -> &'a str {
    text.lines()
        .find(|l| l.strip_prefix(region).is_some_and(|r| r.starts_with(' ')))
        .unwrap_or_else(|| panic!("no line for {region}:\n{text}"))
}

fn both(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// `--dry-run` prints the plan and makes no mutating call; without `--yes` and without a
/// terminal nothing is launched either; a controller that cannot be reached only warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let regions = REGIONS.join(",");
    let before = moto.census(&REGIONS).await;
    let controller = closed_loopback();
    let mut args = up_args("dry", "12", &regions, &controller);
    args.push("--dry-run");
    let out = punisher(&moto, &args).await;
    assert_eq!(out.code, 0, "{}", both(&out));

    // The plan table: a row per region with its share of the 12, then the totals and the
    // estimated cost per hour and for the whole TTL.
    let table = &out.stdout;
    for header in [
        "REGION", "AGENTS", "TYPE", "ZONE", "SPOT $/H", "BID $/H", "EST $/H",
    ] {
        assert!(table.contains(header), "{header}:\n{table}");
    }
    for region in REGIONS {
        let row: Vec<&str> = region_line(table, region).split_whitespace().collect();
        assert_eq!(row[1], "4", "{region}:\n{table}");
        // The cheapest default type (moto quotes every type alike) in one of its zones.
        assert_eq!(row[2], "c7g.large", "{table}");
        assert!(row[3].starts_with(region), "{table}");
        assert!(row[4].parse::<f64>().is_ok_and(|p| p > 0.0), "{table}");
    }
    assert!(
        table.contains("total: 12 of 12 agents in 3 regions; estimated $0.0001/h"),
        "{table}"
    );
    assert!(table.contains("for the whole TTL of 2h"), "{table}");
    assert!(table.contains("at most $"), "{table}");
    assert!(
        table.contains("capped by the us-east-1 on-demand price"),
        "{table}"
    );
    assert!(
        table.contains("instances terminate by themselves at"),
        "{table}"
    );

    // The controller is loopback and closed: two warnings, no failure.
    let err = &out.stderr;
    assert!(
        err.contains(&format!(
            "warning: --controller {controller} is a loopback address"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: cannot reach the controller at {controller}"
        )),
        "{err}"
    );
    assert!(err.contains("dry run: nothing was launched"), "{err}");
    // A progress line per region.
    for region in REGIONS {
        assert!(
            region_line(err, region).contains("looking up images and spot prices"),
            "{err}"
        );
    }

    // Not loopback but unreachable (TEST-NET-1, never routed): a warning only.
    let mut args = up_args("dry", "12", &regions, "192.0.2.1:7600");
    args.push("--dry-run");
    let out = punisher(&moto, &args).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    assert!(
        out.stderr
            .contains("warning: cannot reach the controller at 192.0.2.1:7600"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("loopback"), "{}", out.stderr);

    // Without --yes there is nobody to ask (stdin is not a terminal): refused, exit 2.
    let out = punisher(&moto, &up_args("dry", "12", &regions, &controller)).await;
    assert_eq!(out.code, 2, "{}", both(&out));
    assert!(out.stderr.contains("pass --yes"), "{}", out.stderr);

    assert_eq!(moto.census(&REGIONS).await, before, "moto's state changed");
    let calls = moto.calls();
    assert!(calls.iter().any(|c| c.action == "DescribeSpotPriceHistory"));
    let writes: Vec<_> = calls.iter().filter(|c| !c.is_read_only()).collect();
    assert!(writes.is_empty(), "mutating calls: {writes:?}");
}

/// `up --yes` launches all 12 and exits 0; `status` and `ls` see them; `down --yes` leaves
/// none running and a second `down` still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_yes_status_ls_down_leave_none_running() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let regions = REGIONS.join(",");
    let controller = closed_loopback();
    let mut args = up_args("cli-tv", "12", &regions, &controller);
    args.push("--yes");
    let out = punisher(&moto, &args).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    // The per-region result after the plan table.
    let result = out
        .stdout
        .split_once("instances terminate by themselves at")
        .map(|(_, r)| r)
        .unwrap();
    for region in REGIONS {
        let line = region_line(result, region);
        assert!(line.contains("4/4") && line.ends_with(" ok"), "{line}");
        assert!(
            region_line(&out.stderr, region).contains("looking up images"),
            "{}",
            out.stderr
        );
    }
    assert!(result.contains("launched 12 of 12 agents"), "{result}");
    let runs: Vec<_> = moto
        .calls()
        .into_iter()
        .filter(|c| c.action == "RunInstances")
        .collect();
    let mut run_regions: Vec<&str> = runs.iter().map(|c| c.region.as_str()).collect();
    run_regions.sort();
    assert_eq!(run_regions, ["ap-northeast-1", "eu-west-1", "us-east-1"]);
    for run in &runs {
        assert_eq!(run.param("MaxCount"), Some("4"), "{run:?}");
        assert_eq!(
            run.param("InstanceMarketOptions.MarketType"),
            Some("spot"),
            "{run:?}"
        );
    }

    let status = [
        "cluster",
        "status",
        "--name",
        "cli-tv",
        "--regions",
        &regions,
    ];
    let out = punisher(&moto, &status).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    assert!(
        out.stdout.contains("cluster cli-tv: 12 live instances"),
        "{}",
        out.stdout
    );
    for region in REGIONS {
        let line = region_line(&out.stdout, region);
        assert!(
            line.contains("4 running") || line.contains("4 pending"),
            "{line}"
        );
    }

    let out = punisher(&moto, &["cluster", "ls", "--regions", &regions]).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("cli-tv "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert_eq!(row.split_whitespace().nth(1), Some("12"), "{row}");

    // down in every region (the default): nothing left, verified.
    let down = ["cluster", "down", "--name", "cli-tv", "--yes"];
    let out = punisher(&moto, &down).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    assert!(
        out.stdout
            .contains("verified: nothing of the cluster is left in"),
        "{}",
        out.stdout
    );
    let out = punisher(&moto, &status).await;
    assert_eq!(out.code, 0, "{}", both(&out));
    assert!(
        out.stdout.contains("cluster cli-tv: 0 live instances"),
        "{}",
        out.stdout
    );
    // moto's own answers: every instance terminated, the security groups gone.
    for answer in moto.census(&REGIONS).await {
        if answer.contains("DescribeInstances:") {
            assert_eq!(
                answer.matches("<name>terminated</name>").count(),
                4,
                "{answer}"
            );
            for state in ["pending", "running", "shutting-down", "stopping", "stopped"] {
                assert!(
                    !answer.contains(&format!("<name>{state}</name>")),
                    "{answer}"
                );
            }
        }
        if answer.contains("DescribeSecurityGroups:") {
            assert!(!answer.contains("punisher-cli-tv"), "{answer}");
        }
    }
    // Idempotent.
    let out = punisher(&moto, &down).await;
    assert_eq!(out.code, 0, "{}", both(&out));
}

/// A region that fails (a name no endpoint serves: moto answers HTTP 500) is reported per
/// region while the others launch, and `up` exits 1 because fewer than N were launched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_agents_than_asked_exits_1_with_a_per_region_result() {
    let Some(moto) = Moto::start().await.map_err(skip).ok() else {
        return;
    };
    let controller = closed_loopback();
    let mut args = up_args("part", "6", "us-east-1,xx-nowhere-9,eu-west-1", &controller);
    args.push("--yes");
    let out = punisher(&moto, &args).await;
    assert_eq!(out.code, 1, "{}", both(&out));
    let (table, result) = out
        .stdout
        .split_once("instances terminate by themselves at")
        .unwrap();
    assert!(
        region_line(table, "xx-nowhere-9").contains("cannot launch: "),
        "{table}"
    );
    for region in ["us-east-1", "eu-west-1"] {
        let line = region_line(result, region);
        assert!(line.contains("2/2") && line.ends_with(" ok"), "{line}");
    }
    let failed = region_line(result, "xx-nowhere-9");
    assert!(
        failed.contains("0/2") && failed.contains("FAILED"),
        "{failed}"
    );
    assert!(result.contains("launched 4 of 6 agents"), "{result}");
    assert!(
        out.stderr.contains("fewer agents than asked: 4 of 6")
            && out.stderr.contains("punisher cluster down --name part"),
        "{}",
        out.stderr
    );
    let status = [
        "cluster",
        "status",
        "--name",
        "part",
        "--regions",
        "us-east-1,eu-west-1",
    ];
    let out = punisher(&moto, &status).await;
    assert!(
        out.stdout.contains("cluster part: 4 live instances"),
        "{}",
        both(&out)
    );

    // No region at all can launch: nothing is tried, exit 1.
    let mut args = up_args("none", "2", "xx-nowhere-9", &controller);
    args.push("--yes");
    let out = punisher(&moto, &args).await;
    assert_eq!(out.code, 1, "{}", both(&out));
    assert!(
        out.stderr.contains("no region can launch agents"),
        "{}",
        out.stderr
    );
    let runs = moto
        .calls()
        .iter()
        .filter(|c| c.action == "RunInstances")
        .count();
    assert_eq!(runs, 2, "one RunInstances in each region that could launch");
}
