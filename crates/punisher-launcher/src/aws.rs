//! [`Ec2`] over aws-sdk-ec2: the only module that sees SDK types. Credentials, profile and
//! default region come from aws-config's standard chain (environment, profile files, SSO,
//! instance role); an endpoint URL points it at an EC2-compatible emulator (moto, LocalStack).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{
    Filter, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceType, MarketType,
    Placement, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification,
};

use crate::api::{ApiError, Ec2, Image, Instance, InstanceFilter, LaunchSpec, SecurityGroup};
use crate::api::{SecurityGroup as Sg, SpotQuote};
use crate::tags::CLUSTER_TAG;

/// Where `describe_regions` asks when the chain names no region.
const HOME_REGION: &str = "us-east-1";

/// The real EC2, one SDK client per region (created on first use, then reused).
pub struct AwsEc2 {
    base: SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
}

impl AwsEc2 {
    /// Loads the standard AWS configuration chain; `endpoint_url` overrides the EC2 endpoint.
    pub async fn from_env(endpoint_url: Option<&str>) -> AwsEc2 {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        AwsEc2::from_sdk_config(loader.load().await)
    }

    /// Uses a configuration built by the caller (tests pass static dummy credentials).
    pub fn from_sdk_config(base: SdkConfig) -> AwsEc2 {
        AwsEc2 {
            base,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> Client {
        // The lock is held for a map lookup and a client construction, never across an await.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(region.to_owned()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }

    fn home_region(&self) -> String {
        self.base
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_else(|| HOME_REGION.to_owned())
    }
}

fn api_err<E>(operation: &'static str, e: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(code) = e.code() {
        let message = e.message().unwrap_or("").to_owned();
        return ApiError::coded(operation, code, message);
    }
    // Without an EC2 error code the full context holds the raw response (whole HTML pages
    // from a broken endpoint): say what kind of failure it was, briefly.
    let message = match &e {
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(_) => {
            let detail = DisplayErrorContext(&e).to_string();
            format!("cannot reach the endpoint: {}", shorten(&detail))
        }
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = e
                .raw_response()
                .map(|r| r.status().as_u16().to_string())
                .unwrap_or_else(|| "?".into());
            format!("HTTP {status} without an EC2 error (is this region or endpoint valid?)")
        }
        _ => shorten(&DisplayErrorContext(&e).to_string()),
    };
    ApiError::other(operation, message)
}

/// At most 200 characters of an error text.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn tags_of(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn system_time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn instance_of(i: &aws_sdk_ec2::types::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().to_owned(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        launch_time: system_time(i.launch_time()),
        lifecycle: i.instance_lifecycle().map(|l| l.as_str().to_owned()),
        private_ip: i.private_ip_address().map(str::to_owned),
        tags: tags_of(i.tags()),
    }
}

