//! Config for the balancer: the TOML file, parsed strictly and validated
//! completely before anything runs on it.
//!
//! ```text
//!   file text ──toml──▶ Table ──serde (per element)──▶ raw::* ──validate──▶ Config
//!                         │                                │
//!                         └── syntax error ──┐             └── every problem, with its key path
//!                                            ▼
//!                                       ConfigErrors  (nothing runs on a rejected file)
//! ```
//!
//! * [`raw`] mirrors the file one to one (`#[serde(deny_unknown_fields)]`
//!   everywhere); it only knows shapes and types.
//! * [`validate`] turns raw structs into the typed [`Config`] and collects
//!   every error it meets instead of stopping at the first one, so a user
//!   fixes a file in one pass.
//! * [`Config`] is what the balancer builds its runtime snapshot from: all
//!   addresses parsed, all durations resolved, all references checked.
//!
//! The same code runs for `balancer check`, at start-up and (later) on every
//! reload, so the three can never disagree about what is valid.

pub mod duration;
mod error;
pub mod limits;
pub mod processes;
mod protocols;
pub mod raw;
#[cfg(test)]
mod testing;
pub mod tls;
mod types;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use limits::Limits;
pub use processes::{InstanceConfig, ProcessesConfig, RunAs, Slot, StopSignal};
pub use protocols::{ProxyVersion, DEFAULT_UPGRADES};
pub use tls::{CertificateFiles, HttpsRedirect, ListenerTls, PoolTls, TlsVersion, UnknownName};
pub use types::{
    AdminConfig, BackendConfig, Capacity, Config, EjectionConfig, HashKey, HealthConfig,
    HealthKind, HostMatch, ListenerConfig, Policy, PoolConfig, ProxyProtocol, RetryConfig,
    RouteConfig, SameSite, StickyConfig, Timeouts, DEFAULT_BUFFER_BODY, DEFAULT_BUFFER_BODY_FILE,
    DEFAULT_BUFFER_RESPONSE, DEFAULT_BUFFER_RESPONSE_FILE, DEFAULT_MAX_IDLE_PER_BACKEND,
};

use std::path::Path;

/// Parses and validates config text. `Err` holds every problem found.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let raw = raw::parse(text)?;
    validate::validate(raw)
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    parse(&text)
}

#[cfg(test)]
mod examples {
    /// Every shipped example must stay valid as the config grows.
    #[test]
    fn example_files_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = crate::load(&path) {
                    panic!("{} is invalid:\n{e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen > 0, "no example files in {}", dir.display());
    }
}

#[cfg(test)]
mod documented_example {
    /// The complete example in docs/config.md must stay valid.
    #[test]
    fn config_reference_example_is_valid() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let text = std::fs::read_to_string(&doc).unwrap();
        let after = text
            .split("## A complete example")
            .nth(1)
            .expect("docs/config.md has a complete example");
        let toml = after
            .split("```toml\n")
            .nth(1)
            .and_then(|t| t.split("```").next())
            .expect("a toml block");
        if let Err(e) = crate::parse(toml) {
            panic!("the example in docs/config.md is invalid:\n{e}");
        }
    }

    /// The README's config example too.
    #[test]
    fn readme_example_is_valid() {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let text = std::fs::read_to_string(&readme).unwrap();
        let toml = text
            .split("## Config")
            .nth(1)
            .and_then(|t| t.split("```toml\n").nth(1))
            .and_then(|t| t.split("```").next())
            .expect("a toml block under ## Config");
        if let Err(e) = crate::parse(toml) {
            panic!("the example in README.md is invalid:\n{e}");
        }
    }
}
