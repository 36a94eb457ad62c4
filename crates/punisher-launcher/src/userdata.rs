//! The EC2 user data: the cloud-init script of `deploy/cloud-init/user-data.sh` with the
//! cluster's values filled in (each as one single-quoted shell word) and the systemd unit of
//! `deploy/systemd/punisher-agent.service` embedded. It never carries AWS credentials: the
//! renderer has no access to them, and the values it takes are checked for control
//! characters so that no value can break out of its shell word.

use std::time::Duration;

use base64::Engine;

use crate::error::LauncherError;

/// The template, compiled in so that the binary needs no repository at run time.
pub const TEMPLATE: &str = include_str!("../../../deploy/cloud-init/user-data.sh");
/// The systemd unit embedded in the script.
pub const SYSTEMD_UNIT: &str = include_str!("../../../deploy/systemd/punisher-agent.service");
/// EC2 refuses user data over 16 KiB (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// What the script needs to know.
#[derive(Debug, Clone)]
pub struct UserDataParams<'a> {
    pub cluster: &'a str,
    /// `HOST:PORT` the agent dials.
    pub controller: &'a str,
    pub token: &'a str,
    pub controller_fingerprint: &'a str,
    /// Base URL of the controller's binaries; the script appends `/<target-triple>`.
    pub agent_url: &'a str,
    pub target_triple: &'a str,
    /// The binary's SHA-256 (hex) when known at launch; empty: fetched next to the binary.
    pub agent_sha256: Option<&'a str>,
    pub ttl: Duration,
    pub expires_at: &'a str,
}

/// Quotes a value as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn checked<'a>(what: &str, v: &'a str) -> Result<&'a str, LauncherError> {
    if v.chars().any(char::is_control) {
        return Err(LauncherError::Invalid(format!(
            "{what} contains a control character; it cannot go into the instance's user data"
        )));
    }
    Ok(v)
}

/// Renders the script.
pub fn render(p: &UserDataParams<'_>) -> Result<String, LauncherError> {
    if let Some(sha) = p.agent_sha256
        && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(LauncherError::Invalid(format!(
            "invalid agent SHA-256 {sha:?}: expected 64 hex digits"
        )));
    }
    // The TTL shutdown is scheduled in whole minutes, rounded down so the instance never
    // outlives its expiry tag.
    let minutes = (p.ttl.as_secs() / 60).max(1).to_string();
    let values = [
        ("{{CLUSTER}}", checked("the cluster name", p.cluster)?),
        ("{{CONTROLLER}}", checked("--controller", p.controller)?),
        ("{{TOKEN}}", checked("--token", p.token)?),
        (
            "{{FINGERPRINT}}",
            checked("--controller-fingerprint", p.controller_fingerprint)?,
        ),
        (
            "{{AGENT_URL}}",
            checked("the agent URL", p.agent_url.trim_end_matches('/'))?,
        ),
        (
            "{{TARGET_TRIPLE}}",
            checked("the target triple", p.target_triple)?,
        ),
        ("{{AGENT_SHA256}}", p.agent_sha256.unwrap_or("")),
        ("{{TTL_MINUTES}}", minutes.as_str()),
        ("{{EXPIRES_AT}}", checked("the expiry", p.expires_at)?),
    ];
    let mut out = TEMPLATE.to_owned();
    for (key, value) in values {
        out = out.replace(key, &shell_quote(value));
    }
    // The unit goes inside a quoted here-document: inserted verbatim, never expanded.
    out = out.replace("{{SYSTEMD_UNIT}}", SYSTEMD_UNIT.trim_end());
    if out.len() > MAX_USER_DATA {
        return Err(LauncherError::Invalid(format!(
            "the rendered user data is {} bytes, over EC2's {MAX_USER_DATA}; shorten the token",
            out.len()
        )));
    }
    Ok(out)
}

/// Base64, as RunInstances takes user data.
pub fn encode(script: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(token: &'a str) -> UserDataParams<'a> {
        UserDataParams {
            cluster: "tv-1",
            controller: "10.0.0.5:7600",
            token,
            controller_fingerprint: "sha256:ab12",
            agent_url: "http://10.0.0.5:7601/agent/",
            target_triple: "aarch64-unknown-linux-gnu",
            agent_sha256: None,
            ttl: Duration::from_secs(7200),
            expires_at: "2030-01-01T00:00:00Z",
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let s = render(&params("t0k'en")).unwrap();
        assert!(!s.contains("{{"), "{s}");
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("CONTROLLER='10.0.0.5:7600'"));
        assert!(s.contains(r"TOKEN='t0k'\''en'"));
        assert!(s.contains("AGENT_URL='http://10.0.0.5:7601/agent'"));
        assert!(s.contains("TTL_MINUTES='120'"));
        assert!(s.contains("AGENT_SHA256=''"));
        assert!(s.contains("ExecStart=/usr/local/bin/punisher agent"));
        assert!(s.contains("sha256sum -c"));
    }

    #[test]
    fn refuses_control_characters_and_bad_checksums() {
        assert!(render(&params("a\nrm -rf /")).is_err());
        let mut p = params("t");
        p.agent_sha256 = Some("xyz");
        assert!(render(&p).is_err());
        let sha = "a".repeat(64);
        p.agent_sha256 = Some(&sha);
        assert!(
            render(&p)
                .unwrap()
                .contains(&format!("AGENT_SHA256='{sha}'"))
        );
        let big = "x".repeat(MAX_USER_DATA);
        assert!(render(&params(&big)).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
        assert_eq!(shell_quote("'"), r"''\'''");
    }
}
