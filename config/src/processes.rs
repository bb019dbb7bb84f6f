//! `[pool.processes]`: the balancer runs a pool's backends itself.
//!
//! ```text
//!   [pool.processes] ──serde──▶ RawProcesses ──processes_from──▶ ProcessesConfig
//!                                                     │              (one InstanceConfig per instance:
//!                                                     │               id, address, argv, env resolved)
//!                                                     └──▶ the pool's backends: `{pool}-{index}` at host:port
//! ```
//!
//! Everything an instance needs is resolved here, when the file loads:
//! placeholders (`{port}`, `{id}`, `{index}`, `{pool}`, `{env:NAME}`), the
//! instance count (`"cores"`), ports and the stop signal. The balancer's
//! supervisor only spawns what this module wrote down, and a reload can
//! compare two `ProcessesConfig` values to know whether anything changed.
//! The generated backends go into [`crate::PoolConfig::backends`] like
//! listed ones, so policies, stickiness and health checks see no difference.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validate::{int_in, positive_duration};
use crate::ConfigError;

/// A `[[process]]` entry: one supervised program that is not a backend
/// (a local `redis-server`, a worker), with the same start, restart,
/// output and stop rules as an instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub name: String,
    pub command: Vec<String>,
    /// Its `{port}`; with one, it is ready once it accepts TCP there.
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub restart_delay: Option<String>,
    #[serde(default)]
    pub restart_delay_max: Option<String>,
    #[serde(default)]
    pub min_uptime: Option<String>,
    #[serde(default)]
    pub max_restarts: Option<i64>,
    #[serde(default)]
    pub restart_window: Option<String>,
    #[serde(default)]
    pub ready_timeout: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcesses {
    pub command: Vec<String>,
    /// An integer or `"cores"`: read as a value for a clear message.
    #[serde(default)]
    pub instances: Option<toml::Value>,
    pub base_port: i64,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub restart_delay: Option<String>,
    #[serde(default)]
    pub restart_delay_max: Option<String>,
    #[serde(default)]
    pub min_uptime: Option<String>,
    #[serde(default)]
    pub max_restarts: Option<i64>,
    #[serde(default)]
    pub restart_window: Option<String>,
    #[serde(default)]
    pub surge: Option<i64>,
    #[serde(default)]
    pub surge_port_offset: Option<i64>,
    #[serde(default)]
    pub drain_spread: Option<String>,
    #[serde(default)]
    pub drain_timeout: Option<String>,
    #[serde(default)]
    pub ready_timeout: Option<String>,
    #[serde(default)]
    pub max_memory: Option<i64>,
    #[serde(default)]
    pub max_memory_for: Option<String>,
    #[serde(default)]
    pub ready: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// A validated `[pool.processes]` table of pool `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessesConfig {
    pub pool: String,
    /// One per instance, index order; each is also a backend of the pool.
    pub instances: Vec<InstanceConfig>,
    /// Working directory of every instance; `None`: the balancer's.
    pub cwd: Option<PathBuf>,
    /// Sent to an instance's process group on a clean stop.
    pub stop_signal: StopSignal,
    /// How long an instance may take to exit after `stop_signal` before SIGKILL.
    pub stop_timeout: Duration,
    /// The first wait before a restart; doubles with each consecutive crash...
    pub restart_delay: Duration,
    /// ...up to this.
    pub restart_delay_max: Duration,
    /// An instance that ran this long before it exited starts the backoff over.
    pub min_uptime: Duration,
    /// Restarts allowed within `restart_window`; one more and the instance
    /// stays down (`failed`).
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Rolling restart: how many extra processes may run (0 or 1). With 1,
    /// an instance's replacement starts (on its other port) and is ready
    /// before the old process drains; with 0, the old one drains and stops
    /// first, and the replacement takes its port.
    pub surge: u32,
    /// With `surge = 1`, an instance alternates between its port and this
    /// much above it from one restart to the next.
    pub surge_port_offset: u16,
    /// When an instance drains (rolling restart, scaling down), its
    /// WebSocket clients get their Close frame spread over this window.
    pub drain_spread: Duration,
    /// After the spread, how long its requests in flight may take before
    /// the process gets `stop_signal` anyway.
    pub drain_timeout: Duration,
    /// How long a replacement may take to pass the pool's health check
    /// before the rolling restart gives up (and keeps the old process).
    pub ready_timeout: Duration,
    /// Resident memory (bytes) an instance may stay above for
    /// `max_memory_for` before it is replaced (gracefully: a rolling
    /// restart of that instance); `None`: no limit.
    pub max_memory: Option<u64>,
    pub max_memory_for: Duration,
    /// `ready = "line"`: an instance takes traffic only once it has also
    /// written the line `READY=1` on its stdout (for servers that must
    /// load something first, or have no HTTP to check).
    pub ready_line: bool,
    /// `user` (and `group`): who the processes run as; `None`: the
    /// balancer's own user.
    pub run_as: Option<RunAs>,
}

/// A user and group, looked up when the file loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// One instance, everything resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// 1-based.
    pub index: u32,
    /// `{pool}-{index}`: its backend id.
    pub id: String,
    /// Where it listens and the balancer connects.
    pub address: SocketAddr,
    /// The command line, placeholders expanded (no shell).
    pub argv: Vec<String>,
    /// Added to the balancer's environment, placeholders expanded.
    pub env: Vec<(String, String)>,
    /// The same at its surge port (`surge = 1` only): where its
    /// replacement runs during a rolling restart.
    pub spare: Option<Slot>,
}

