//! What a reload did, for whoever asked (admin API, `balancer reload`) and
//! for the status page and metrics.

/// The result of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Reloaded {
        generation: u64,
        /// [`super::ReloadPlan::summary`] of what changed.
        changes: String,
    },
    Rejected {
        errors: Vec<String>,
    },
    /// A file event that left the text unchanged.
    Unchanged,
}

/// Reload results so far.
#[derive(Debug, Default, Clone)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    /// Unix time (seconds) of the last successful reload.
    pub last_success_unix: Option<u64>,
    /// Every error of the last refused file (cleared by the next success).
    pub last_errors: Vec<String>,
    /// Certificates served now.
    pub certificates: Vec<super::certificates::CertificateSummary>,
    /// Certificate files changed on disk but refused (the old ones serve).
    pub certificate_errors: Vec<String>,
}

impl ReloadStats {
    pub fn record(&mut self, outcome: &ReloadOutcome) {
        match outcome {
            ReloadOutcome::Reloaded { .. } => {
                self.succeeded += 1;
                self.last_errors.clear();
                self.last_success_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
            }
            ReloadOutcome::Rejected { errors } => {
                self.failed += 1;
                self.last_errors = errors.clone();
            }
            ReloadOutcome::Unchanged => {}
        }
    }
}
