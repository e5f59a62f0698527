//! Readings from `/proc`: a process's CPU time and resident memory, the
//! machine's busy time and load, the CPU model. Linux only.

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every
/// mainstream Linux; `getconf CLK_TCK` confirms it when available (asked
/// once, so readings during a case cost no process spawn).
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (utime + stime) of process `pid` in microseconds.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    stat_cpu_us(&format!("/proc/{pid}/stat"))
}

/// CPU time of the calling thread in microseconds.
pub fn thread_cpu_us() -> anyhow::Result<u64> {
    stat_cpu_us("/proc/thread-self/stat")
}

/// CPU time of this (the bench) process in microseconds.
pub fn self_cpu_us() -> anyhow::Result<u64> {
    stat_cpu_us("/proc/self/stat")
}

fn stat_cpu_us(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // proc(5): the command name (field 2) is in parentheses and may hold
    // spaces; fields 14 and 15 (utime, stime) follow the last ')'.
    let rest = text.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) * 1_000_000 / clock_ticks())
}

/// Resident memory (VmRSS) of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// Busy CPU time of the whole machine (all cores, everything but idle and
/// iowait) in microseconds, from the first line of `/proc/stat`.
pub fn machine_busy_us() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| v.get(*i))
        .sum::<u64>();
    Ok(busy * 1_000_000 / clock_ticks())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The CPU model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Cores available to this process (what `nproc` prints).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