/// Where one process of an instance listens, and its command line there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub address: SocketAddr,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl InstanceConfig {
    /// Slot 0 is its own port, slot 1 its surge port (when it has one).
    pub fn slot(&self, n: usize) -> Option<Slot> {
        match n {
            0 => Some(Slot {
                address: self.address,
                argv: self.argv.clone(),
                env: self.env.clone(),
            }),
            _ => self.spare.clone(),
        }
    }
}

/// The signals `stop_signal` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
}

impl StopSignal {
    pub const NAMES: &'static [&'static str] = &[
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SIGTERM" => Some(Self::Term),
            "SIGINT" => Some(Self::Int),
            "SIGQUIT" => Some(Self::Quit),
            "SIGHUP" => Some(Self::Hup),
            "SIGUSR1" => Some(Self::Usr1),
            "SIGUSR2" => Some(Self::Usr2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Int => "SIGINT",
            Self::Quit => "SIGQUIT",
            Self::Hup => "SIGHUP",
            Self::Usr1 => "SIGUSR1",
            Self::Usr2 => "SIGUSR2",
        }
    }
}

/// Most instances one pool may run.
pub const MAX_INSTANCES: i64 = 256;

/// What the placeholders of one instance stand for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vars<'a> {
    /// `None` for a `[[process]]` without a `port`.
    pub port: Option<u16>,
    pub id: &'a str,
    pub index: u32,
    pub pool: &'a str,
}

/// Expands the placeholders of `template`; `env` looks a variable up.
/// `{{` and `}}` are literal braces; anything else in braces is an error.
pub(crate) fn expand(
    template: &str,
    vars: &Vars<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched '}}' in {template:?} (write '}}}}' for a literal brace)"
            ));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "unclosed '{{' in {template:?} (write '{{{{' for a literal brace)"
                ));
            };
            let name = &tail[1..end];
            match name {
                "port" => match vars.port {
                    Some(port) => out.push_str(&port.to_string()),
                    None => return Err(format!(
                        "{{port}} in {template:?}, but this [[process]] has no port: set `port`"
                    )),
                },
                "id" => out.push_str(vars.id),
                "index" => out.push_str(&vars.index.to_string()),
                "pool" => out.push_str(vars.pool),
                _ => match name.strip_prefix("env:") {
                    Some(var) if !var.is_empty() => match env(var) {
                        Some(value) => out.push_str(&value),
                        None => {
                            return Err(format!(
                                "{{env:{var}}}: the environment variable {var} is not set"
                            ))
                        }
                    },
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} in {template:?} (expected {{port}}, {{id}}, {{index}}, {{pool}} or {{env:NAME}}; '{{{{' and '}}}}' for literal braces)"
                        ))
                    }
                },
            }
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Validates the `[pool.processes]` table at `path` (`pool[0].processes`)
/// of pool `pool`, looking `{env:NAME}` up in the balancer's environment.
pub(crate) fn processes_from(
    e: &mut Vec<ConfigError>,
    path: &str,
    pool: &str,
    raw: RawProcesses,
) -> Option<ProcessesConfig> {
    processes_with_env(e, path, pool, raw, &|name| std::env::var(name).ok())
}

pub(crate) fn processes_with_env(
    e: &mut Vec<ConfigError>,
    path: &str,
    pool: &str,
    raw: RawProcesses,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProcessesConfig> {
    table_from(e, path, pool, Layout::Pool, raw, env)
}

/// Validates the `[[process]]` entry at `path` (`process[0]`); its one
/// instance has the entry's name as its id.
pub(crate) fn process_from(
    e: &mut Vec<ConfigError>,
    path: &str,
    raw: RawProcess,
) -> Option<ProcessesConfig> {
    let has_port = raw.port.is_some();
    let table = RawProcesses {
        command: raw.command,
        instances: None,
        base_port: raw.port.unwrap_or(1),
        host: raw.host,
        cwd: raw.cwd,
        env: raw.env,
        stop_signal: raw.stop_signal,
        stop_timeout: raw.stop_timeout,
        restart_delay: raw.restart_delay,
        restart_delay_max: raw.restart_delay_max,
        min_uptime: raw.min_uptime,
        max_restarts: raw.max_restarts,
        restart_window: raw.restart_window,
        surge: Some(0),
        surge_port_offset: None,
        drain_spread: None,
        drain_timeout: None,
        ready_timeout: raw.ready_timeout,
        max_memory: None,
        max_memory_for: None,
        ready: None,
        user: raw.user,
        group: raw.group,
    };
    let env = |name: &str| std::env::var(name).ok();
    table_from(
        e,
        path,
        &raw.name,
        Layout::Process { has_port },
        table,
        &env,
    )
}

/// A `[pool.processes]` table or a `[[process]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Pool,
    Process { has_port: bool },
}

