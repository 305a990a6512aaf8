//! Figures read from `/proc`: CPU time, RSS and peak RSS of a process, the
//! open-files limit of this one.
use std::sync::OnceLock;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`,
/// asked once; 100 on Linux if `getconf` is unavailable).
#[must_use]
pub fn clock_ticks_per_s() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime in ticks from the text of a `/proc/<pid>/stat` file.
#[must_use]
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses itself: the fields proper start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : field 3 (state) is index 0, so utime (14) is 11, stime (15) 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system) used so far by `pid` (`None` = this process).
#[must_use]
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let ticks = parse_stat_cpu_ticks(&text)?;
    Some(ticks as f64 / clock_ticks_per_s() as f64)
}

/// A `kB` field (e.g. `VmRSS`, `VmHWM`) from the text of `/proc/<pid>/status`.
#[must_use]
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `VmRSS` or `VmHWM` of `pid`, in KiB.
#[must_use]
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, key)
}

/// The soft and hard "Max open files" limits from the text of `/proc/self/limits`.
#[must_use]
pub fn parse_open_files_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| -> Option<u64> {
        match s? {
            "unlimited" => Some(u64::MAX),
            v => v.parse().ok(),
        }
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// This process's (soft, hard) open-files limit.
#[must_use]
pub fn open_files_limit() -> Option<(u64, u64)> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Whether a process with this pid exists.
#[must_use]
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 1000 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(287));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn real_self_stat_parses() {
        assert!(cpu_seconds(None).is_some());
        assert!(clock_ticks_per_s() > 0);
        let (soft, hard) = open_files_limit().expect("/proc/self/limits");
        assert!(soft <= hard);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tseed001\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib(status, "Vm"), None);
    }

    #[test]
    fn limits_table() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some((1024, 20000)));
        let unl = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unl), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_open_files_limit("nothing"), None);
    }
}
