//! What happens to a run when one of its agents leaves (a spot interruption: a departing
//! final report and a Goodbye) or is lost (silent, or its stream closed for good):
//! [`AgentLossPolicy`], the shares the agents left take over, barrier accounting, and the
//! `agent_loss:` message that marks the time window in the run's messages ([`AgentLoss`]).
//!
//! Reassigning keeps every user exactly once. Users are numbered test-wide and owned by
//! van der Corput segments (`punisher_core::Segment`); an agent that departs reports what
//! it did not start as `(segment, from_user)` shares (every owned number below `from_user`
//! was started, none above). Each share is split among the agents left, in proportion to
//! their cores, and sent as an `Adopt`: the parts tile the share, so each unstarted user
//! goes to exactly one agent. Users the departed agent had started are gone with it: they
//! count as interrupted. An agent lost without a final report gets its share cut at the
//! number of users its last report said had arrived: users it started after that report
//! (up to a second's worth) may then run twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use punisher_core::Segment;
use punisher_proto::v1;

use crate::registry::Agent;

/// What a run does when an agent leaves or is lost (`punisher run --on-agent-loss`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentLossPolicy {
    /// The agents left take over its users that had not started (its looping users, its
    /// arrivals from now on).
    #[default]
    Reassign,
    /// Go on without its users.
    Continue,
    /// Abort the run (exit code 1).
    Abort,
}

impl AgentLossPolicy {
    /// `reassign`, `continue` or `abort`.
    pub fn parse(text: &str) -> Option<AgentLossPolicy> {
        match text.trim().to_ascii_lowercase().as_str() {
            "reassign" => Some(AgentLossPolicy::Reassign),
            "continue" => Some(AgentLossPolicy::Continue),
            "abort" => Some(AgentLossPolicy::Abort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentLossPolicy::Reassign => "reassign",
            AgentLossPolicy::Continue => "continue",
            AgentLossPolicy::Abort => "abort",
        }
    }

    pub(crate) fn to_wire(self) -> i32 {
        (match self {
            AgentLossPolicy::Reassign => v1::AgentLossPolicy::Reassign,
            AgentLossPolicy::Continue => v1::AgentLossPolicy::Continue,
            AgentLossPolicy::Abort => v1::AgentLossPolicy::Abort,
        }) as i32
    }

    pub(crate) fn from_wire(value: i32) -> Option<AgentLossPolicy> {
        match v1::AgentLossPolicy::try_from(value).ok()? {
            v1::AgentLossPolicy::Unspecified | v1::AgentLossPolicy::Reassign => {
                Some(AgentLossPolicy::Reassign)
            }
            v1::AgentLossPolicy::Continue => Some(AgentLossPolicy::Continue),
            v1::AgentLossPolicy::Abort => Some(AgentLossPolicy::Abort),
        }
    }
}

impl std::fmt::Display for AgentLossPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent's departure as the run's messages record it: a line that starts with
/// `agent_loss:` and ends with `[from_unix_ms=.. to_unix_ms=.. policy=.. interrupted=..
/// reassigned=..]`, for people and for report renderers ([`AgentLoss::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLoss {
    pub agent: String,
    pub reason: String,
    pub policy: AgentLossPolicy,
    /// When the agent stopped starting users (its notice, or its last sign of life).
    pub from_unix_ms: u64,
    /// When the other agents were told to take over (or the loss was handled).
    pub to_unix_ms: u64,
    /// Users it had started that did not finish.
    pub interrupted_users: u64,
    /// Users (or looping users, or arrivals) given to the other agents.
    pub reassigned_users: u64,
    /// The agents that took them over.
    pub to: Vec<String>,
}

const PREFIX: &str = "agent_loss: ";

impl AgentLoss {
    /// The record of this loss in `run.json`, which the report shades on its charts.
    pub fn to_window(&self) -> punisher_results::dir::AgentLossWindow {
        let reassigned = self.policy == AgentLossPolicy::Reassign && !self.to.is_empty();
        punisher_results::dir::AgentLossWindow {
            agent: self.agent.clone(),
            reason: self.reason.clone(),
            policy: self.policy.as_str().to_owned(),
            from_unix_ms: self.from_unix_ms,
            to_unix_ms: self.to_unix_ms,
            interrupted_users: self.interrupted_users,
            reassigned_users: if reassigned { self.reassigned_users } else { 0 },
            reassigned_to: if reassigned {
                self.to.clone()
            } else {
                Vec::new()
            },
        }
    }