fn table_from(
    e: &mut Vec<ConfigError>,
    path: &str,
    pool: &str,
    layout: Layout,
    raw: RawProcesses,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProcessesConfig> {
    let before = e.len();
    let (count, port_key) = match layout {
        Layout::Pool => (
            instances(e, &format!("{path}.instances"), raw.instances.as_ref()),
            "base_port",
        ),
        Layout::Process { .. } => (1, "port"),
    };
    let host = match raw.host.as_deref() {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(h) => h.parse::<IpAddr>().unwrap_or_else(|_| {
            e.push(ConfigError::new(
                format!("{path}.host"),
                format!("invalid address {h:?} (expected an IP address, e.g. 127.0.0.1 or ::1)"),
            ));
            IpAddr::from([127, 0, 0, 1])
        }),
    };
    let base_port = if (1..=65_535).contains(&raw.base_port) {
        raw.base_port as u16
    } else {
        e.push(ConfigError::new(
            format!("{path}.{port_key}"),
            format!("{} is out of range (1 to 65535)", raw.base_port),
        ));
        1
    };
    let has_port = layout != Layout::Process { has_port: false };
    if i64::from(base_port) + i64::from(count) - 1 > 65_535 {
        e.push(ConfigError::new(
            format!("{path}.base_port"),
            format!(
                "{count} instances from port {base_port} end at {}, past 65535",
                i64::from(base_port) + i64::from(count) - 1
            ),
        ));
    }

    if raw.command.is_empty() || raw.command[0].is_empty() {
        e.push(ConfigError::new(
            format!("{path}.command"),
            "needs the program to run, then its arguments, e.g. [\"target/release/backend\", \"--listen\", \"127.0.0.1:{port}\"]",
        ));
    }
    let id_of = |index: u32| match layout {
        Layout::Pool => format!("{pool}-{index}"),
        Layout::Process { .. } => pool.to_string(),
    };
    let first_id = id_of(1);
    let first = Vars {
        port: has_port.then_some(base_port),
        id: &first_id,
        index: 1,
        pool,
    };
    // Placeholders are checked once, on the first instance: the others
    // differ only in the values, so they expand the same way.
    for (i, arg) in raw.command.iter().enumerate() {
        let key = format!("{path}.command[{i}]");
        if arg.contains('\0') {
            e.push(ConfigError::new(&key, "contains a NUL byte"));
        } else if let Err(msg) = expand(arg, &first, env) {
            e.push(ConfigError::new(key, msg));
        }
    }
    for (name, value) in &raw.env {
        let key = format!("{path}.env.{name}");
        if name.is_empty() || name.contains(['=', '\0']) {
            e.push(ConfigError::new(
                &key,
                "invalid variable name (non-empty, no '=' or NUL)",
            ));
        }
        if value.contains('\0') {
            e.push(ConfigError::new(&key, "contains a NUL byte"));
        } else if let Err(msg) = expand(value, &first, env) {
            e.push(ConfigError::new(key, msg));
        }
    }
    let cwd = raw.cwd.as_deref().and_then(|c| {
        if c.is_empty() || c.contains('\0') {
            e.push(ConfigError::new(
                format!("{path}.cwd"),
                "must be a directory path (non-empty, no NUL)",
            ));
            None
        } else {
            Some(PathBuf::from(c))
        }
    });
    let stop_signal = match raw.stop_signal.as_deref() {
        None => StopSignal::Term,
        Some(name) => StopSignal::from_name(name).unwrap_or_else(|| {
            e.push(ConfigError::new(
                format!("{path}.stop_signal"),
                format!(
                    "unknown stop signal {name:?} (expected one of: {})",
                    StopSignal::NAMES.join(", ")
                ),
            ));
            StopSignal::Term
        }),
    };
    let mut dur = |key: &str, v: Option<&str>, default: Duration| match v {
        None => default,
        Some(v) => positive_duration(e, &format!("{path}.{key}"), v).unwrap_or(default),
    };
    let stop_timeout = dur(
        "stop_timeout",
        raw.stop_timeout.as_deref(),
        DEFAULT_STOP_TIMEOUT,
    );
    let restart_delay = dur(
        "restart_delay",
        raw.restart_delay.as_deref(),
        DEFAULT_RESTART_DELAY,
    );
    let restart_delay_max = dur(
        "restart_delay_max",
        raw.restart_delay_max.as_deref(),
        DEFAULT_RESTART_DELAY_MAX,
    );
    let min_uptime = dur("min_uptime", raw.min_uptime.as_deref(), DEFAULT_MIN_UPTIME);
    let restart_window = dur(
        "restart_window",
        raw.restart_window.as_deref(),
        DEFAULT_RESTART_WINDOW,
    );
    let drain_timeout = dur(
        "drain_timeout",
        raw.drain_timeout.as_deref(),
        DEFAULT_DRAIN_TIMEOUT,
    );
    let ready_timeout = dur(
        "ready_timeout",
        raw.ready_timeout.as_deref(),
        DEFAULT_READY_TIMEOUT,
    );
    let max_memory_for = dur(
        "max_memory_for",
        raw.max_memory_for.as_deref(),
        DEFAULT_MAX_MEMORY_FOR,
    );
    if restart_delay_max < restart_delay {
        e.push(ConfigError::new(
            format!("{path}.restart_delay_max"),
            format!("must not be shorter than restart_delay ({restart_delay:?})"),
        ));
    }
    let max_restarts = int_in(
        e,
        &format!("{path}.max_restarts"),
        raw.max_restarts,
        0..=10_000,
        i64::from(DEFAULT_MAX_RESTARTS),
    ) as u32;
    let surge = int_in(e, &format!("{path}.surge"), raw.surge, 0..=1, 1) as u32;
    let run_as = run_as(e, path, raw.user.as_deref(), raw.group.as_deref());
    let ready_line = match raw.ready.as_deref() {
        None | Some("health") => false,
        Some("line") => true,
        Some(other) => {
            e.push(ConfigError::new(
                format!("{path}.ready"),
                format!("unknown value {other:?} (expected \"health\": the pool's check, or \"line\": the check once it printed READY=1)"),
            ));
            false
        }
    };
    let max_memory = raw.max_memory.map(|_| {
        int_in(
            e,
            &format!("{path}.max_memory"),
            raw.max_memory,
            1_048_576..=1 << 50,
            0,
        ) as u64
    });
    let surge_port_offset = int_in(
        e,
        &format!("{path}.surge_port_offset"),
        raw.surge_port_offset,
        1..=65_534,
        i64::from(DEFAULT_SURGE_PORT_OFFSET),
    ) as u16;
    if surge == 1 {
        let last = i64::from(base_port) + i64::from(surge_port_offset) + i64::from(count) - 1;
        if surge_port_offset < count as u16 {
            e.push(ConfigError::new(
                format!("{path}.surge_port_offset"),
                format!("{surge_port_offset} is less than instances ({count}): the surge ports would overlap the instances' own"),
            ));
        } else if last > 65_535 {
            e.push(ConfigError::new(
                format!("{path}.surge_port_offset"),
                format!("the surge ports of {count} instances from port {base_port} end at {last}, past 65535 (or set surge = 0)"),
            ));
        }
    }
    let drain_spread = match raw.drain_spread.as_deref() {
        None => DEFAULT_DRAIN_SPREAD,
        Some(v) => crate::duration::parse(v).unwrap_or_else(|msg| {
            e.push(ConfigError::new(format!("{path}.drain_spread"), msg));
            DEFAULT_DRAIN_SPREAD
        }),
    };

    if e.len() != before {
        return None;
    }
    let instances = (1..=count)
        .map(|index| {
            let port = base_port + (index - 1) as u16;
            let id = id_of(index);
            let vars = Vars {
                port: has_port.then_some(port),
                id: &id,
                index,
                pool,
            };
            // Checked above on the first instance; the same templates
            // cannot fail on another.
            let slot = |port: u16| {
                let vars = Vars {
                    port: has_port.then_some(port),
                    ..vars
                };
                let x = |t: &str| expand(t, &vars, env).unwrap_or_default();
                Slot {
                    address: SocketAddr::new(host, if has_port { port } else { 0 }),
                    argv: raw.command.iter().map(|a| x(a)).collect(),
                    env: raw.env.iter().map(|(k, v)| (k.clone(), x(v))).collect(),
                }
            };
            let home = slot(port);
            InstanceConfig {
                index,
                address: home.address,
                argv: home.argv,
                env: home.env,
                spare: (surge == 1).then(|| slot(port + surge_port_offset)),
                id,
            }
        })
        .collect();
    Some(ProcessesConfig {
        pool: pool.to_string(),
        instances,
        cwd,
        stop_signal,
        stop_timeout,
        restart_delay,
        restart_delay_max,
        min_uptime,
        max_restarts,
        restart_window,
        surge,
        surge_port_offset,
        drain_spread,
        drain_timeout,
        ready_timeout,
        max_memory,
        max_memory_for,
        ready_line,
        run_as,
    })
}

/// `user` and `group`: names (or numbers) looked up in `/etc/passwd` and
/// `/etc/group`; the group defaults to the user's own.
fn run_as(
    e: &mut Vec<ConfigError>,
    path: &str,
    user: Option<&str>,
    group: Option<&str>,
) -> Option<RunAs> {
    let Some(user) = user else {
        if group.is_some() {
            e.push(ConfigError::new(
                format!("{path}.group"),
                "needs `user` (the group of the user the processes run as)",
            ));
        }
        return None;
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((uid, own_gid)) = lookup(&passwd, user)
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
    else {
        e.push(ConfigError::new(
            format!("{path}.user"),
            format!("no user {user:?} in /etc/passwd"),
        ));
        return None;
    };
    let gid = match group {
        None => own_gid,
        Some(g) => {
            let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
            match lookup(&groups, g).and_then(|f| f.get(2)?.parse().ok()) {
                Some(gid) => gid,
                None => {
                    e.push(ConfigError::new(
                        format!("{path}.group"),
                        format!("no group {g:?} in /etc/group"),
                    ));
                    return None;
                }
            }
        }
    };
    Some(RunAs {
        user: user.to_string(),
        uid,
        gid,
    })
}

/// The `:`-separated fields of the line of `file` (passwd or group format)
/// whose name, or number, is `key`.
fn lookup<'a>(file: &'a str, key: &str) -> Option<Vec<&'a str>> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == key || f[2] == key))
}

