//! What this machine can hold: cores, the open-file limit (one connection is one file),
//! memory; and the labels that say where it runs.

use punisher_proto::v1;

/// This process's capacity, as reported in Hello.
pub(crate) fn capacity(workers: usize) -> v1::Capacity {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    v1::Capacity {
        cores,
        open_files,
        memory_bytes: memory_bytes().unwrap_or(0),
        workers: workers as u32,
    }
}

fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine's host name, or "agent" when it cannot be read.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_owned())
}

/// Cores to run workers on by default.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_plausible() {
        let c = capacity(2);
        assert!(c.cores >= 1);
        assert!(c.open_files >= 64, "{}", c.open_files);
        assert_eq!(c.workers, 2);
        assert!(!hostname().is_empty());
    }
}
