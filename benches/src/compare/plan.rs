//! The order of a run: start the upstreams, then three phases.
//!
//! 1. **Memory** (not in `--smoke`): per target, a fresh proxy holds N idle
//!    keep-alive connections; another fresh one holds N idle tunnels.
//! 2. **Load**: every target runs at once (idle while not measured); a
//!    1 s warm-up each, then `rounds` rounds, and in each round every
//!    scenario runs against every target in turn (A B C D E for 50
//!    connections, then A B C D E for 1,000, then the echo), 0.5 s apart.
//! 3. **Reload**: per target, a fresh proxy through the reload test.
//!
//! A target that fails (does not start, errors under load) is reported and
//! the run goes on with the others; the harness then exits 1.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::load::{self, Sample, Scenario};
use super::memory::{self, Memory};
use super::reload::{self, ReloadResult};
use super::report::latency;
use super::targets::{Kind, Programs, Target, Upstreams};
use super::{Mode, Settings};

/// Pause between two load runs.
const PAUSE: Duration = Duration::from_millis(500);

/// Everything measured on one target.
#[derive(Debug, Clone)]
pub struct TargetResults {
    pub kind: Kind,
    pub runs: BTreeMap<Scenario, Vec<Sample>>,
    pub idle_http: Option<Memory>,
    pub idle_ws: Option<Memory>,
    pub reload: Option<ReloadResult>,
}

/// Everything measured in one run of the harness.
#[derive(Debug, Clone)]
pub struct Results {
    pub settings: Settings,
    pub targets: Vec<TargetResults>,
    /// Scenarios run (those needing wrk are left out without it).
    pub scenarios: Vec<Scenario>,
    /// What went wrong; non-empty means exit code 1.
    pub failures: Vec<String>,
    /// What was left out, and why.
    pub notes: Vec<String>,
    pub started: SystemTime,
    pub elapsed: Duration,
}

/// Progress lines on stderr, with the time since the start.
#[derive(Debug)]
struct Progress {
    t0: Instant,
}

impl Progress {
    fn say(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }
}

/// Runs every phase; only a harness failure (the upstreams cannot start)
/// is an `Err`, a target's failure is recorded in the results.
pub async fn run(
    settings: &Settings,
    programs: &Programs,
    kinds: &[Kind],
    dir: &Path,
) -> anyhow::Result<Results> {
    let p = Progress { t0: Instant::now() };
    let mut r = Results {
        settings: settings.clone(),
        targets: kinds
            .iter()
            .map(|&kind| TargetResults {
                kind,
                runs: BTreeMap::new(),
                idle_http: None,
                idle_ws: None,
                reload: None,
            })
            .collect(),
        scenarios: Vec::new(),
        failures: Vec::new(),
        notes: Vec::new(),
        started: SystemTime::now(),
        elapsed: Duration::ZERO,
    };
    let mut upstreams = Upstreams::start(programs, dir).await?;
    p.say(&format!("upstream backends on {:?}", upstreams.addrs));

    if settings.idle > 0 {
        memory_phase(&p, settings, programs, &upstreams, dir, &mut r).await;
        upstreams.check_running()?;
    }
    load_phase(&p, settings, programs, &upstreams, dir, &mut r).await;
    upstreams.check_running()?;
    reload_phase(&p, settings, programs, &upstreams, dir, &mut r).await;
    upstreams.check_running()?;
    r.elapsed = p.t0.elapsed();
    Ok(r)
}

fn fail(p: &Progress, r: &mut Results, msg: String) {
    p.say(&format!("FAILED: {msg}"));
    r.failures.push(msg);
}

async fn memory_phase(
    p: &Progress,
    settings: &Settings,
    programs: &Programs,
    upstreams: &Upstreams,
    dir: &Path,
    r: &mut Results,
) {
    let n = settings.idle;
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        let label = kind.label();
        p.say(&format!("memory: {label}: {n} idle keep-alive connections"));
        let http = async {
            let mut t = Target::start(kind, programs, &upstreams.addrs, dir).await?;
            memory::idle_http(&mut t, n).await
        }
        .await;
        match http {
            Ok(m) => {
                p.say(&format!("  {:.2} KiB per connection", m.per_conn_kib()));
                r.targets[i].idle_http = Some(m);
            }
            Err(e) => fail(p, r, format!("{label}: idle keep-alive memory: {e:#}")),
        }
        p.say(&format!("memory: {label}: {n} idle WebSocket tunnels"));
        let tunnels = async {
            let mut t = Target::start(kind, programs, &upstreams.addrs, dir).await?;
            memory::idle_ws(&mut t, n).await
        }
        .await;
        match tunnels {
            Ok(m) => {
                p.say(&format!("  {:.2} KiB per tunnel", m.per_conn_kib()));
                r.targets[i].idle_ws = Some(m);
            }
            Err(e) => fail(p, r, format!("{label}: idle tunnel memory: {e:#}")),
        }
    }
}

