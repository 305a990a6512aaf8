//! This process's resident memory, for the measuring examples (`memory`,
//! `remote_members`). A directory module, so cargo does not take it for
//! an example of its own.

/// `VmRSS` from `/proc/self/status`, in bytes (0 where it cannot be read).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
