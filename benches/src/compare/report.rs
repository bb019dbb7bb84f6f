//! The report: the machine, the command, and Markdown tables of medians per
//! target and scenario, the memory figures, the TLS figures with their
//! ratios to nginx and HAProxy, and the reload results.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::load::{Sample, Scenario};
use super::memory::Memory;
use super::plan::{Results, TargetResults};
use super::reload::{self, ReloadResult};
use super::targets::{Kind, Programs};
use super::{median, Mode};

/// Where and with what the numbers were taken.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// (program, version) for the balancer, nginx, HAProxy, wrk.
    pub versions: Vec<(String, String)>,
}

/// Reads `/proc` and asks each program for its version.
pub fn machine(programs: &Programs) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut m = Machine {
        cores: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, v)| v.trim().to_string()),
        memory_gib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        versions: Vec::new(),
    };
    if let Some(v) = version(&programs.balancer, "--version", |t| word(t, 1)) {
        m.versions.push(("balancer".into(), v));
    }
    if let Some(p) = &programs.nginx {
        let pick = |t: &str| t.split("nginx/").nth(1).and_then(|v| word(v, 0));
        if let Some(v) = version(p, "-v", pick) {
            m.versions.push(("nginx".into(), v));
        }
    }
    if let Some(p) = &programs.haproxy {
        if let Some(v) = version(p, "-v", |t| word(t, 2)) {
            m.versions.push(("HAProxy".into(), v));
        }
    }
    if let Some(p) = &programs.wrk {
        if let Some(v) = version(p, "--version", |t| word(t, 1)) {
            m.versions.push(("wrk".into(), v));
        }
    }
    m
}

/// The `n`-th word of a text.
fn word(text: &str, n: usize) -> Option<String> {
    text.split_whitespace().nth(n).map(str::to_string)
}

/// Runs `program arg` and picks the version out of its output.
fn version(program: &Path, arg: &str, pick: impl Fn(&str) -> Option<String>) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pick(&text)
}

impl Machine {
    /// `2 cores (AMD EPYC), 24 GiB, Linux 6.1.0`.
    pub fn hardware(&self) -> String {
        format!(
            "{} cores ({}), {:.0} GiB, Linux {}",
            self.cores, self.cpu_model, self.memory_gib, self.kernel
        )
    }

    /// `balancer 0.1.0, nginx 1.22.1, ...`.
    pub fn software(&self) -> String {
        let v: Vec<String> = self
            .versions
            .iter()
            .map(|(name, v)| format!("{name} {v}"))
            .collect();
        v.join(", ")
    }

    pub fn describe(&self) -> String {
        format!("{}; {}", self.hardware(), self.software())
    }
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `1234567.8` -> `1,234,568`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_string();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// A latency: `585 µs`, `1.37 ms`, `240 ms`; `–` when not measured.
pub fn latency(us: f64) -> String {
    if !us.is_finite() {
        "–".to_string()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 100_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.0} ms", us / 1000.0)
    }
}

fn one_decimal(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".to_string()
    }
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// Medians of one target's runs of one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Medians {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
    pub runs: usize,
    /// Some run had errors.
    pub errors: bool,
}