/// One load run of `scenario` against `t`.
async fn one_run(
    settings: &Settings,
    programs: &Programs,
    t: &Target,
    scenario: Scenario,
    run: Duration,
) -> anyhow::Result<Sample> {
    match (scenario, &programs.wrk, settings.mode) {
        (Scenario::WsEcho, _, _) => load::ws_echo(t, load::WS_SOCKETS, run).await,
        (_, _, Mode::Smoke) => load::rust_http(t, scenario.connections(), run).await,
        (_, Some(wrk), _) => load::wrk(t, wrk, scenario.connections(), run).await,
        (_, None, _) => anyhow::bail!("wrk is not installed"),
    }
}

async fn load_phase(
    p: &Progress,
    settings: &Settings,
    programs: &Programs,
    upstreams: &Upstreams,
    dir: &Path,
    r: &mut Results,
) {
    r.scenarios = match (settings.mode, programs.wrk.is_some()) {
        (Mode::Smoke, _) => vec![Scenario::Http50, Scenario::WsEcho],
        (_, true) => Scenario::ALL.to_vec(),
        (_, false) => {
            r.notes
                .push("HTTP load left out: wrk is not installed".to_string());
            vec![Scenario::WsEcho]
        }
    };
    let mut running: Vec<Option<Target>> = Vec::new();
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        match Target::start(kind, programs, &upstreams.addrs, dir).await {
            Ok(t) => {
                p.say(&format!(
                    "load: {} on {} (pid {})",
                    kind.label(),
                    t.addr,
                    t.pid()
                ));
                running.push(Some(t));
            }
            Err(e) => {
                fail(p, r, format!("{}: cannot start: {e:#}", kind.label()));
                running.push(None);
            }
        }
    }
    if settings.mode != Mode::Smoke {
        for t in running.iter().flatten() {
            p.say(&format!("warm-up: {}", t.kind.label()));
            let secs = Duration::from_secs(1);
            if let Some(wrk) = &programs.wrk {
                let _ = load::wrk(t, wrk, 50, secs).await;
            }
            let _ = load::ws_echo(t, 10, secs).await;
        }
    }
    let scenarios = r.scenarios.clone();
    for round in 1..=settings.rounds {
        for &scenario in &scenarios {
            for (i, slot) in running.iter_mut().enumerate() {
                let Some(t) = slot.as_mut() else {
                    continue;
                };
                let label = t.kind.label();
                let sample = one_run(settings, programs, t, scenario, settings.run).await;
                let alive = t.check_running();
                match (sample, alive) {
                    (Ok(s), Ok(())) => {
                        p.say(&format!(
                            "round {round}/{}: {label}: {}: {:.0}/s, p99 {}, {:.1} µs CPU each",
                            settings.rounds,
                            scenario.label(),
                            s.rate,
                            latency(s.p99_us),
                            s.cpu_us
                        ));
                        if let Some(e) = &s.error {
                            fail(
                                p,
                                r,
                                format!("{label}: {} (round {round}): {e}", scenario.label()),
                            );
                        }
                        r.targets[i].runs.entry(scenario).or_default().push(s);
                    }
                    (Err(e), alive) => {
                        fail(
                            p,
                            r,
                            format!("{label}: {} (round {round}): {e:#}", scenario.label()),
                        );
                        if alive.is_err() {
                            *slot = None;
                        }
                    }
                    (Ok(_), Err(e)) => {
                        fail(
                            p,
                            r,
                            format!("{label}: {} (round {round}): {e:#}", scenario.label()),
                        );
                        *slot = None;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}

async fn reload_phase(
    p: &Progress,
    settings: &Settings,
    programs: &Programs,
    upstreams: &Upstreams,
    dir: &Path,
    r: &mut Results,
) {
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        let label = kind.label();
        p.say(&format!(
            "reload: {label}: {} changes in {:?} under load",
            settings.reload_changes, settings.reload_for
        ));
        let outcome = async {
            let mut t = Target::start(kind, programs, &upstreams.addrs, dir).await?;
            reload::run(&mut t, settings.reload_for, settings.reload_changes).await
        }
        .await;
        match outcome {
            Ok(res) => {
                p.say(&format!(
                    "  HTTP {}; {} of {} sessions broken; processes {} -> {} -> {}",
                    res.http,
                    res.sessions_broken,
                    res.sessions,
                    res.procs_start,
                    res.procs_end_open,
                    res.procs_after_close
                ));
                let lost = res.http.failed > 0 || res.sessions_broken > 0 || res.procs_left() > 0;
                if kind == Kind::Balancer && lost {
                    let msg = format!(
                        "{label}: reload under load: {}; {} sessions broken {:?}; {} processes left \
                         (target: none of these)",
                        res.http,
                        res.sessions_broken,
                        res.broken_reasons,
                        res.procs_left()
                    );
                    if settings.mode == Mode::Smoke {
                        fail(p, r, msg);
                    } else {
                        p.say(&format!("NOTE: {msg}"));
                        r.notes.push(msg);
                    }
                }
                r.targets[i].reload = Some(res);
            }
            Err(e) => fail(p, r, format!("{label}: reload test: {e:#}")),
        }
    }
}
