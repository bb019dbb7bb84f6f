//! Active health checks: one [`HealthChecker`] task per backend of every
//! pool with a `[pool.health]` table.
//!
//! A checker probes its backend every `interval` (with ±10% jitter, so the
//! checks of many backends and balancers do not align), and writes its
//! verdict into the backend's health atomic. Picks read that atomic; nothing
//! is rebuilt. A state change is logged with its reason (status code,
//! timeout, refused, ...) and counted.
//!
//! States: a backend starts `unknown` (no traffic) unless `assume_up`; its
//! first pass makes it `up`; `fall` consecutive failures make it `down`;
//! `rise` consecutive passes bring a `down` backend back `up`.
//!
//! A passing check also ends a passive ejection at once (when the check
//! started after the ejection: see [`crate::upstream::ejection`]), so a
//! backend that recovered is back on the next check, not after its
//! ejection time.
//!
//! A probe of a pool with `send_proxy_protocol` starts with a `LOCAL`
//! header (v1: `UNKNOWN`): the backend requires a header on every
//! connection, and this one is the balancer's own, for no client.

mod checkers;

use std::sync::Arc;
use std::time::Duration;

use config::{HealthConfig, HealthKind};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub use checkers::Checkers;

use arc_swap::ArcSwap;

use crate::clock::{now_ms, Now};
use crate::runtime::Snapshot;
use crate::upstream::ejection::{Change, Event};
use crate::upstream::{Backend, Health, ProxyHeader};

/// The pure state machine: consecutive counts in, verdict out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passes: u32,
    pub failures: u32,
}

/// The next state after one check result.
pub fn next_state(
    current: Health,
    counts: &mut Counts,
    passed: bool,
    rise: u32,
    fall: u32,
) -> Health {
    if passed {
        counts.passes = counts.passes.saturating_add(1);
        counts.failures = 0;
        match current {
            // The first pass is enough for a backend never seen up.
            Health::Unknown => Health::Up,
            Health::Down if counts.passes >= rise => Health::Up,
            other => other,
        }
    } else {
        counts.failures = counts.failures.saturating_add(1);
        counts.passes = 0;
        if counts.failures >= fall {
            Health::Down
        } else {
            current
        }
    }
}

/// Checks one backend until `stop` fires.
#[derive(Debug)]
pub struct HealthChecker {
    pub pool: Arc<str>,
    pub backend: Arc<Backend>,
    pub config: HealthConfig,
    /// The live snapshot: a passing check ends an ejection under the
    /// pool's ejection rules as they are now (a reload may change them
    /// without restarting the checker).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Check duration and failure metrics, when metrics are on.
    pub metrics: Option<crate::metrics::CheckMetrics>,
}

impl HealthChecker {
    pub async fn run(self, stop: CancellationToken) {
        let mut counts = Counts::default();
        let mut seen_epoch = self.backend.health_epoch();
        // A first check soon after start (jittered), so new backends do not
        // wait a whole interval for traffic.
        let mut wait = jitter(self.config.interval / 10);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let started = now_ms();
            let timer = std::time::Instant::now();
            let epoch = self.backend.health_epoch();
            if epoch != seen_epoch {
                // Its process exited since the last probe: passes of the
                // old process do not count for the new one.
                counts = Counts::default();
                seen_epoch = epoch;
            }
            // A probe in flight when the checker is stopped (its pool
            // dropped its checks, or they changed) says nothing any more:
            // its verdict must not overwrite what the reload decided.
            // The pool's header as the live config has it (a reload may
            // turn it on or off without restarting the checker).
            let header = self
                .snapshot
                .load()
                .pools
                .get(&*self.pool)
                .and_then(|p| p.upstream.proxy_header);
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = check(&self.backend, &self.config, header.as_ref()) => r,
            };
            if let Some(m) = &self.metrics {
                m.record(timer.elapsed(), result.is_ok());
            }
            if self.backend.health_epoch() != epoch {
                // Its process exited during the probe: the verdict is
                // about a process that is gone.
                wait = jitter(self.config.interval / 10);
                continue;
            }
            let now = now_ms();
            if result.is_ok() {
                self.passed(started, now);
            }
            let current = self.backend.health();
            let next = next_state(
                current,
                &mut counts,
                result.is_ok(),
                self.config.rise,
                self.config.fall,
            );
            if self.backend.set_health(next, now) {
                let reason = match &result {
                    Ok(status) => format!("passed ({status})"),
                    Err(e) => e.clone(),
                };
                let (pool, backend) = (&*self.pool, &*self.backend.id);
                if next == Health::Up {
                    tracing::info!(pool, backend, from = current.as_str(), reason, "backend up");
                } else {
                    tracing::warn!(
                        pool,
                        backend,
                        from = current.as_str(),
                        reason,
                        "backend down"
                    );
                }
            }
            wait = jitter(self.config.interval);
        }
    }
}

impl HealthChecker {
    /// A check that started at `started` passed at `now`: an ejection that
    /// began before it ends.
    fn passed(&self, started: u64, now: u64) {
        let snap = self.snapshot.load();
        let Some(pool) = snap.pools.get(&*self.pool) else {
            return;
        };
        let applied = self.backend.ejection.apply(
            Event::CheckPassed { started },
            &Now::at(now),
            &pool.ejection,
            || true,
        );
        if applied.change == Change::Returned {
            tracing::info!(
                pool = &*self.pool,
                backend = &*self.backend.id,
                was = applied.before.out.map_or("-", |o| o.as_str()),
                "backend back from ejection: a check passed"
            );
        }
    }
}

