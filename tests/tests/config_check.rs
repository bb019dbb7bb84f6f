//! `balancer check` and start-up refuse bad configs with every error, its key
//! path and exit code 2; a good config passes.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tests::bin;

const GOOD: &str = r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"

[[pool]]
name = "game"
policy = "round_robin"
  [[pool.backend]]
  id = "game-1"
  address = "127.0.0.1:9001"
  weight = 2
  [[pool.backend]]
  id = "game-2"
  address = "127.0.0.1:9002"

[[route]]
listener = "public"
host = "*.example.com"
path_prefix = "/"
pool = "game"

[timeouts]
connect = "500ms"
websocket_idle = "10m"
"#;

/// Runs `balancer <args> --config FILE` on `text`; returns (exit code, stdout, stderr).
fn run(args: &[&str], text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin("balancer"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_config_passes_check() {
    let (code, stdout, stderr) = run(&["check"], GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("OK (1 listeners, 1 pools, 2 backends, 1 routes)"),
        "{stdout}"
    );
}

/// Each case: a change to the good file and the message it must produce.
const BAD: &[(&str, &str, &str)] = &[
    (
        "unknown top-level key",
        "[metrics]\nenabled = true\n",
        "metrics: unknown key",
    ),
    (
        "unknown key in a backend (typo)",
        "[[pool]]\nname = \"x\"\n[[pool.backend]]\nid = \"a\"\nadress = \"127.0.0.1:1\"\n",
        "pool[1].backend[0].adress: unknown field `adress`",
    ),
    (
        "bad listener address",
        "[[listener]]\nname = \"admin\"\naddress = \"localhost:80\"\n",
        "listener[1].address: invalid address \"localhost:80\"",
    ),
    (
        "duplicate backend id",
        "[[pool]]\nname = \"x\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:2\"\n",
        "pool[1].backend[1].id: duplicate backend id \"a\"",
    ),
    (
        "route to a missing pool",
        "[[route]]\nlistener = \"public\"\npath_prefix = \"/lobby\"\npool = \"lobby\"\n",
        "route[1].pool: no pool named \"lobby\"",
    ),
    (
        "route on a missing listener",
        "[[route]]\nlistener = \"private\"\npool = \"game\"\n",
        "route[1].listener: no listener named \"private\"",
    ),
    (
        "unknown policy",
        "[[pool]]\nname = \"x\"\npolicy = \"random\"\n",
        "pool[1].policy: unknown policy \"random\"",
    ),
    (
        "weight out of range",
        "[[pool]]\nname = \"x\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 1000\n",
        "pool[1].backend[0].weight: 1000 is out of range (1 to 256)",
    ),
    (
        "missing required key",
        "[[listener]]\nname = \"admin\"\n",
        "listener[1]: missing field `address`",
    ),
    (
        "wrong value type",
        "[[pool]]\nname = 7\n",
        "pool[1].name: invalid type: integer `7`, expected a string",
    ),
    (
        "duplicate pool name",
        "[[pool]]\nname = \"game\"\n",
        "pool[1].name: duplicate pool name \"game\"",
    ),
    (
        "invalid host pattern",
        "[[route]]\nlistener = \"public\"\nhost = \"game.example.com:443\"\npool = \"game\"\n",
        "route[1].host: invalid host \"game.example.com:443\"",
    ),
    (
        "path prefix without slash",
        "[[route]]\nlistener = \"public\"\npath_prefix = \"api\"\npool = \"game\"\n",
        "route[1].path_prefix: \"api\" must start with '/'",
    ),
    (
        "cookie policy without [pool.sticky]",
        "[[pool]]\nname = \"x\"\npolicy = \"cookie\"\n",
        "pool[1].sticky: policy \"cookie\" needs a [pool.sticky] table",
    ),
    (
        "short sticky secret",
        "[[pool]]\nname = \"x\"\npolicy = \"cookie\"\n[pool.sticky]\nsecret = \"change-me\"\n",
        "pool[1].sticky.secret: needs at least 16 characters",
    ),
    (
        "SameSite=None without Secure",
        "[[pool]]\nname = \"x\"\npolicy = \"cookie\"\n[pool.sticky]\nsecret = \"0123456789abcdef\"\nsame_site = \"None\"\n",
        "pool[1].sticky.same_site: SameSite=None needs secure = true",
    ),
    (
        "sticky table on another policy",
        "[[pool]]\nname = \"x\"\n[pool.sticky]\nsecret = \"0123456789abcdef\"\n",
        "pool[1].sticky: only used with policy = \"cookie\"",
    ),
    (
        "unknown key in [pool.sticky]",
        "[[pool]]\nname = \"x\"\npolicy = \"cookie\"\n[pool.sticky]\nsecret = \"0123456789abcdef\"\ncookie_name = \"a\"\n",
        "pool[1].sticky.cookie_name: unknown field `cookie_name`",
    ),
    (
        "hash policy with a bad key",
        "[[pool]]\nname = \"x\"\npolicy = \"hash\"\n[pool.hash]\nkey = \"body:room\"\n",
        "pool[1].hash.key: invalid key \"body:room\": unknown kind",
    ),
    (
        "hash policy without a key",
        "[[pool]]\nname = \"x\"\npolicy = \"hash\"\n",
        "pool[1].hash: policy \"hash\" needs a [pool.hash] table",
    ),
    (
        "TOML syntax error",
        "[[listener]\n",
        "TOML syntax error",
    ),
];

#[test]
fn each_kind_of_bad_config_is_refused_with_its_key_path() {
    for (what, addition, expected) in BAD {
        let text = format!("{GOOD}\n{addition}");
        for args in [&["check"][..], &[][..]] {
            let (code, stdout, stderr) = run(args, &text);
            assert_eq!(code, 2, "{what} ({args:?}): exit {code}\n{stdout}{stderr}");
            assert!(
                stderr.contains(expected),
                "{what} ({args:?}): expected {expected:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn bad_trusted_proxy_names_its_index() {
    let text = format!("trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"lan\"]\n{GOOD}");
    let (code, _, stderr) = run(&["check"], &text);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("trusted_proxies[1]: invalid network \"10.0.0.0/33\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("trusted_proxies[2]: invalid network \"lan\""),
        "{stderr}"
    );
}

#[test]
fn a_file_without_listeners_is_refused() {
    // Also what a half-written file caught by a reload often looks like.
    for text in ["", "[[pool]]\nname = \"game\"\n"] {
        let (code, _, stderr) = run(&["check"], text);
        assert_eq!(code, 2);
        assert!(
            stderr.contains("listener: at least one [[listener]] is required"),
            "{stderr}"
        );
    }
}

#[test]
fn bad_duration_names_the_timeout() {
    let text = GOOD.replace("connect = \"500ms\"", "connect = \"fast\"");
    let (code, _, stderr) = run(&["check"], &text);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("timeouts.connect: invalid duration \"fast\""),
        "{stderr}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = format!(
        "{GOOD}\n[[pool]]\nname = \"x\"\npolicy = \"random\"\n[[pool.backend]]\nid = \"a\"\naddress = \"nowhere\"\n[[route]]\nlistener = \"nope\"\npool = \"missing\"\n"
    );
    let (code, _, stderr) = run(&["check"], &text);
    assert_eq!(code, 2);
    for want in [
        "pool[1].policy: unknown policy",
        "pool[1].backend[0].address: invalid address",
        "route[1].listener: no listener named",
        "route[1].pool: no pool named",
        "(4 problems)",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

#[test]
fn missing_file_is_an_error() {
    let out = Command::new(bin("balancer"))
        .args(["check", "--config", "/nonexistent/balancer.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/balancer.toml"));
}