/// `instances`: 1 to 256, or `"cores"`.
fn instances(e: &mut Vec<ConfigError>, path: &str, v: Option<&toml::Value>) -> u32 {
    let bad = |e: &mut Vec<ConfigError>, what: String| {
        e.push(ConfigError::new(
            path,
            format!("{what}: expected a number from 1 to {MAX_INSTANCES}, or \"cores\""),
        ));
        1
    };
    match v {
        None => 1,
        Some(toml::Value::Integer(n)) if (1..=MAX_INSTANCES).contains(n) => *n as u32,
        Some(toml::Value::Integer(n)) => bad(e, format!("{n} is out of range")),
        Some(toml::Value::String(s)) if s == "cores" => std::thread::available_parallelism()
            .map_or(1, |n| n.get().min(MAX_INSTANCES as usize))
            as u32,
        Some(other) => bad(e, format!("invalid value {other}")),
    }
}

/// Two addresses that cannot both listen: same port, and the same IP or
/// one of them a wildcard.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An address a supervised instance must not share, and whose it is.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// Key path of the owner, for the message (`pool[1].backend[0].address`).
    pub owner: String,
    pub address: SocketAddr,
}

/// Every supervised port must be free of every other supervised pool's
/// ports, of listed backends and of listeners: errors at `path.base_port`.
pub(crate) fn check_ports(
    e: &mut Vec<ConfigError>,
    supervised: &[(String, &ProcessesConfig)],
    taken: &[Taken],
) {
    // A `[[process]]` without a port listens nowhere the balancer knows.
    let supervised: Vec<&(String, &ProcessesConfig)> = supervised
        .iter()
        .filter(|(_, p)| p.instances.iter().all(|i| i.address.port() != 0))
        .collect();
    for (i, (path, p)) in supervised.iter().enumerate() {
        let others = supervised[..i].iter().flat_map(|(other_path, o)| {
            addresses(o).map(move |(id, address, spare)| Taken {
                owner: format!(
                    "{other_path} ({id}{})",
                    if spare { ", surge port" } else { "" }
                ),
                address,
            })
        });
        let hit = taken.iter().cloned().chain(others).find_map(|t| {
            addresses(p)
                .find(|(_, address, _)| clash(*address, t.address))
                .map(|inst| (inst, t))
        });
        if let Some(((id, address, spare), t)) = hit {
            let (key, what) = if spare {
                ("surge_port_offset", "its replacement")
            } else if path.starts_with("process[") {
                ("port", "process")
            } else {
                ("base_port", "instance")
            };
            e.push(ConfigError::new(
                format!("{path}.{key}"),
                format!(
                    "{what} {id} would listen on {address}, which {} uses already",
                    t.owner
                ),
            ));
        }
    }
}

