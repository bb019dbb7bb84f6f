//! The order of a run: generate the certificate, start the upstreams, then
//! three phases.
//!
//! 1. **Memory** (not in `--smoke`): per target, a fresh proxy holds N idle
//!    keep-alive connections; another fresh one holds N idle `ws://`
//!    tunnels, a third N idle `wss://` tunnels.
//! 2. **Load**: every target runs at once (idle while not measured); a
//!    1 s warm-up per client kind each, then `rounds` rounds, and in each
//!    round every scenario runs against every target in turn (A B C D E
//!    for 50 connections, then A B C D E for 1,000, then the echo, then
//!    the TLS scenarios in the order of [`Scenario::ALL`]), 0.5 s apart.
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
use super::tls::TlsFiles;
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
    pub idle_wss: Option<Memory>,
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
                idle_wss: None,
                reload: None,
            })
            .collect(),
        scenarios: Vec::new(),
        failures: Vec::new(),
        notes: Vec::new(),
        started: SystemTime::now(),
        elapsed: Duration::ZERO,
    };
    let tls = TlsFiles::generate(dir)?;
    p.say(&format!(
        "TLS: ECDSA P-256 certificate for localhost and 127.0.0.1 in {}",
        tls.cert.display()
    ));
    let mut upstreams = Upstreams::start(programs, dir).await?;
    p.say(&format!("upstream backends on {:?}", upstreams.addrs));
    // A copy: `upstreams` is checked (mutably) between the phases.
    let addrs = upstreams.addrs.clone();
    let env = Env {
        programs,
        upstreams: &addrs,
        tls: &tls,
        dir,
    };

    if settings.idle > 0 {
        memory_phase(&p, settings, &env, &mut r).await;
        upstreams.check_running()?;
    }
    load_phase(&p, settings, &env, &mut r).await;
    upstreams.check_running()?;
    reload_phase(&p, settings, &env, &mut r).await;
    upstreams.check_running()?;
    r.elapsed = p.t0.elapsed();
    Ok(r)
}

fn fail(p: &Progress, r: &mut Results, msg: String) {
    p.say(&format!("FAILED: {msg}"));
    r.failures.push(msg);
}

/// What every phase starts its targets with.
#[derive(Debug, Clone, Copy)]
struct Env<'a> {
    programs: &'a Programs,
    upstreams: &'a [std::net::SocketAddr],
    tls: &'a TlsFiles,
    dir: &'a Path,
}

impl Env<'_> {
    async fn start(&self, kind: Kind) -> anyhow::Result<Target> {
        Target::start(kind, self.programs, self.upstreams, self.tls, self.dir).await
    }
}

/// The three idle-memory measurements.
#[derive(Debug, Clone, Copy)]
enum Idle {
    Http,
    Ws,
    Wss,
}

async fn memory_phase(p: &Progress, settings: &Settings, env: &Env<'_>, r: &mut Results) {
    let n = settings.idle;
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        let label = kind.label();
        for idle in [Idle::Http, Idle::Ws, Idle::Wss] {
            let (what, each) = match idle {
                Idle::Http => ("idle keep-alive connections", "connection"),
                Idle::Ws => ("idle WebSocket tunnels", "tunnel"),
                Idle::Wss => ("idle wss:// tunnels", "wss:// tunnel"),
            };
            p.say(&format!("memory: {label}: {n} {what}"));
            let measured = async {
                let mut t = env.start(kind).await?;
                match idle {
                    Idle::Http => memory::idle_http(&mut t, n).await,
                    Idle::Ws => memory::idle_ws(&mut t, n, false).await,
                    Idle::Wss => memory::idle_ws(&mut t, n, true).await,
                }
            }
            .await;
            match measured {
                Ok(m) => {
                    p.say(&format!("  {:.2} KiB per {each}", m.per_conn_kib()));
                    let slot = match idle {
                        Idle::Http => &mut r.targets[i].idle_http,
                        Idle::Ws => &mut r.targets[i].idle_ws,
                        Idle::Wss => &mut r.targets[i].idle_wss,
                    };
                    *slot = Some(m);
                }
                Err(e) => fail(p, r, format!("{label}: {what}: {e:#}")),
            }
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
    let conns = scenario.connections();
    let endpoint = if scenario.is_tls() {
        t.tls()
    } else {
        t.plain()
    };
    match (scenario, &programs.wrk, settings.mode) {
        (Scenario::WsEcho | Scenario::WssEcho, _, _) => {
            load::ws_echo(t, &endpoint, conns, run).await
        }
        (Scenario::TlsHandshake, _, _) => load::tls_handshakes(t, conns, run).await,
        (Scenario::HttpsClose, Some(wrk), _) => load::wrk(t, wrk, scenario, run).await,
        (Scenario::HttpsClose, None, _) => anyhow::bail!("{} needs wrk", scenario.label()),
        (_, _, Mode::Smoke) => load::rust_http(t, &endpoint, conns, run).await,
        (_, Some(wrk), _) => load::wrk(t, wrk, scenario, run).await,
        (_, None, _) => anyhow::bail!("wrk is not installed"),
    }
}

async fn load_phase(p: &Progress, settings: &Settings, env: &Env<'_>, r: &mut Results) {
    let programs = env.programs;
    r.scenarios = match (settings.mode, programs.wrk.is_some()) {
        (Mode::Smoke, _) => vec![
            Scenario::Http50,
            Scenario::WsEcho,
            Scenario::TlsHandshake,
            Scenario::Https50,
            Scenario::WssEcho,
        ],
        (_, true) => Scenario::ALL.to_vec(),
        (_, false) => {
            r.notes
                .push("HTTP and HTTPS load with wrk left out: wrk is not installed".to_string());
            Scenario::ALL
                .into_iter()
                .filter(|s| !s.needs_wrk())
                .collect()
        }
    };
    let mut running: Vec<Option<Target>> = Vec::new();
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        match env.start(kind).await {
            Ok(t) => {
                p.say(&format!(
                    "load: {} on {} and {} (TLS) (pid {})",
                    kind.label(),
                    t.addr,
                    t.tls_addr,
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
                let _ = load::wrk(t, wrk, Scenario::Http50, secs).await;
            }
            let _ = load::ws_echo(t, &t.plain(), 10, secs).await;
            let _ = load::tls_handshakes(t, 10, secs).await;
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

async fn reload_phase(p: &Progress, settings: &Settings, env: &Env<'_>, r: &mut Results) {
    for i in 0..r.targets.len() {
        let kind = r.targets[i].kind;
        let label = kind.label();
        p.say(&format!(
            "reload: {label}: {} changes in {:?} under load",
            settings.reload_changes, settings.reload_for
        ));
        let outcome = async {
            let mut t = env.start(kind).await?;
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
