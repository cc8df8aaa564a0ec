//! What the server process itself costs, from Linux `/proc`: CPU time,
//! resident memory, file descriptors, threads and start time, exported under
//! the names every Prometheus client library uses (`process_*`), so that
//! the usual dashboards and alerts ("CPU saturated", "file descriptors
//! running out", "restarted") work without a node exporter.

/// One reading of the process's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors (every member holds a WebSocket; every worker
    /// a UDP socket).
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`LimitNOFILE`).
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's counters; `None` where there is no Linux
    /// `/proc` or it does not parse.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        parse(&stat, &status, &boot, &limits, open_fds, clock_ticks()?)
    }
}

/// The CPU time (user + system, in seconds) of the calling thread, from
/// `/proc/thread-self/stat`; `None` where there is none.
pub fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    cpu_seconds(&stat_fields(&stat)?, clock_ticks()?)
}

/// The fields of a `/proc/…/stat` text after the command name (field 2, in
/// parentheses, which may hold spaces and parentheses itself: the fields
/// that follow start after the last ')'); index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(
        stat.get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect(),
    )
}

/// User + system time (fields 14 and 15) of a stat text's fields, in
/// seconds.
fn cpu_seconds(fields: &[&str], ticks_per_second: f64) -> Option<f64> {
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((number(11)? + number(12)?) as f64 / ticks_per_second)
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`).
fn clock_ticks() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        use nix::unistd::{sysconf, SysconfVar};
        let ticks = sysconf(SysconfVar::CLK_TCK).ok()??;
        (ticks > 0).then_some(ticks as f64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The counters from the texts of `/proc/self/stat`, `/proc/self/status`,
/// `/proc/stat` and `/proc/self/limits` (proc(5)).
fn parse(
    stat: &str,
    status: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
    ticks_per_second: f64,
) -> Option<ProcessStats> {
    let fields = stat_fields(stat)?;
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let threads = number(17)?;
    let start_ticks = number(19)?;
    let resident_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let boot_time: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok());
    Some(ProcessStats {
        cpu_seconds: cpu_seconds(&fields, ticks_per_second)?,
        resident_bytes: resident_kib * 1024,
        open_fds,
        max_fds,
        threads,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a running sfu-server, the command name made awkward.
    const STAT: &str = "4242 (sfu (server) x) S 1 4242 4242 0 -1 4194560 2195 0 0 0 \
        1234 566 0 0 20 0 7 0 98765 1052672000 3021 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17990 0 0 0 17 1 0 0 0 0 0";
    const STATUS: &str =
        "Name:\tsfu-server\nVmPeak:\t 1028000 kB\nVmRSS:\t   12084 kB\nThreads:\t7\n";
    const BOOT: &str = "cpu  1 2 3 4\nintr 5\nbtime 1700000000\nprocesses 9\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max processes             94387                94387                processes \n\
        Max open files            65536                524288               files     \n";

    #[test]
    fn parses_proc() {
        let p = parse(STAT, STATUS, BOOT, LIMITS, 42, 100.0).unwrap();
        assert!(
            (p.start_time_seconds - 1_700_000_987.65).abs() < 1e-3,
            "{p:?}"
        );
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 18.0,
                resident_bytes: 12084 * 1024,
                open_fds: 42,
                max_fds: Some(65536),
                threads: 7,
                start_time_seconds: p.start_time_seconds,
            }
        );
    }

    #[test]
    fn unlimited_files_and_garbage() {
        let unlimited = LIMITS.replace("65536 ", "unlimited ");
        assert_eq!(
            parse(STAT, STATUS, BOOT, &unlimited, 1, 100.0)
                .unwrap()
                .max_fds,
            None
        );
        assert_eq!(parse("", STATUS, BOOT, LIMITS, 1, 100.0), None);
        assert_eq!(parse("1 (x) S 1 2", STATUS, BOOT, LIMITS, 1, 100.0), None);
        assert_eq!(parse(STAT, "", BOOT, LIMITS, 1, 100.0), None);
        assert_eq!(parse(STAT, STATUS, "", LIMITS, 1, 100.0), None);
    }

    /// A thread that burns CPU sees its own time grow, and only its own:
    /// another thread's reading is not the process's.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_the_calling_threads_cpu_time() {
        let before = thread_cpu_seconds().expect("Linux /proc");
        let ticks = clock_ticks().unwrap();
        let mut x = 0u64;
        while thread_cpu_seconds().unwrap() < before + 2.0 / ticks {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let burnt = thread_cpu_seconds().unwrap();
        let idle = std::thread::spawn(|| thread_cpu_seconds().unwrap())
            .join()
            .unwrap();
        assert!(
            idle < burnt,
            "a new thread's {idle} s vs this one's {burnt} s"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().expect("Linux /proc");
        assert!(
            p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3,
            "{p:?}"
        );
        assert!(p.start_time_seconds > 1.5e9, "{p:?}");
    }
}