/// Every address the instances of `p` may listen on: (id, address, whether
/// it is a surge port).
fn addresses(p: &ProcessesConfig) -> impl Iterator<Item = (&str, SocketAddr, bool)> {
    p.instances.iter().flat_map(|inst| {
        std::iter::once((inst.id.as_str(), inst.address, false)).chain(
            inst.spare
                .as_ref()
                .map(|s| (inst.id.as_str(), s.address, true)),
        )
    })
}

/// Default for `processes.surge_port_offset`: past the most instances a
/// pool may have, so scaling up never lands on a surge port.
pub const DEFAULT_SURGE_PORT_OFFSET: u16 = MAX_INSTANCES as u16;
/// Default for `processes.drain_spread`.
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(5);
/// Default for `processes.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `processes.max_memory_for`.
pub const DEFAULT_MAX_MEMORY_FOR: Duration = Duration::from_secs(10);
/// Default for `processes.ready_timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `processes.stop_timeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `processes.restart_delay`.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(100);
/// Default for `processes.restart_delay_max`.
pub const DEFAULT_RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// Default for `processes.min_uptime`.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(5);
/// Default for `processes.max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 10;
/// Default for `processes.restart_window`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_exactly;

    use crate::testing::rejected as errors;

    /// A file with one supervised pool whose `[pool.processes]` table is
    /// `table` (the lines after the header), plus `extra`.
    fn file(table: &str, extra: &str) -> String {
        format!(
            "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"game\"\n\
             [pool.processes]\n{table}\n\
             [pool.health]\npath = \"/healthz\"\n\
             {extra}\n\
             [[route]]\nlistener = \"public\"\npool = \"game\"\n"
        )
    }

    const MINIMAL: &str = "command = [\"backend\", \"--listen\", \"127.0.0.1:{port}\", \"--id\", \"{id}\"]\nbase_port = 9001\ninstances = 2";

    fn vars() -> Vars<'static> {
        Vars {
            port: Some(9002),
            id: "game-2",
            index: 2,
            pool: "game",
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "REDIS_URL").then(|| "redis://127.0.0.1:6379".to_string())
    }

    #[test]
    fn expands_every_placeholder_and_literal_braces() {
        let x = |t: &str| expand(t, &vars(), &env);
        assert_eq!(x("127.0.0.1:{port}").unwrap(), "127.0.0.1:9002");
        assert_eq!(
            x("{pool}/{id}/{index}").unwrap(),
            "game/game-2/2".to_string()
        );
        assert_eq!(x("{env:REDIS_URL}").unwrap(), "redis://127.0.0.1:6379");
        assert_eq!(x("{{\"a\": {index}}}").unwrap(), "{\"a\": 2}");
        assert_eq!(x("plain").unwrap(), "plain");
        assert_eq!(x("").unwrap(), "");
    }

    #[test]
    fn refuses_unknown_and_broken_placeholders() {
        let x = |t: &str| expand(t, &vars(), &env).unwrap_err();
        assert!(x("{host}").contains("unknown placeholder {host}"));
        assert!(x("{env:}").contains("unknown placeholder {env:}"));
        assert!(x("{port").contains("unclosed '{'"));
        assert!(x("a}b").contains("unmatched '}'"));
        assert!(x("{env:NOPE}").contains("NOPE is not set"));
    }

    #[test]
    fn a_supervised_pool_becomes_backends_with_stable_ids() {
        let c = crate::parse(&file(MINIMAL, "")).unwrap();
        let pool = &c.pools[0];
        let ids: Vec<&str> = pool.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["game-1", "game-2"]);
        assert_eq!(pool.backends[1].address.to_string(), "127.0.0.1:9002");
        assert!(pool.backends.iter().all(|b| b.weight == 1));
        let p = &c.processes[0];
        assert_eq!(p.pool, "game");
        assert_eq!(
            p.instances[1].argv,
            ["backend", "--listen", "127.0.0.1:9002", "--id", "game-2"]
        );
        // Defaults.
        assert_eq!(p.stop_signal, StopSignal::Term);
        assert_eq!(p.stop_timeout, Duration::from_secs(10));
        assert_eq!(p.restart_delay, Duration::from_millis(100));
        assert_eq!(p.restart_delay_max, Duration::from_secs(30));
        assert_eq!(p.min_uptime, Duration::from_secs(5));
        assert_eq!(p.max_restarts, 10);
        assert_eq!(p.restart_window, Duration::from_secs(60));
        assert_eq!(p.cwd, None);
        assert!(p.instances[0].env.is_empty());
        assert_eq!(p.surge, 1);
        assert_eq!(p.surge_port_offset, 256);
        assert_eq!(p.drain_spread, Duration::from_secs(5));
        assert_eq!(p.drain_timeout, Duration::from_secs(30));
        assert_eq!(p.ready_timeout, Duration::from_secs(60));
        assert_eq!(p.max_memory, None);
        assert!(!p.ready_line);
        assert_eq!(p.run_as, None);
        assert_eq!(p.max_memory_for, Duration::from_secs(10));
        // Its replacement's slot: the surge port, expanded the same way.
        let spare = p.instances[1].spare.as_ref().unwrap();
        assert_eq!(spare.address.to_string(), "127.0.0.1:9258");
        assert_eq!(
            spare.argv,
            ["backend", "--listen", "127.0.0.1:9258", "--id", "game-2"]
        );
        assert_eq!(p.instances[1].slot(1).as_ref(), Some(spare));
        assert_eq!(
            p.instances[1].slot(0).unwrap().address,
            p.instances[1].address
        );
    }

    #[test]
    fn rolling_restart_keys() {
        let c = crate::parse(&file(
            &format!("{MINIMAL}\nsurge = 0\ndrain_spread = \"0s\"\ndrain_timeout = \"2s\"\nready_timeout = \"3s\"\nmax_memory = 268435456\nmax_memory_for = \"1m\"\nready = \"line\""),
            "",
        ))
        .unwrap();
        let p = &c.processes[0];
        assert_eq!(p.surge, 0);
        assert_eq!(p.drain_spread, Duration::ZERO);
        assert_eq!(p.drain_timeout, Duration::from_secs(2));
        assert_eq!(p.ready_timeout, Duration::from_secs(3));
        assert_eq!(p.max_memory, Some(256 << 20));
        assert!(p.ready_line);
        assert_eq!(p.max_memory_for, Duration::from_secs(60));
        assert!(p
            .instances
            .iter()
            .all(|i| i.spare.is_none() && i.slot(1).is_none()));
        let c = crate::parse(&file(&format!("{MINIMAL}\nsurge_port_offset = 2"), "")).unwrap();
        assert_eq!(
            c.processes[0].instances[0]
                .spare
                .as_ref()
                .unwrap()
                .address
                .to_string(),
            "127.0.0.1:9003"
        );

        let errs = errors(&file(
            &format!("{MINIMAL}\nsurge = 2\ndrain_spread = \"soon\"\ndrain_timeout = \"0s\"\nready_timeout = \"x\"\nmax_memory = 1000\nmax_memory_for = \"0s\"\nready = \"soon\""),
            "",
        ));
        assert_exactly(
            &errs,
            &[
                "pool[0].processes.surge: 2 is out of range (0 to 1)",
                "pool[0].processes.drain_spread: invalid duration \"soon\"",
                "pool[0].processes.drain_timeout: must be longer than zero",
                "pool[0].processes.ready_timeout: invalid duration \"x\"",
                "pool[0].processes.max_memory: 1000 is out of range (1048576 to 1125899906842624)",
                "pool[0].processes.max_memory_for: must be longer than zero",
                "pool[0].processes.ready: unknown value \"soon\"",
            ],
        );
        let errs = errors(&file(&format!("{MINIMAL}\nsurge_port_offset = 1"), ""));
        assert_eq!(
            errs,
            ["pool[0].processes.surge_port_offset: 1 is less than instances (2): the surge ports would overlap the instances' own"]
        );
        let errs = errors(&file(&format!("{MINIMAL}\nsurge_port_offset = 0"), ""));
        assert_eq!(
            errs,
            ["pool[0].processes.surge_port_offset: 0 is out of range (1 to 65534)"]
        );
        let errs = errors(&file(&MINIMAL.replace("9001", "65400"), ""));
        assert_eq!(
            errs,
            ["pool[0].processes.surge_port_offset: the surge ports of 2 instances from port 65400 end at 65657, past 65535 (or set surge = 0)"]
        );
        // A surge port is a port like the others: here a listener has it.
        let errs = errors(
            &file(MINIMAL, "").replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:9258\""),
        );
        assert_eq!(
            errs,
            ["pool[0].processes.surge_port_offset: its replacement game-2 would listen on 127.0.0.1:9258, which listener \"public\" uses already"]
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = crate::parse(&file(
            "command = [\"backend\"]\ninstances = 3\nbase_port = 7000\nhost = \"::1\"\n\
             cwd = \"/srv/game\"\nenv = { PORT = \"{port}\", MODE = \"prod\" }\n\
             stop_signal = \"SIGINT\"\nstop_timeout = \"2s\"\nrestart_delay = \"50ms\"\n\
             restart_delay_max = \"1s\"\nmin_uptime = \"1s\"\nmax_restarts = 0\nrestart_window = \"5m\"",
            "",
        ))
        .unwrap();
        let p = &c.processes[0];
        assert_eq!(p.instances.len(), 3);
        assert_eq!(p.instances[2].address.to_string(), "[::1]:7002");
        assert_eq!(
            p.instances[2].env,
            [
                ("MODE".to_string(), "prod".to_string()),
                ("PORT".to_string(), "7002".to_string())
            ]
        );
        assert_eq!(p.cwd.as_deref(), Some(std::path::Path::new("/srv/game")));
        assert_eq!(p.stop_signal, StopSignal::Int);
        assert_eq!(p.stop_timeout, Duration::from_secs(2));
        assert_eq!(p.restart_delay, Duration::from_millis(50));
        assert_eq!(p.restart_delay_max, Duration::from_secs(1));
        assert_eq!(p.min_uptime, Duration::from_secs(1));
        assert_eq!(p.max_restarts, 0);
        assert_eq!(p.restart_window, Duration::from_secs(300));
    }

    #[test]
    fn cores_is_the_number_of_cpus() {
        let c = crate::parse(&file(
            "command = [\"backend\"]\ninstances = \"cores\"\nbase_port = 9001",
            "",
        ))
        .unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.processes[0].instances.len(), cores);
    }

    #[test]
    fn env_placeholders_read_the_environment_when_the_file_loads() {
        // PATH is set wherever tests run; the other name nowhere.
        let c = crate::parse(&file(
            "command = [\"backend\", \"{env:PATH}\"]\nbase_port = 9001",
            "",
        ))
        .unwrap();
        assert_eq!(
            c.processes[0].instances[0].argv[1],
            std::env::var("PATH").unwrap()
        );
        let errs = errors(&file(
            "command = [\"backend\", \"--redis\", \"{env:LB_TEST_UNSET_VARIABLE_16}\"]\nbase_port = 9001",
            "",
        ));
        assert_eq!(
            errs,
            ["pool[0].processes.command[2]: {env:LB_TEST_UNSET_VARIABLE_16}: the environment variable LB_TEST_UNSET_VARIABLE_16 is not set"]
        );
    }

    #[test]
    fn reports_every_bad_key_with_its_path() {
        let errs = errors(&file(
            "command = [\"backend\", \"{nope}\", \"a}\"]\ninstances = 0\nbase_port = 70000\nhost = \"localhost\"\n\
             cwd = \"\"\nenv = { \"A=B\" = \"x\", OK = \"{port\" }\n\
             stop_signal = \"SIGKILL\"\nstop_timeout = \"0s\"\nrestart_delay = \"2s\"\n\
             restart_delay_max = \"1s\"\nmin_uptime = \"soon\"\nmax_restarts = -1\nrestart_window = \"1 fortnight\"",
            "",
        ));
        let expect = [
            "pool[0].processes.instances: 0 is out of range: expected a number from 1 to 256, or \"cores\"",
            "pool[0].processes.host: invalid address \"localhost\"",
            "pool[0].processes.base_port: 70000 is out of range (1 to 65535)",
            "pool[0].processes.command[1]: unknown placeholder {nope}",
            "pool[0].processes.command[2]: unmatched '}'",
            "pool[0].processes.env.A=B: invalid variable name",
            "pool[0].processes.env.OK: unclosed '{'",
            "pool[0].processes.cwd: must be a directory path",
            "pool[0].processes.stop_signal: unknown stop signal \"SIGKILL\"",
            "pool[0].processes.stop_timeout: must be longer than zero",
            "pool[0].processes.min_uptime: invalid duration \"soon\"",
            "pool[0].processes.restart_window: invalid duration \"1 fortnight\"",
            "pool[0].processes.restart_delay_max: must not be shorter than restart_delay",
            "pool[0].processes.max_restarts: -1 is out of range (0 to 10000)",
        ];
        assert_exactly(&errs, &expect);
    }

    #[test]
    fn shape_errors_name_the_key() {
        let errs = errors(&file("base_port = 9001", ""));
        assert_eq!(errs, ["pool[0].processes: missing field `command`"]);
        let errs = errors(&file("command = []\nbase_port = 9001", ""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("pool[0].processes.command: needs the program"));
        let errs = errors(&file(
            "command = \"backend --listen\"\nbase_port = 9001",
            "",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("pool[0].processes.command: invalid type"),
            "{errs:?}"
        );
        let errs = errors(&file("command = [\"b\"]\nbase_port = 9001\nuid = 5", ""));
        assert!(
            errs[0].starts_with("pool[0].processes.uid: unknown field `uid`"),
            "{errs:?}"
        );
        let errs = errors(&file(
            "command = [\"b\"]\nbase_port = 9001\ninstances = \"all\"",
            "",
        ));
        assert_eq!(
            errs,
            ["pool[0].processes.instances: invalid value \"all\": expected a number from 1 to 256, or \"cores\""]
        );
        let errs = errors(&file(
            "command = [\"b\"]\nbase_port = 65535\ninstances = 2\nsurge = 0",
            "",
        ));
        assert_eq!(
            errs,
            ["pool[0].processes.base_port: 2 instances from port 65535 end at 65536, past 65535"]
        );
    }

    #[test]
    fn needs_health_and_no_listed_backends() {
        let no_health = "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"game\"\n[pool.processes]\ncommand = [\"b\"]\nbase_port = 9001\n";
        let errs = errors(no_health);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("pool[0].health: a pool with [pool.processes] needs a [pool.health] table: an instance takes traffic only after the pool's health check passes"),
            "{errs:?}"
        );
        let errs = errors(&file(
            "command = [\"b\"]\nbase_port = 9001\n[[pool.backend]]\nid = \"x\"\naddress = \"127.0.0.1:8000\"",
            "",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "pool[0].backend: a pool with [pool.processes] gets its backends from it"
            ),
            "{errs:?}"
        );
        let errs = errors(&file(MINIMAL, "assume_up = true"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("pool[0].health.assume_up: not with [pool.processes]"));
    }

    #[test]
    fn ports_must_not_collide() {
        // With another supervised pool on the same host.
        let two = format!(
            "{}[[pool]]\nname = \"lobby\"\n[pool.processes]\ncommand = [\"b\"]\nbase_port = 9002\n\
             [pool.health]\npath = \"/healthz\"\n",
            file(MINIMAL, "")
        );
        let errs = errors(&two);
        assert_eq!(
            errs,
            ["pool[1].processes.base_port: instance lobby-1 would listen on 127.0.0.1:9002, which pool[0].processes (game-2) uses already"]
        );
        // Another host is fine.
        crate::parse(&two.replace("base_port = 9002", "base_port = 9002\nhost = \"127.0.0.2\""))
            .unwrap();
        // With a listed backend, and with a listener.
        let listed = format!(
            "{}[[pool]]\nname = \"lobby\"\n[[pool.backend]]\nid = \"x\"\naddress = \"127.0.0.1:9001\"\n",
            file(MINIMAL, "")
        );
        let errs = errors(&listed);
        assert_eq!(
            errs,
            ["pool[0].processes.base_port: instance game-1 would listen on 127.0.0.1:9001, which pool[1].backend[0].address uses already"]
        );
        let errs = errors(
            &file(MINIMAL, "").replace("address = \"127.0.0.1:0\"", "address = \"0.0.0.0:9002\""),
        );
        assert_eq!(
            errs,
            ["pool[0].processes.base_port: instance game-2 would listen on 127.0.0.1:9002, which listener \"public\" uses already"]
        );
    }

    /// `file(MINIMAL, "")` with `[[process]]` entries after it.
    fn with_process(entries: &str) -> String {
        format!("{}{entries}", file(MINIMAL, ""))
    }

    #[test]
    fn a_process_entry_is_one_instance_named_after_it() {
        let c = crate::parse(&with_process(
            "[[process]]\nname = \"redis\"\ncommand = [\"redis-server\", \"--port\", \"{port}\", \"--save\", \"\"]\nport = 6390\n\
             stop_signal = \"SIGINT\"\nready_timeout = \"5s\"\n\
             [[process]]\nname = \"worker\"\ncommand = [\"worker\", \"--name\", \"{id}\"]\nenv = { QUEUE = \"{pool}\" }\n",
        ))
        .unwrap();
        assert_eq!(c.services.len(), 2);
        let redis = &c.services[0];
        assert_eq!(redis.pool, "redis");
        assert_eq!(redis.instances.len(), 1);
        let i = &redis.instances[0];
        assert_eq!(i.id, "redis");
        assert_eq!(i.address.to_string(), "127.0.0.1:6390");
        assert_eq!(i.argv, ["redis-server", "--port", "6390", "--save", ""]);
        assert_eq!(i.spare, None, "no surge for a process");
        assert_eq!(redis.stop_signal, StopSignal::Int);
        assert_eq!(redis.ready_timeout, Duration::from_secs(5));
        let worker = &c.services[1].instances[0];
        assert_eq!(worker.argv, ["worker", "--name", "worker"]);
        assert_eq!(worker.env, [("QUEUE".to_string(), "worker".to_string())]);
        assert_eq!(
            worker.address.port(),
            0,
            "listens nowhere the balancer knows"
        );
        // Not a backend of any pool.
        assert!(c
            .pools
            .iter()
            .all(|p| p.backends.iter().all(|b| b.id.starts_with("game-"))));
    }

    #[test]
    fn process_entries_report_every_bad_key() {
        let errs = errors(&with_process(
            "[[process]]\nname = \"w\"\ncommand = [\"worker\", \"{port}\"]\n\
             [[process]]\nname = \"w\"\ncommand = []\nport = 0\n\
             [[process]]\nname = \"game\"\ncommand = [\"x\"]\n\
             [[process]]\nname = \"r\"\ncommand = [\"redis-server\"]\nport = 9002\n\
             [[process]]\nname = \"s\"\ncommand = [\"x\"]\ninstances = 2\n",
        ));
        assert_exactly(
            &errs,
            &[
                "process[0].command[1]: {port} in \"{port}\", but this [[process]] has no port: set `port`",
                "process[1].name: duplicate process name \"w\"",
                "process[1].port: 0 is out of range (1 to 65535)",
                "process[1].command: needs the program to run",
                "process[2].name: \"game\" names a pool already",
                "process[3].port: process r would listen on 127.0.0.1:9002, which pool[0].processes (game-2) uses already",
                "process[4].instances: unknown field `instances`",
            ],
        );
    }

    #[test]
    fn user_and_group_are_looked_up_when_the_file_loads() {
        let root = Some(RunAs {
            user: "root".into(),
            uid: 0,
            gid: 0,
        });
        let c = crate::parse(&file(&format!("{MINIMAL}\nuser = \"root\""), "")).unwrap();
        assert_eq!(c.processes[0].run_as, root);
        let c = crate::parse(&file(
            &format!("{MINIMAL}\nuser = \"root\"\ngroup = \"0\""),
            "",
        ))
        .unwrap();
        assert_eq!(c.processes[0].run_as, root);
        let c = crate::parse(&with_process(
            "[[process]]\nname = \"w\"\ncommand = [\"w\"]\nuser = \"root\"\n",
        ))
        .unwrap();
        assert_eq!(c.services[0].run_as, root);
        let errs = errors(&file(&format!("{MINIMAL}\nuser = \"lb-no-such-user\""), ""));
        assert_eq!(
            errs,
            ["pool[0].processes.user: no user \"lb-no-such-user\" in /etc/passwd"]
        );
        let errs = errors(&file(
            &format!("{MINIMAL}\nuser = \"root\"\ngroup = \"lb-no-such-group\""),
            "",
        ));
        assert_eq!(
            errs,
            ["pool[0].processes.group: no group \"lb-no-such-group\" in /etc/group"]
        );
        let errs = errors(&file(&format!("{MINIMAL}\ngroup = \"root\""), ""));
        assert_eq!(errs, ["pool[0].processes.group: needs `user` (the group of the user the processes run as)"]);
    }
}
