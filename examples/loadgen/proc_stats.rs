//! What the measured processes and the machine used, from Linux /proc: CPU
//! time of each `--pid` and of the load generator, busy time of each CPU,
//! resident memory. Elsewhere the readings are `None` or empty.

use std::time::Duration;

/// CPU time of the measured processes, of this process, and of each CPU,
/// at one moment.
#[derive(Debug, Clone)]
pub(crate) struct ProcessReading {
    /// User + system time of each `--pid` (`None`: process gone).
    pub(crate) pids: Vec<Option<Duration>>,
    /// User + system time of the load generator.
    pub(crate) own: Option<Duration>,
    /// Busy and total clock ticks of each CPU.
    pub(crate) machine: Vec<(u64, u64)>,
}

impl ProcessReading {
    pub(crate) fn take(pids: &[(String, u32)]) -> ProcessReading {
        ProcessReading {
            pids: pids.iter().map(|(_, p)| cpu_time(&p.to_string())).collect(),
            own: cpu_time("self"),
            machine: cpu_ticks(),
        }
    }
}

/// CPU time (user + system) a process has used, from /proc (`self` for this
/// process).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Busy and total time of each CPU (clock ticks), from /proc/stat.
fn cpu_ticks() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let total: u64 = f.iter().take(8).sum();
            // idle and iowait
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        })
        .collect()
}

/// Resident memory of each `--pid` in KiB (VmRSS; `None`: process gone).
pub(crate) fn rss_kib_of(pids: &[(String, u32)]) -> Vec<Option<u64>> {
    pids.iter().map(|(_, p)| rss_kib(*p)).collect()
}

/// Resident memory of a process in KiB (VmRSS), from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        let me = ("me".to_string(), std::process::id());
        let r = ProcessReading::take(std::slice::from_ref(&me));
        assert!(r.pids[0].is_some() && r.own.is_some());
        assert!(!r.machine.is_empty());
        assert!(r.machine.iter().all(|(busy, total)| busy <= total));
        assert!(rss_kib_of(&[me])[0].is_some_and(|kib| kib > 0));
        // A pid that cannot exist (above the kernel's pid_max limit).
        let gone = ("gone".to_string(), u32::MAX);
        assert_eq!(
            ProcessReading::take(std::slice::from_ref(&gone)).pids,
            [None]
        );
        assert_eq!(rss_kib_of(&[gone]), [None]);
    }
}