pub fn medians(t: &TargetResults, s: Scenario) -> Option<Medians> {
    let runs: &[Sample] = t.runs.get(&s)?;
    let col = |f: fn(&Sample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Some(Medians {
        rate: col(|x| x.rate)?,
        p50_us: col(|x| x.p50_us).unwrap_or(f64::NAN),
        p99_us: col(|x| x.p99_us).unwrap_or(f64::NAN),
        cpu_us: col(|x| x.cpu_us).unwrap_or(f64::NAN),
        runs: runs.len(),
        errors: runs.iter().any(|x| x.errors > 0),
    })
}

/// Rate, p50, p99, CPU cells (four `–` when not measured); `†` marks a
/// median over runs with errors.
fn load_cells(t: &TargetResults, s: Scenario) -> String {
    match medians(t, s) {
        Some(m) => format!(
            "{}{} | {} | {} | {}",
            thousands(m.rate),
            if m.errors { " †" } else { "" },
            latency(m.p50_us),
            latency(m.p99_us),
            one_decimal(m.cpu_us)
        ),
        None => "– | – | – | –".to_string(),
    }
}

fn memory_cell(m: Option<&Memory>) -> String {
    m.map_or_else(
        || "–".to_string(),
        |m| format!("{:.1} KiB", m.per_conn_kib()),
    )
}

fn reload_row(label: &str, r: &ReloadResult) -> String {
    format!(
        "| {label} | {} of {} | {} | **{}** | **{}** of {} | **{}** | {} / {} / {} |\n",
        r.reloads_logged,
        r.changes,
        thousands(r.http.ok as f64),
        r.http.failed,
        r.sessions_broken,
        r.sessions,
        r.procs_left(),
        r.procs_start,
        r.procs_end_open,
        r.procs_after_close
    )
}

/// One table with a group of columns (rate, p50, p99, CPU) per scenario
/// run; nothing if none of them was.
fn scenario_table(md: &mut String, r: &Results, groups: &[(Scenario, &str, &str)]) {
    let groups: Vec<_> = groups
        .iter()
        .filter(|(s, _, _)| r.scenarios.contains(s))
        .collect();
    if groups.is_empty() {
        return;
    }
    let mut head = String::from("| target |");
    let mut rule = String::from("|---|");
    for (_, rate, cpu) in &groups {
        let _ = write!(head, " {rate} | p50 | p99 | {cpu} |");
        rule.push_str("---:|---:|---:|---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for t in &r.targets {
        let mut row = format!("| {} |", t.kind.label());
        for (s, _, _) in &groups {
            let _ = write!(row, " {} |", load_cells(t, *s));
        }
        let _ = writeln!(md, "{row}");
    }
    md.push('\n');
}

/// `balancer / other`, `0.93x`; `–` when either is missing.
fn ratio(balancer: Option<f64>, other: Option<f64>) -> String {
    match (balancer, other) {
        (Some(b), Some(o)) if b.is_finite() && o.is_finite() && o != 0.0 => {
            format!("{:.2}x", b / o)
        }
        _ => "–".to_string(),
    }
}

/// Reads one figure from a target's results.
type Getter = Box<dyn Fn(&TargetResults) -> Option<f64>>;

/// One figure of the ratio table: its name, how to format it, and how to
/// read it.
type Figure<'a> = (&'a str, fn(f64) -> String, Getter);

/// The TLS tables: new connections, established connections, and every
/// TLS figure of the balancer divided by the same figure of each other
/// target.
fn tls_section(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "### TLS termination\n\n\
         Every proxy also listens on a TLS port with the same routes and the same ECDSA \
         P-256 certificate, generated when the run starts; the backends stay plaintext. \
         Settings: TLS 1.2 and 1.3, default ciphers, ALPN `h2` and `http/1.1`, session \
         cache and tickets on (balancer: `min_version = \"1.2\"`, `session_cache = 10000`, \
         `session_tickets = true`; nginx: `ssl_protocols TLSv1.2 TLSv1.3`, \
         `ssl_session_cache shared:SSL:10m`, `ssl_session_tickets on`; HAProxy: \
         `ssl-min-ver TLSv1.2`, `tune.ssl.cachesize 20000`, tickets on by default). Full \
         handshakes: {} clients of the harness (rustls, resumption off, ALPN `http/1.1`), \
         each opening a connection, doing a full handshake, sending one `GET /healthz` \
         with `Connection: close` and waiting for the proxy to close, in a loop; p50 and \
         p99 are of that whole loop. `Connection: close` with wrk: a new connection per \
         request too, but wrk (OpenSSL) resumes its previous session on each reconnect. \
         HTTPS keep-alive: wrk over `https://`. `wss://` echo: the WebSocket echo above \
         through the TLS port. CPU per handshake, request or message as above.\n",
        super::load::HANDSHAKE_CLIENTS
    );
    let _ = writeln!(md, "#### New connections, one request each\n");
    scenario_table(
        md,
        r,
        &[
            (
                Scenario::TlsHandshake,
                "full handshakes/s",
                "CPU µs/handshake",
            ),
            (
                Scenario::HttpsClose,
                "wrk `Connection: close` conns/s (resumed)",
                "CPU µs/conn",
            ),
        ],
    );
    let _ = writeln!(md, "#### Established connections\n");
    scenario_table(
        md,
        r,
        &[
            (Scenario::Https50, "HTTPS req/s, 50 conns", "CPU µs/req"),
            (
                Scenario::WssEcho,
                "wss:// msgs/s, 100 sockets",
                "CPU µs/msg",
            ),
        ],
    );
    let Some(balancer) = r.targets.iter().find(|t| t.kind == Kind::Balancer) else {
        return;
    };
    let others: Vec<&TargetResults> = r
        .targets
        .iter()
        .filter(|t| t.kind != Kind::Balancer)
        .collect();
    if others.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "#### The balancer against each, same run\n\n\
         The balancer's figure divided by the other target's: above 1x is better for a \
         rate, below 1x is better for CPU and memory.\n"
    );
    let mut head = String::from("| figure | balancer |");
    let mut rule = String::from("|---|---:|");
    for t in &others {
        let _ = write!(head, " / {} |", t.kind.label());
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    let rate = |s: Scenario| -> Getter { Box::new(move |t| medians(t, s).map(|m| m.rate)) };
    let cpu = |s: Scenario| -> Getter { Box::new(move |t| medians(t, s).map(|m| m.cpu_us)) };
    let kib = |x: f64| format!("{x:.1} KiB");
    let figures: Vec<Figure> = vec![
        ("full handshakes/s", thousands, rate(Scenario::TlsHandshake)),
        (
            "CPU µs per full handshake",
            one_decimal,
            cpu(Scenario::TlsHandshake),
        ),
        (
            "wrk `Connection: close` conns/s (resumed)",
            thousands,
            rate(Scenario::HttpsClose),
        ),
        (
            "CPU µs per resumed connection",
            one_decimal,
            cpu(Scenario::HttpsClose),
        ),
        ("HTTPS keep-alive req/s", thousands, rate(Scenario::Https50)),
        (
            "CPU µs per HTTPS request",
            one_decimal,
            cpu(Scenario::Https50),
        ),
        ("wss:// echo msgs/s", thousands, rate(Scenario::WssEcho)),
        (
            "CPU µs per wss:// message",
            one_decimal,
            cpu(Scenario::WssEcho),
        ),
        (
            "memory per idle wss:// tunnel",
            kib,
            Box::new(|t: &TargetResults| t.idle_wss.map(|m| m.per_conn_kib())),
        ),
    ];
    for (name, format, get) in &figures {
        let b = get(balancer);
        if b.is_none() {
            continue;
        }
        let mut row = format!("| {name} | {} |", b.map_or_else(|| "–".to_string(), format));
        for t in &others {
            let _ = write!(row, " {} |", ratio(b, get(t)));
        }
        let _ = writeln!(md, "{row}");
    }
    md.push('\n');
}

