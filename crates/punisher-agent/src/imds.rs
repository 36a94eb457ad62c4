//! Spot interruption: poll the instance metadata service (IMDSv2, with a session token) for
//! `spot/instance-action`, and say when EC2 announced a reclaim (two minutes ahead). Also
//! reads the instance's identity for the agent's labels.
//!
//! Self-contained (tokio and a tiny private HTTP/1.1 client) so that the agent links no AWS
//! SDK; the controller learns about the interruption from the agent's departing final
//! report and its Goodbye. Moved here from punisher-launcher.

use std::time::Duration;

use punisher_proto::plain_http as http;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where IMDS answers on every EC2 instance.
pub const DEFAULT_BASE_URL: &str = "http://169.254.169.254";
/// How often the AWS documentation suggests polling for a notice.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Session tokens are asked for six hours and renewed a minute before they end.
const TOKEN_TTL_SECS: u64 = 21_600;
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(60);
/// One IMDS call never takes longer than this (IMDS answers in milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A spot interruption notice: `action` is `terminate`, `stop` or `hibernate`; `time` is
/// when EC2 will act (RFC 3339 UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotNotice {
    pub action: String,
    pub time: String,
}

impl SpotNotice {
    /// The reason an agent gives in its Goodbye.
    pub fn reason(&self) -> String {
        format!("spot interruption: {} at {}", self.action, self.time)
    }
}

/// Where the instance runs, for the agent's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub region: String,
    pub zone: String,
}

/// IMDSv2 session: a token and when to renew it.
struct Session {
    base: String,
    token: Option<(String, Instant)>,
}

impl Session {
    fn new(base_url: &str) -> Session {
        Session {
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    async fn token(&mut self) -> Option<String> {
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Some(t.clone());
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let r = http::request(
            "PUT",
            &format!("{}/latest/api/token", self.base),
            &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)],
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, "imds token request failed"))
        .ok()?;
        if r.status != 200 {
            tracing::debug!(status = r.status, "imds refused a token");
            return None;
        }
        let token = String::from_utf8(r.body).ok()?.trim().to_owned();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return None;
        }
        let until = Instant::now() + Duration::from_secs(TOKEN_TTL_SECS) - TOKEN_RENEW_BEFORE;
        self.token = Some((token.clone(), until));
        Some(token)
    }

    /// GET a metadata path: `Ok(Some(body))` on 200, `Ok(None)` on 404, `Err` otherwise
    /// (the token is dropped on 401 so that the next call asks for a new one).
    async fn get(&mut self, path: &str) -> Result<Option<String>, ()> {
        let token = self.token().await.ok_or(())?;
        let r = http::request(
            "GET",
            &format!("{}/latest/meta-data/{path}", self.base),
            &[("X-aws-ec2-metadata-token", &token)],
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, path, "imds request failed"))?;
        match r.status {
            200 => Ok(Some(String::from_utf8_lossy(&r.body).into_owned())),
            404 => Ok(None),
            401 => {
                self.token = None;
                Err(())
            }
            status => {
                tracing::debug!(status, path, "imds answered an error");
                Err(())
            }
        }
    }
}

/// Parses `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` without a JSON library:
/// the document is flat, and anything unexpected is treated as a terminate notice, because
/// a false alarm costs a drained agent while a missed one loses its users' results.
pub fn parse_notice(body: &str) -> SpotNotice {
    let field = |name: &str| -> Option<String> {
        let key = format!("\"{name}\"");
        let after = &body[body.find(&key)? + key.len()..];
        let after = after.trim_start().strip_prefix(':')?.trim_start();
        let after = after.strip_prefix('"')?;
        Some(after[..after.find('"')?].to_owned())
    };
    SpotNotice {
        action: field("action").unwrap_or_else(|| "terminate".to_owned()),
        time: field("time").unwrap_or_default(),
    }
}

/// Polls `spot/instance-action` every `interval` until a notice appears (returned) or
/// `cancel` fires (`None`). IMDS being unreachable (not on EC2, IMDS disabled) is logged
/// once and polling goes on: the watcher costs one request per interval and never fails
/// the agent.
pub async fn watch_spot_interruption(
    base_url: &str,
    interval: Duration,
    cancel: CancellationToken,
) -> Option<SpotNotice> {
    let mut session = Session::new(base_url);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            _ = ticker.tick() => {}
        }
        let polled = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            r = session.get("spot/instance-action") => r,
        };
        match polled {
            Ok(Some(body)) => return Some(parse_notice(&body)),
            Ok(None) => warned = false,
            Err(()) => {
                if !warned {
                    tracing::warn!(
                        base_url,
                        "instance metadata unreachable; spot notices \
                        cannot be seen until it answers"
                    );
                    warned = true;
                }
            }
        }
    }
}

/// Reads instance id, region and zone; `None` when IMDS does not answer (not on EC2).
pub async fn instance_identity(base_url: &str) -> Option<InstanceIdentity> {
    let mut session = Session::new(base_url);
    let instance_id = session.get("instance-id").await.ok().flatten()?;
    let zone = session
        .get("placement/availability-zone")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let region = session
        .get("placement/region")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    Some(InstanceIdentity {
        instance_id: instance_id.trim().to_owned(),
        region: region.trim().to_owned(),
        zone: zone.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices() {
        let n = parse_notice(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#);
        assert_eq!(n.action, "terminate");
        assert_eq!(n.time, "2017-09-18T08:22:00Z");
        assert_eq!(
            n.reason(),
            "spot interruption: terminate at 2017-09-18T08:22:00Z"
        );
        let n = parse_notice(r#"{"action":"stop","time":"x"}"#);
        assert_eq!(n.action, "stop");
        let n = parse_notice("garbage");
        assert_eq!((n.action.as_str(), n.time.as_str()), ("terminate", ""));
        let n = parse_notice(r#"{"action": 5"#);
        assert_eq!(n.action, "terminate");
    }
}
