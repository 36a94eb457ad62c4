//! A network namespace joined to this one by a veth pair, made by the test (iproute2) and
//! removed when dropped: an agent inside it reaches the controller only over that link,
//! which the test can take down and bring back up (a partition and its healing).
//!
//! The addresses come from 198.18.0.0/15, the range set aside for network tests (RFC
//! 2544); nothing is routed off this machine.

use std::process::Command;

pub(crate) struct Netns {
    pub(crate) name: String,
    /// The root namespace's end of the veth pair.
    host_if: String,
    pub(crate) host_ip: String,
    pub(crate) ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `Err` when namespaces cannot be made here (no iproute2, not root, no CAP_SYS_ADMIN).
    pub(crate) fn create() -> Result<Netns, String> {
        let tag = std::process::id() % 100_000;
        let name = format!("punisher-test-{tag}");
        ip(&["netns", "add", &name])?;
        let octet = tag % 250 + 1;
        let mut ns = Netns {
            name,
            host_if: format!("pt{tag}h"),
            host_ip: format!("198.18.{octet}.1"),
            ns_ip: format!("198.18.{octet}.2"),
        };
        let ns_if = format!("pt{tag}n");
        // From here on, Drop cleans up whatever was made.
        let setup = || -> Result<(), String> {
            ip(&[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ])?;
            ip(&["link", "set", &ns.host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns.name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
            inside(&["link", "set", &ns_if, "up"])?;
            inside(&["link", "set", "lo", "up"])
        };
        let result = setup();
        match result {
            Ok(()) => Ok(ns),
            Err(e) => {
                ns.cleanup();
                Err(e)
            }
        }
    }

    /// Takes the link down (`false`) or up (`true`) on the root namespace's side.
    pub(crate) fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }

    /// `ip netns exec NAME PROGRAM ARGS` (ip execs the program: same process).
    pub(crate) fn command(&self, program: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    fn cleanup(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.cleanup();
    }
}