    pub fn to_message(&self) -> String {
        let outcome = match self.policy {
            AgentLossPolicy::Reassign if self.to.is_empty() => format!(
                "no agent was left to take over its {} users that had not started",
                self.reassigned_users
            ),
            AgentLossPolicy::Reassign => format!(
                "{} users that had not started were reassigned to {}",
                self.reassigned_users,
                self.to.join(", ")
            ),
            AgentLossPolicy::Continue => "the run goes on without its users".to_owned(),
            AgentLossPolicy::Abort => "the run is aborted".to_owned(),
        };
        format!(
            "{PREFIX}agent {} left ({}) {}-{} UTC: {} of its users were interrupted; {outcome} \
             [from_unix_ms={} to_unix_ms={} policy={} interrupted={} reassigned={}]",
            self.agent,
            self.reason,
            clock(self.from_unix_ms),
            clock(self.to_unix_ms),
            self.interrupted_users,
            self.from_unix_ms,
            self.to_unix_ms,
            self.policy,
            self.interrupted_users,
            if self.policy == AgentLossPolicy::Reassign && !self.to.is_empty() {
                self.reassigned_users
            } else {
                0
            },
        )
    }

    /// Reads a run message written by [`AgentLoss::to_message`]; `None` for any other.
    pub fn parse(message: &str) -> Option<AgentLoss> {
        let rest = message.strip_prefix(PREFIX)?;
        let agent = rest.strip_prefix("agent ")?.split(' ').next()?.to_owned();
        let reason = rest
            .split_once(" left (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .map(|(r, _)| r.to_owned())
            .unwrap_or_default();
        let (_, tail) = rest.rsplit_once(" [")?;
        let tail = tail.strip_suffix(']')?;
        let fields: HashMap<&str, &str> = tail
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        let to = rest
            .split_once(" were reassigned to ")
            .map(|(_, t)| {
                t.split(" [")
                    .next()
                    .unwrap_or("")
                    .split(", ")
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(AgentLoss {
            agent,
            reason,
            policy: AgentLossPolicy::parse(fields.get("policy")?)?,
            from_unix_ms: num("from_unix_ms")?,
            to_unix_ms: num("to_unix_ms")?,
            interrupted_users: num("interrupted")?,
            reassigned_users: num("reassigned")?,
            to,
        })
    }
}

/// `HH:MM:SS.mmm` of a unix time in milliseconds (UTC).
fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// What a departing agent left, from its final report.
#[derive(Debug, Clone)]
pub(crate) struct Departure {
    pub(crate) shares: Vec<(Segment, u64)>,
    pub(crate) interrupted_users: u64,
    /// When it stopped starting users (0: unknown).
    pub(crate) from_unix_ms: u64,
}

/// A run's record of departures and of the shares agents took over.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    /// Shares each agent runs besides its own segment, by agent id.
    pub(crate) adopted: BTreeMap<String, Vec<(Segment, u64)>>,
    /// Departed or lost agents whose unstarted users others took over: the shares given.
    pub(crate) reassigned: BTreeMap<String, Vec<(Segment, u64)>>,
    /// Agents whose departure was handled (once each).
    pub(crate) gone: BTreeSet<String>,
}

impl Losses {
    /// How many of the users `0..n` `agent` owns: its segment and what it adopted.
    pub(crate) fn share_below(&self, agent: &str, segment: Segment, n: u64) -> u64 {
        segment.count_below(n) + shares_count(self.adopted.get(agent).map_or(&[], |v| v), n)
    }

    /// What `agent` leaves when lost without a final report: its shares cut where its last
    /// report said its arrivals were.
    pub(crate) fn estimated_left_over(
        &self,
        agent: &str,
        segment: Segment,
        arrived: u64,
    ) -> Vec<(Segment, u64)> {
        let mut shares = vec![(segment, 0)];
        shares.extend(self.adopted.get(agent).into_iter().flatten().copied());
        // Session users arrive in number order across its shares: find the number below
        // which `arrived` of its users lie.
        let owns = |k: u64| shares.iter().any(|(s, from)| k >= *from && s.owns(k));
        let mut cut = 0u64;
        let mut seen = 0u64;
        // Bounded: beyond 2^32 numbers nobody runs a test.
        while seen < arrived && cut < u32::MAX as u64 {
            if owns(cut) {
                seen += 1;
            }
            cut += 1;
        }
        shares
            .into_iter()
            .map(|(s, from)| (s, from.max(cut)))
            .collect()
    }
}

/// How many users `0..n` the shares own.
pub(crate) fn shares_count(shares: &[(Segment, u64)], n: u64) -> u64 {
    shares
        .iter()
        .map(|(s, from)| (*from..n).filter(|k| s.owns(*k)).count() as u64)
        .sum()
}

/// Splits each share among agents by weight: `parts[i]` is agent `i`'s list.
pub(crate) fn split_shares(shares: &[(Segment, u64)], weights: &[f64]) -> Vec<Vec<(Segment, u64)>> {
    let mut parts = vec![Vec::new(); weights.len()];
    for (segment, from) in shares {
        if segment.fraction() <= 0.0 {
            continue;
        }
        for (i, piece) in segment.split(weights).into_iter().enumerate() {
            if piece.fraction() > 0.0 {
                parts[i].push((piece, *from));
            }
        }
    }
    parts
}

/// Users of lost or departed agents that barriers no longer wait for (their arrivals are
/// out of the sums too): each one's whole share (its segment and what it adopted), minus
/// the unstarted users it gave to the agents left, which arrive there.
pub(crate) fn lost_users(
    run_agents: &[String],
    agents: &BTreeMap<String, Agent>,
    losses: &Losses,
    target_users: u64,
) -> u64 {
    run_agents
        .iter()
        .filter_map(|id| agents.get(id).filter(|a| a.is_gone()))
        .filter_map(|agent| {
            let a = agent.assignment.as_ref()?;
            let share = losses.share_below(&agent.id, a.segment, target_users);
            let given = losses
                .reassigned
                .get(&agent.id)
                .map_or(0, |g| shares_count(g, target_users));
            Some(share.saturating_sub(given))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        for p in [
            AgentLossPolicy::Reassign,
            AgentLossPolicy::Continue,
            AgentLossPolicy::Abort,
        ] {
            assert_eq!(AgentLossPolicy::parse(p.as_str()), Some(p));
            assert_eq!(AgentLossPolicy::from_wire(p.to_wire()), Some(p));
        }
        assert_eq!(
            AgentLossPolicy::from_wire(0),
            Some(AgentLossPolicy::Reassign)
        );
        assert_eq!(AgentLossPolicy::from_wire(99), None);
        assert_eq!(AgentLossPolicy::parse("nope"), None);
    }

    #[test]
    fn messages_round_trip() {
        let loss = AgentLoss {
            agent: "agent-2".into(),
            reason: "spot interruption: terminate at 2026-11-22T12:00:00Z".into(),
            policy: AgentLossPolicy::Reassign,
            from_unix_ms: 1_763_812_800_120,
            to_unix_ms: 1_763_812_801_500,
            interrupted_users: 3,
            reassigned_users: 12,
            to: vec!["agent-1".into(), "agent-3".into()],
        };
        let m = loss.to_message();
        assert!(
            m.starts_with("agent_loss: agent agent-2 left (spot interruption"),
            "{m}"
        );
        assert!(m.contains("12:00:00.120-12:00:01.500 UTC"), "{m}");
        assert_eq!(AgentLoss::parse(&m), Some(loss));
        assert_eq!(AgentLoss::parse("agent x lost"), None);
    }

    #[test]
    fn split_shares_tile_and_keep_every_user_once() {
        let departed = Segment::FULL.split(&[1.0, 1.0, 1.0])[1];
        let shares = vec![(departed, 10)];
        let parts = split_shares(&shares, &[2.0, 1.0]);
        for k in 0..1000u64 {
            let owners = parts
                .iter()
                .filter(|p| p.iter().any(|(s, from)| k >= *from && s.owns(k)))
                .count();
            let expected = usize::from(k >= 10 && departed.owns(k));
            assert_eq!(owners, expected, "user {k}");
        }
    }

    #[test]
    fn estimated_cut_follows_arrivals() {
        let seg = Segment::FULL.split(&[1.0, 1.0])[0];
        let losses = Losses::default();
        let shares = losses.estimated_left_over("a", seg, 3);
        // The first three users `seg` owns are started; the cut is just past the third.
        let owned: Vec<u64> = (0..100).filter(|k| seg.owns(*k)).collect();
        assert_eq!(shares, vec![(seg, owned[2] + 1)]);
    }
}
