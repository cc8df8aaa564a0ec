//! The open-file limit: every member holds a UDP socket and a WebSocket.

/// Soft and hard `RLIMIT_NOFILE` of this process, from /proc/self/limits.
fn nofile() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let parse = |v: Option<&str>| match v? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    };
    Some((parse(f.next())?, parse(f.next())?))
}

/// Makes sure `needed` file descriptors can be open: raises the soft limit
/// to the hard one with util-linux `prlimit` on this process if it is too
/// low (std has no safe setrlimit and this workspace forbids `unsafe`).
/// An error says what to do when that is not enough.
pub(crate) fn ensure_open_files(needed: u64) -> Result<(), String> {
    let Some((soft, hard)) = nofile() else {
        // Not Linux /proc: go ahead, a failing socket() will say so.
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    let advice = format!(
        "{needed} file descriptors needed (a UDP socket and a WebSocket per member), \
         the limit is {soft} (hard {hard}): raise it, e.g. `ulimit -n {needed}`, or ask for fewer listeners"
    );
    if hard < needed {
        return Err(advice);
    }
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    match (status, nofile()) {
        (Ok(s), Some((soft, _))) if s.success() && soft >= needed => {
            eprintln!("loadgen: raised the open-file limit to {soft}");
            Ok(())
        }
        _ => Err(advice),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_and_accepts_small_needs() {
        let (soft, hard) = nofile().expect("Linux /proc/self/limits");
        assert!(soft >= 1 && hard >= soft);
        assert!(ensure_open_files(1).is_ok());
        let e = ensure_open_files(u64::MAX).unwrap_err();
        assert!(e.contains("ulimit -n"), "{e}");
    }
}
