//! A process tree as `/proc` shows it: the root process and every process
//! whose parent chain leads to it (nginx and HAProxy workers, old workers
//! still draining after a reload). Children are found by scanning
//! `/proc/*/stat` for their parent PID.
//!
//! * CPU: `utime + stime + cutime + cstime` of every process in the tree,
//!   in clock ticks (the `c` fields hold the time of children already
//!   reaped, so a worker that exits between two readings is not lost).
//! * Memory: the sum of `VmRSS` from `/proc/<pid>/status` (pages shared
//!   between an nginx master and its workers count once per process; only
//!   differences of two readings are reported, so this cancels out).

use std::collections::BTreeMap;
use std::fs;

/// One line of `/proc/<pid>/stat`, the fields used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    /// State letter (`R`, `S`, ..., `Z` for a zombie: exited, not reaped).
    pub state: char,
    /// utime + stime + cutime + cstime, clock ticks.
    pub ticks: u64,
    /// Start time after boot, clock ticks: with the PID, names one process
    /// even if the PID is reused later.
    pub start: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is rest's index 0, so field n is at n - 3.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        state: f.first()?.chars().next()?,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        start: num(22)?,
    })
}

/// The stat of one process, `None` once it is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Every process now running.
fn all() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// The root and all its descendants, root first; empty when the root is
/// gone.
pub fn tree(root: i32) -> Vec<Stat> {
    let everyone = all();
    let mut children: BTreeMap<i32, Vec<Stat>> = BTreeMap::new();
    let mut out = Vec::new();
    for s in everyone {
        if s.pid == root {
            out.push(s);
        } else {
            children.entry(s.ppid).or_default().push(s);
        }
    }
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.remove(&out[i].pid) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Clock ticks per second (`USER_HZ`), for converting ticks.
fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// CPU time of the whole tree so far, in microseconds.
pub fn tree_cpu_us(root: i32) -> u64 {
    let ticks: u64 = tree(root).iter().map(|s| s.ticks).sum();
    ticks.saturating_mul(1_000_000) / ticks_per_second()
}

/// `VmRSS` of one process in KiB (0 for a zombie or a vanished process).
pub fn rss_kib(pid: i32) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    parse_vmrss(&text).unwrap_or(0)
}

/// The `VmRSS:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Sum of `VmRSS` over the tree, KiB.
pub fn tree_rss_kib(root: i32) -> u64 {
    tree(root).iter().map(|s| rss_kib(s.pid)).sum()
}

/// Number of live (not zombie) processes in the tree.
pub fn tree_size(root: i32) -> usize {
    tree(root).iter().filter(|s| s.state != 'Z').count()
}

/// Whether the process that `s` describes still runs: same PID, same start
/// time, not a zombie.
pub fn still_running(s: &Stat) -> bool {
    stat(s.pid).is_some_and(|now| now.start == s.start && now.state != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_name() {
        let text = "4242 (nginx: worker (x) ) S 4240 4240 4240 0 -1 4194624 \
                    100 0 0 0 7 3 2 1 20 0 1 0 987654 1000 200 18446744073709551615";
        let s = parse_stat(4242, text).unwrap();
        assert_eq!(s.ppid, 4240);
        assert_eq!(s.state, 'S');
        assert_eq!(s.ticks, 7 + 3 + 2 + 1);
        assert_eq!(s.start, 987654);
        assert_eq!(parse_stat(1, "1 (init"), None);
    }

    #[test]
    fn parses_vmrss() {
        let text = "Name:\tnginx\nVmPeak:\t  1 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(text), Some(5120));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn sees_itself() {
        let me = std::process::id() as i32;
        let t = tree(me);
        assert_eq!(t.first().map(|s| s.pid), Some(me));
        assert!(tree_rss_kib(me) > 0);
    }
}
