//! CPU time and resident memory of a process, from Linux's `/proc`.
//!
//! CPU seconds are `utime + stime` of `/proc/<pid>/stat` (all threads),
//! in clock ticks (`getconf CLK_TCK`, 100 on Linux): a 10 ms resolution,
//! fine for phases of several seconds.

use std::sync::OnceLock;

use anyhow::Context;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now, in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far, in KiB (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads the counters of `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> anyhow::Result<ProcSample> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("reading {dir}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; every
    // field after its closing parenthesis is a number or a state letter.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3).
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = fields.get(i).context("short /proc stat line")?.parse().context("non-numeric /proc stat field")?;
        Ok(v as f64)
    };
    let cpu_secs = (tick(11)? + tick(12)?) / clock_ticks();
    let status = std::fs::read_to_string(format!("{dir}/status")).with_context(|| format!("reading {dir}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample { cpu_secs, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// Clock ticks per second, as `getconf CLK_TCK` reports (100 if it can't).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The 1-minute load average and the number of CPUs, to judge how noisy a
/// measurement is.
pub fn load_and_cpus() -> (f64, usize) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(f64::NAN);
    (load, std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(None).expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(s.cpu_secs >= 0.0);
    }
}