/// `d` ± 10%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// One probe, its connection started with `proxy_header` when the pool
/// sends one. `Ok` carries what passed (the status code, or "connected");
/// `Err` says why it failed.
pub async fn check(
    backend: &Backend,
    cfg: &HealthConfig,
    proxy_header: Option<&ProxyHeader>,
) -> Result<String, String> {
    match tokio::time::timeout(cfg.timeout, probe(backend, cfg, proxy_header)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", cfg.timeout)),
    }
}

async fn probe(
    backend: &Backend,
    cfg: &HealthConfig,
    proxy_header: Option<&ProxyHeader>,
) -> Result<String, String> {
    // With the pool's TLS settings (and PROXY header) when it has them: a
    // check passes only if requests could get through.
    let local = proxy_header.map(|h| ProxyHeader::local(h.version()));
    let stream = backend
        .connections
        .open(cfg.timeout, local.as_ref())
        .await
        .map_err(|e| {
            if e.is_refused() {
                "connection refused".to_string()
            } else {
                e.to_string()
            }
        })?;
    if cfg.kind == HealthKind::Tcp {
        return Ok("connected".to_string());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    // The connection task ends when the probe is done and `sender` drops.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(cfg.path.as_str())
        .header(http::header::HOST, backend.authority.as_str())
        .header(http::header::USER_AGENT, "balancer-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad check request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    if (cfg.expect.0..=cfg.expect.1).contains(&status) {
        Ok(format!("status {status}"))
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Health, results: &[bool], rise: u32, fall: u32) -> Vec<Health> {
        let mut counts = Counts::default();
        let mut state = start;
        results
            .iter()
            .map(|&ok| {
                state = next_state(state, &mut counts, ok, rise, fall);
                state
            })
            .collect()
    }

    use Health::{Down, Unknown, Up};

    /// The reload race: a pool drops its checks while a probe hangs. The
    /// checker must end at once and write nothing, or the backend (counted
    /// up by the reload) would be marked down with no checker left to
    /// bring it back.
    #[tokio::test]
    async fn a_stopped_checker_writes_nothing_from_a_probe_in_flight() {
        let (addr, seen) = crate::upstream::testing::raw_backend(vec!["<hang>"; 4]).await;
        let config = config::parse(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n\
             [[pool.backend]]\nid = \"b\"\naddress = \"{addr}\"\n\
             [pool.health]\ninterval = \"10ms\"\ntimeout = \"30s\"\nfall = 1\nassume_up = true\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n"
        ))
        .unwrap();
        let snap = Snapshot::build(
            &config,
            &std::collections::HashMap::new(),
            1,
            None,
            &Default::default(),
        );
        let backend = Arc::clone(&snap.pools["p"].backends[0]);
        let checker = HealthChecker {
            pool: Arc::from("p"),
            backend: Arc::clone(&backend),
            config: config.pools[0].health.clone().unwrap(),
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            metrics: None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(checker.run(stop.clone()));
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while seen.requests() == 0 {
            assert!(
                std::time::Instant::now() < end,
                "no probe reached the backend"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        // Well before the probe's own 30 s timeout.
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the checker ended when stopped")
            .unwrap();
        assert_eq!(backend.health(), Up);
        assert_eq!(backend.health_changes(), 0);
    }

    #[test]
    fn first_pass_brings_a_new_backend_up() {
        assert_eq!(run(Unknown, &[true], 3, 2), vec![Up]);
        assert_eq!(
            run(Unknown, &[false, false, true], 3, 2),
            vec![Unknown, Down, Down]
        );
    }

    proptest::proptest! {
        /// Any results: `down` only after `fall` failures in a row, `up`
        /// from `down` only after `rise` passes in a row, and a first pass
        /// always brings an unknown backend up.
        #[test]
        fn transitions_follow_rise_and_fall(
            results in proptest::collection::vec(proptest::bool::ANY, 0..64),
            rise in 1u32..5,
            fall in 1u32..5,
        ) {
            let mut counts = Counts::default();
            let mut state = Unknown;
            let (mut passes, mut failures) = (0u32, 0u32);
            for ok in results {
                let before = state;
                state = next_state(state, &mut counts, ok, rise, fall);
                if ok { passes += 1; failures = 0 } else { failures += 1; passes = 0 }
                match (before, state) {
                    (Unknown, Up) => proptest::prop_assert!(ok),
                    (Down, Up) => proptest::prop_assert!(passes >= rise),
                    (_, Down) if before != Down => proptest::prop_assert!(failures >= fall),
                    (Up, Unknown) | (Down, Unknown) => proptest::prop_assert!(false, "back to unknown"),
                    _ => {}
                }
                if before == Unknown && ok {
                    proptest::prop_assert_eq!(state, Up);
                }
            }
        }
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        assert_eq!(
            run(
                Up,
                &[false, true, false, false, true, true, false, true],
                2,
                2
            ),
            vec![Up, Up, Up, Down, Down, Up, Up, Up]
        );
        assert_eq!(
            run(Down, &[true, false, true, true, true], 3, 1),
            vec![Down, Down, Down, Down, Up]
        );
    }
}
