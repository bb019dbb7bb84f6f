//! What a running instance costs, read from `/proc` when the status API or
//! a scrape asks (no background task, nothing kept between reads): its
//! resident memory and the CPU time it has used. Linux only; elsewhere, or
//! when the process is gone, there is no reading.
//!
//! The process can exit between two reads (or between its pid being read
//! and `/proc` being opened): every step returns `None` rather than a
//! partial or made-up value, and nothing here panics on what the files say.

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// `VmRSS` of `/proc/PID/status`.
    pub rss_bytes: u64,
    /// User plus system time (`utime + stime` of `/proc/PID/stat`).
    pub cpu_seconds: f64,
}

impl Usage {
    /// Reads process `pid` now; `None` if it is gone or unreadable.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ticks = cpu_ticks(&stat)?;
        Some(Self {
            rss_bytes: rss_bytes(&status)?,
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        })
    }
}

fn clock_ticks_per_second() -> f64 {
    // The kernel's USER_HZ; 100 on every Linux port, used if it reads 0.
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        hz => hz as f64,
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes. A kernel thread or a
/// zombie has no `VmRSS` line: `None`.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// `utime + stime` of a `/proc/PID/stat` line, in clock ticks. The second
/// field (`comm`, in parentheses) may hold spaces and parentheses itself:
/// the fields are counted from the *last* `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After `comm`: state (field 3), ..., utime (14), stime (15).
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (backend) S 4200 4242 4200 0 -1 4194560 1123 0 0 0 \
                        250 37 0 0 20 0 5 0 123456 25165824 2893 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17987 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        assert_eq!(cpu_ticks(STAT), Some(287));
    }

    #[test]
    fn a_comm_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let tricky = STAT.replace("(backend)", "(my (game) ) srv)");
        assert_eq!(cpu_ticks(&tricky), Some(287));
        let empty = STAT.replace("(backend)", "()");
        assert_eq!(cpu_ticks(&empty), Some(287));
    }

    #[test]
    fn a_truncated_or_garbled_stat_reads_none() {
        for bad in [
            "",
            "4242 (backend",
            "4242 (backend) S 4200",
            &STAT.replace(" 250 ", " x "),
            &STAT.replace(" 250 37 ", " -1 37 "),
            &STAT[..STAT.find(" 37 ").unwrap_or(0)],
        ] {
            assert_eq!(cpu_ticks(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rss_is_vmrss_in_bytes() {
        let status = "Name:\tbackend\nState:\tS (sleeping)\nVmPeak:\t   30000 kB\n\
                      VmRSS:\t   11572 kB\nRssAnon:\t    4000 kB\nThreads:\t5\n";
        assert_eq!(rss_bytes(status), Some(11572 * 1024));
    }

    #[test]
    fn a_status_without_vmrss_or_with_a_bad_one_reads_none() {
        for bad in [
            "",
            "Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n",
            "VmRSS:\n",
            "VmRSS:\t  12 MB\n",
            "VmRSS:\t  abc kB\n",
            "VmRSS:\t  99999999999999999999 kB\n",
        ] {
            assert_eq!(rss_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_has_a_reading_and_a_gone_one_has_none() {
        let me = Usage::of(std::process::id()).expect("our own /proc entry");
        assert!(me.rss_bytes > 0, "{me:?}");
        assert!(me.cpu_seconds >= 0.0, "{me:?}");
        // Above the kernel's pid_max (at most 2^22).
        assert_eq!(Usage::of(u32::MAX), None);
    }
}
