//! What a reload changes, as one log line. Pure, over two configs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use config::Config;

/// Backends by `pool/id`, listeners by name, and whether routes changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    /// Address or weight changed.
    pub backends_changed: Vec<String>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub routes_changed: bool,
    /// Anything else (policies, timeouts, health, ...).
    pub settings_changed: bool,
}

fn backends(c: &Config) -> BTreeMap<String, (SocketAddr, u32)> {
    c.pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(move |b| (format!("{}/{}", p.name, b.id), (b.address, b.weight)))
        })
        .collect()
}

fn listeners(c: &Config) -> BTreeMap<&str, SocketAddr> {
    c.listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address))
        .collect()
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config) -> Self {
        let (ob, nb) = (backends(old), backends(new));
        let (ol, nl) = (listeners(old), listeners(new));
        let mut d = Self {
            backends_added: nb
                .keys()
                .filter(|k| !ob.contains_key(*k))
                .cloned()
                .collect(),
            backends_removed: ob
                .keys()
                .filter(|k| !nb.contains_key(*k))
                .cloned()
                .collect(),
            backends_changed: nb
                .iter()
                .filter(|(k, v)| ob.get(*k).is_some_and(|o| o != *v))
                .map(|(k, _)| k.clone())
                .collect(),
            // A listener whose address changed is stopped and started again.
            listeners_added: nl
                .iter()
                .filter(|(k, a)| ol.get(*k) != Some(*a))
                .map(|(k, _)| k.to_string())
                .collect(),
            listeners_removed: ol
                .iter()
                .filter(|(k, a)| nl.get(*k) != Some(*a))
                .map(|(k, _)| k.to_string())
                .collect(),
            routes_changed: old.routes != new.routes,
            settings_changed: false,
        };
        // Everything but the parts listed above.
        let strip = |c: &Config| {
            let mut c = c.clone();
            c.listeners.clear();
            c.routes.clear();
            for p in &mut c.pools {
                p.backends.clear();
            }
            c
        };
        d.settings_changed = strip(old) != strip(new);
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `+game/game-4 -game/game-2 ~game/game-1 routes listeners:+admin`, or `no changes`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.backends_added.iter().map(|b| format!("+{b}")));
        parts.extend(self.backends_removed.iter().map(|b| format!("-{b}")));
        parts.extend(self.backends_changed.iter().map(|b| format!("~{b}")));
        parts.extend(
            self.listeners_added
                .iter()
                .map(|l| format!("+listener:{l}")),
        );
        parts.extend(
            self.listeners_removed
                .iter()
                .map(|l| format!("-listener:{l}")),
        );
        if self.routes_changed {
            parts.push("routes".into());
        }
        if self.settings_changed {
            parts.push("settings".into());
        }
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backends: &str, extra: &str) -> Config {
        config::parse(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n{backends}\n[[route]]\nlistener = \"l\"\npool = \"p\"\n{extra}"
        ))
        .unwrap()
    }

    const AB: &str = "[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\nid = \"b\"\naddress = \"127.0.0.1:2\"\n";

    #[test]
    fn summarises_each_kind_of_change() {
        let old = cfg(AB, "");
        assert_eq!(ConfigDiff::between(&old, &old).summary(), "no changes");
        let new = cfg(
            "[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 3\n[[pool.backend]]\nid = \"c\"\naddress = \"127.0.0.1:3\"\n",
            "[timeouts]\nconnect = \"1s\"\n[[listener]]\nname = \"m\"\naddress = \"127.0.0.1:0\"\n",
        );
        assert_eq!(
            ConfigDiff::between(&old, &new).summary(),
            "+p/c -p/b ~p/a +listener:m settings"
        );
    }
}