fn tag_spec(resource: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(resource);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

impl Ec2 for AwsEc2 {
    async fn describe_regions(&self) -> Result<Vec<String>, ApiError> {
        let out = self
            .client(&self.home_region())
            .describe_regions()
            .all_regions(false)
            .send()
            .await
            .map_err(|e| api_err("DescribeRegions", e))?;
        let mut regions: Vec<String> = out
            .regions()
            .iter()
            .filter(|r| r.opt_in_status().is_none_or(|s| s != "not-opted-in"))
            .filter_map(|r| r.region_name().map(str::to_owned))
            .collect();
        regions.sort();
        Ok(regions)
    }

    async fn describe_images(
        &self,
        region: &str,
        name_pattern: &str,
        arch: &str,
    ) -> Result<Vec<Image>, ApiError> {
        let out = self
            .client(region)
            .describe_images()
            .owners("amazon")
            .filters(Filter::builder().name("name").values(name_pattern).build())
            .filters(Filter::builder().name("architecture").values(arch).build())
            .filters(Filter::builder().name("state").values("available").build())
            .send()
            .await
            .map_err(|e| api_err("DescribeImages", e))?;
        Ok(out
            .images()
            .iter()
            .map(|i| Image {
                id: i.image_id().unwrap_or_default().to_owned(),
                name: i.name().unwrap_or_default().to_owned(),
                creation_date: i.creation_date().unwrap_or_default().to_owned(),
            })
            .filter(|i| !i.id.is_empty())
            .collect())
    }

    async fn spot_prices(
        &self,
        region: &str,
        instance_types: &[String],
        since: SystemTime,
    ) -> Result<Vec<SpotQuote>, ApiError> {
        let mut req = self
            .client(region)
            .describe_spot_price_history()
            .product_descriptions("Linux/UNIX")
            .start_time(DateTime::from(since));
        for t in instance_types {
            req = req.instance_types(InstanceType::from(t.as_str()));
        }
        // Paginated: a busy region has many price changes in an hour. Bounded so that a
        // misbehaving endpoint cannot keep us paging forever.
        let mut quotes = Vec::new();
        let mut next: Option<String> = None;
        for _page in 0..20 {
            let out = req
                .clone()
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| api_err("DescribeSpotPriceHistory", e))?;
            for p in out.spot_price_history() {
                let price = p.spot_price().and_then(|s| s.parse::<f64>().ok());
                let (Some(t), Some(z), Some(price)) =
                    (p.instance_type(), p.availability_zone(), price)
                else {
                    continue;
                };
                quotes.push(SpotQuote {
                    instance_type: t.as_str().to_owned(),
                    zone: z.to_owned(),
                    price,
                    at: system_time(p.timestamp()),
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(quotes)
    }

    async fn security_groups(&self, region: &str, cluster: &str) -> Result<Vec<Sg>, ApiError> {
        let out = self
            .client(region)
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name(format!("tag:{CLUSTER_TAG}"))
                    .values(cluster)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_err("DescribeSecurityGroups", e))?;
        Ok(out
            .security_groups()
            .iter()
            .map(|g| SecurityGroup {
                id: g.group_id().unwrap_or_default().to_owned(),
                name: g.group_name().unwrap_or_default().to_owned(),
                tags: tags_of(g.tags()),
            })
            .collect())
    }

    async fn create_security_group(
        &self,
        region: &str,
        name: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<String, ApiError> {
        let out = self
            .client(region)
            .create_security_group()
            .group_name(name)
            .description(description)
            .tag_specifications(tag_spec(ResourceType::SecurityGroup, tags))
            .send()
            .await
            .map_err(|e| api_err("CreateSecurityGroup", e))?;
        out.group_id()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::other("CreateSecurityGroup", "no group id in the answer"))
    }

    async fn delete_security_group(&self, region: &str, id: &str) -> Result<(), ApiError> {
        self.client(region)
            .delete_security_group()
            .group_id(id)
            .send()
            .await
            .map_err(|e| api_err("DeleteSecurityGroup", e))?;
        Ok(())
    }

    async fn run_instances(
        &self,
        region: &str,
        spec: &LaunchSpec,
    ) -> Result<Vec<Instance>, ApiError> {
        let mut spot = SpotMarketOptions::builder()
            .spot_instance_type(SpotInstanceType::OneTime)
            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate);
        if let Some(p) = &spec.max_price {
            spot = spot.max_price(p);
        }
        let count = i32::try_from(spec.count).unwrap_or(i32::MAX);
        let min_count = i32::try_from(spec.min_count.clamp(1, spec.count.max(1))).unwrap_or(1);
        let mut req = self
            .client(region)
            .run_instances()
            .image_id(&spec.image_id)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(min_count)
            .max_count(count)
            .placement(Placement::builder().availability_zone(&spec.zone).build())
            .instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(spot.build())
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .user_data(&spec.user_data_base64)
            .tag_specifications(tag_spec(ResourceType::Instance, &spec.tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &spec.tags));
        if let Some(sg) = &spec.security_group_id {
            req = req.security_group_ids(sg);
        }
        let out = req.send().await.map_err(|e| api_err("RunInstances", e))?;
        Ok(out.instances().iter().map(instance_of).collect())
    }

    async fn describe_instances(
        &self,
        region: &str,
        filter: &InstanceFilter,
    ) -> Result<Vec<Instance>, ApiError> {
        let f = match filter {
            InstanceFilter::Cluster(name) => Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values(name)
                .build(),
            InstanceFilter::AnyCluster => Filter::builder()
                .name("tag-key")
                .values(CLUSTER_TAG)
                .build(),
        };
        let mut instances = Vec::new();
        let mut next: Option<String> = None;
        // Bounded paging: 100 pages of up to 1,000 instances is far beyond any cluster.
        for _page in 0..100 {
            let out = self
                .client(region)
                .describe_instances()
                .filters(f.clone())
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| api_err("DescribeInstances", e))?;
            for r in out.reservations() {
                instances.extend(r.instances().iter().map(instance_of));
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(instances)
    }

    async fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), ApiError> {
        // TerminateInstances takes at most 1,000 ids per call.
        for chunk in ids.chunks(1000) {
            self.client(region)
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| api_err("TerminateInstances", e))?;
        }
        Ok(())
    }
}