/// The whole report in Markdown (`###` headings, to sit under a `##`
/// section of docs/benchmarks.md).
pub fn markdown(r: &Results, machine: &Machine, command: &str) -> String {
    let st = &r.settings;
    let mut md = String::new();
    let runs = format!(
        "{} round{} of {} s per run",
        st.rounds,
        if st.rounds == 1 { "" } else { "s" },
        st.run.as_secs()
    );
    let _ = writeln!(md, "Command: `{command}`  ");
    let _ = writeln!(
        md,
        "Date: {}; the whole run took {}.  ",
        utc_date(r.started),
        minutes(r.elapsed)
    );
    let _ = writeln!(md, "Machine: {}.", machine.describe());
    md.push('\n');
    let _ = writeln!(
        md,
        "Every target proxies to the same two `backend` processes (round robin, \
         keep-alive to the backends, no access log), all on 127.0.0.1. Targets take \
         turns ({runs}, interleaved); the tables show medians. CPU is the user + system \
         time of the proxy's whole process tree over the run, per request or message. \
         The load generator runs on the same {} cores, so figures are relative, not \
         capacity.",
        machine.cores
    );
    md.push('\n');

    let http: Vec<Scenario> = r
        .scenarios
        .iter()
        .copied()
        .filter(|s| matches!(s, Scenario::Http50 | Scenario::Http1000))
        .collect();
    if !http.is_empty() {
        let client = if st.mode == Mode::Smoke {
            "the harness's keep-alive client"
        } else {
            "`wrk -t2 --latency`"
        };
        let _ = writeln!(md, "### HTTP keep-alive, `GET /healthz` ({client})\n");
        let mut head = String::from("| target |");
        let mut rule = String::from("|---|");
        for s in &http {
            let c = s.connections();
            let _ = write!(head, " req/s, {c} conns | p50 | p99 | CPU µs/req |");
            rule.push_str("---:|---:|---:|---:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for t in &r.targets {
            let mut row = format!("| {} |", t.kind.label());
            for s in &http {
                let _ = write!(row, " {} |", load_cells(t, *s));
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');
    }

    if r.scenarios.contains(&Scenario::WsEcho) {
        let _ = writeln!(
            md,
            "### WebSocket echo ({} sockets to `/ws`, each sends a small text message and \
             waits for its echo, in a loop)\n",
            super::load::WS_SOCKETS
        );
        let _ = writeln!(
            md,
            "| target | msgs/s | round trip p50 | p99 | CPU µs/msg |\n|---|---:|---:|---:|---:|"
        );
        for t in &r.targets {
            let _ = writeln!(
                md,
                "| {} | {} |",
                t.kind.label(),
                load_cells(t, Scenario::WsEcho)
            );
        }
        md.push('\n');
    }

    if st.idle > 0 {
        let _ = writeln!(
            md,
            "### Memory at {} idle connections\n\nRSS of the proxy's process tree (summed \
             `VmRSS`) before and after opening {} connections that each did one exchange and \
             then stay idle, divided by their number; a fresh proxy for each column.\n",
            thousands(st.idle as f64),
            thousands(st.idle as f64)
        );
        let _ = writeln!(
            md,
            "| target | RSS at rest | per idle keep-alive connection | per idle WebSocket tunnel \
             | per idle wss:// tunnel |\n|---|---:|---:|---:|---:|"
        );
        for t in &r.targets {
            let rest = t.idle_http.map_or_else(
                || "–".to_string(),
                |m| format!("{:.1} MiB", m.before_kib as f64 / 1024.0),
            );
            let _ = writeln!(
                md,
                "| {} | {rest} | {} | {} | {} |",
                t.kind.label(),
                memory_cell(t.idle_http.as_ref()),
                memory_cell(t.idle_ws.as_ref()),
                memory_cell(t.idle_wss.as_ref())
            );
        }
        md.push('\n');
    }

    if r.scenarios.iter().any(|s| s.is_tls()) {
        tls_section(&mut md, r);
    }

    if r.targets.iter().any(|t| t.reload.is_some()) {
        let _ = writeln!(
            md,
            "### Config reload under load ({} s, {} changes {:.1} s apart)\n\n\
             {} WebSocket sessions echo every 200 ms and {} keep-alive connections send \
             `GET /healthz` in a loop while the config changes (nginx: rewrite, SIGHUP; \
             HAProxy `-W`: rewrite, SIGUSR2; balancer: rewrite, it watches the file). A \
             failed request is a connection error, a reset or close before the response, or \
             a status other than 200; a broken session one that closed or errored before the \
             end. Processes: the size of the proxy's process tree at the start, near the end \
             with the sessions still open (old workers keep serving their tunnels), and 2 s \
             after the clients closed; left = after close - start.\n",
            st.reload_for.as_secs(),
            st.reload_changes,
            reload::EVERY.as_secs_f64(),
            reload::SESSIONS,
            reload::HTTP_CONNS
        );
        let _ = writeln!(
            md,
            "| target | reloads logged | HTTP ok | HTTP failed | WS sessions broken | \
             processes left | processes: start / end / after close |\n\
             |---|---:|---:|---:|---:|---:|---:|"
        );
        let mut reasons = String::new();
        for t in &r.targets {
            if let Some(rl) = &t.reload {
                md.push_str(&reload_row(&t.kind.label(), rl));
                for (why, n) in rl.http.reasons.iter() {
                    let _ = writeln!(reasons, "- {}: HTTP {n}x {why}", t.kind.label());
                }
                for (why, n) in &rl.broken_reasons {
                    let _ = writeln!(reasons, "- {}: session {n}x {why}", t.kind.label());
                }
            }
        }
        if !reasons.is_empty() {
            let _ = write!(md, "\nWhy requests failed and sessions broke:\n\n{reasons}");
        }
        md.push('\n');
    }

    if r.targets.iter().any(|t| {
        r.scenarios
            .iter()
            .any(|s| medians(t, *s).is_some_and(|m| m.errors))
    }) {
        let _ = writeln!(md, "† some runs had errors (listed below).\n");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "Notes:\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "**Failures:**\n");
        for f in &r.failures {
            let _ = writeln!(md, "- {}", f.replace('\n', " "));
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(-1500.0), "-1,500");
        assert_eq!(thousands(f64::NAN), "–");
        assert_eq!(latency(585.0), "585 µs");
        assert_eq!(latency(1370.0), "1.37 ms");
        assert_eq!(latency(250_000.0), "250 ms");
        assert_eq!(latency(f64::NAN), "–");
    }

    fn fake_results() -> Results {
        use super::super::targets::Kind;
        use super::super::{Mode, Settings};
        use std::collections::BTreeMap;
        let sample = |rate: f64, errors: u64| Sample {
            rate,
            p50_us: 900.0,
            p99_us: 2500.0,
            cpu_us: 17.0,
            ops: 1000,
            errors,
            error: None,
        };
        let mut runs = BTreeMap::new();
        runs.insert(
            Scenario::Http50,
            vec![sample(3.0, 0), sample(1.0, 0), sample(2.0, 1)],
        );
        runs.insert(Scenario::WsEcho, vec![sample(5.0, 0)]);
        let mem = Memory {
            n: 5000,
            before_kib: 10_240,
            after_kib: 15_240,
        };
        let mut reload = ReloadResult {
            changes: 5,
            reloads_logged: 5,
            sessions: 100,
            procs_start: 2,
            procs_end_open: 3,
            procs_after_close: 2,
            ..ReloadResult::default()
        };
        reload.http.ok = 1000;
        reload.http.failed = 3;
        reload
            .http
            .reasons
            .insert("request: connection reset".into(), 3);
        Results {
            settings: Settings::for_mode(Mode::Quick),
            targets: vec![TargetResults {
                kind: Kind::Nginx { workers: 1 },
                runs,
                idle_http: Some(mem),
                idle_ws: None,
                idle_wss: None,
                reload: Some(reload),
            }],
            scenarios: vec![Scenario::Http50, Scenario::WsEcho],
            failures: vec!["x failed\nbadly".into()],
            notes: Vec::new(),
            started: UNIX_EPOCH,
            elapsed: Duration::from_secs(75),
        }
    }

    #[test]
    fn markdown_tables_are_well_formed() {
        let md = markdown(&fake_results(), &Machine::default(), "compare --quick");
        let mut columns = None;
        for line in md.lines() {
            if line.starts_with('|') {
                let n = line.matches('|').count();
                assert_eq!(*columns.get_or_insert(n), n, "row {line:?} in\n{md}");
            } else {
                columns = None;
            }
        }
        assert!(
            md.contains("| nginx, 1 worker | 2 † | 900 µs | 2.50 ms | 17.0 |"),
            "{md}"
        );
        assert!(md.contains("| 1.0 KiB | – |"), "{md}");
        assert!(
            md.contains("| **3** | **0** of 100 | **0** | 2 / 3 / 2 |"),
            "{md}"
        );
        assert!(md.contains("- nginx, 1 worker: HTTP 3x request: connection reset"));
        assert!(md.contains("- x failed badly"));
        assert!(md.contains("took 1 min 15 s"));
    }

    #[test]
    fn tls_tables_and_ratios() {
        use super::super::targets::Kind;
        let mut r = fake_results();
        let tls_sample = |rate: f64, cpu_us: f64| Sample {
            rate,
            p50_us: 1000.0,
            p99_us: 3000.0,
            cpu_us,
            ops: 100,
            errors: 0,
            error: None,
        };
        let mut balancer = r.targets[0].clone();
        balancer.kind = Kind::Balancer;
        for (t, rate, cpu) in [
            (&mut balancer, 1500.0, 400.0),
            (&mut r.targets[0], 1000.0, 500.0),
        ] {
            t.runs
                .insert(Scenario::TlsHandshake, vec![tls_sample(rate, cpu)]);
            t.idle_wss = Some(Memory {
                n: 100,
                before_kib: 0,
                after_kib: rate as u64,
            });
        }
        r.targets.insert(0, balancer);
        r.scenarios.push(Scenario::TlsHandshake);
        let md = markdown(&r, &Machine::default(), "compare --quick");
        assert!(md.contains("### TLS termination"), "{md}");
        assert!(
            md.contains("| balancer | 1,500 | 1.00 ms | 3.00 ms | 400.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| figure | balancer | / nginx, 1 worker |"),
            "{md}"
        );
        assert!(md.contains("| full handshakes/s | 1,500 | 1.50x |"), "{md}");
        assert!(
            md.contains("| CPU µs per full handshake | 400.0 | 0.80x |"),
            "{md}"
        );
        assert!(
            md.contains("| memory per idle wss:// tunnel | 15.0 KiB | 1.50x |"),
            "{md}"
        );
        // Figures not measured get no row; the HTTPS table none at all.
        assert!(!md.contains("HTTPS keep-alive req/s"), "{md}");
        assert!(!md.contains("HTTPS req/s, 50 conns"), "{md}");
        let mut columns = None;
        for line in md.lines() {
            if line.starts_with('|') {
                let n = line.matches('|').count();
                assert_eq!(*columns.get_or_insert(n), n, "row {line:?} in\n{md}");
            } else {
                columns = None;
            }
        }
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_452_660);
        assert_eq!(utc_date(t), "2026-11-23 16:51 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_date(leap), "2000-02-29 00:00 UTC");
    }
}
