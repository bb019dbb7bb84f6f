//! Log set-up: human-readable text by default, one JSON object per line with
//! `--log-format json`. `RUST_LOG` filters as usual (default `info`).
//! Access-log lines use the target `access`, so `RUST_LOG=info,access=off`
//! silences them.

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A warning for something that may happen many times a second (a limit
/// tripping under a flood): logged at most once per 10 s, process wide,
/// with how many were not logged since the last line. Lock-free.
#[derive(Debug, Default)]
pub struct WarnEvery {
    /// [`crate::clock::now_ms`] of the last line (0: none yet).
    last: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

impl WarnEvery {
    const EVERY_MS: u64 = 10_000;

    pub const fn new() -> Self {
        Self {
            last: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(events not logged since the last line)` when this one is to
    /// be logged, else `None` (and it is counted).
    pub fn should_warn(&self) -> Option<u64> {
        self.should_warn_at(crate::clock::now_ms())
    }

    fn should_warn_at(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last.load(Relaxed);
        if (last != 0 && now.saturating_sub(last) < Self::EVERY_MS)
            || self
                .last
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.unlogged.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::WarnEvery;

    #[test]
    fn a_warning_is_logged_once_per_ten_seconds_with_what_it_left_out() {
        let w = WarnEvery::new();
        assert_eq!(w.should_warn_at(5), Some(0));
        assert_eq!(w.should_warn_at(6), None);
        assert_eq!(w.should_warn_at(10_004), None);
        assert_eq!(w.should_warn_at(10_005), Some(2));
        assert_eq!(w.should_warn_at(10_006), None);
    }
}
