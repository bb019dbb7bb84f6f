//! TLS termination with real clients: curl (HTTP/1.1 and HTTP/2 by ALPN),
//! `openssl s_client` (SNI), rustls clients, and hostile bytes. Every
//! certificate is made in the test by a throwaway CA.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::tls::{certificate_toml, TestCa};
use tests::{Backend, Balancer, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A balancer with a TLS listener `public` (certificates `certs`, extra
/// `[listener.tls]` lines `tls`) routed to `backend`, plus `extra` TOML.
fn tls_config(backend: SocketAddr, certs: &[(PathBuf, PathBuf)], tls: &str, extra: &str) -> String {
    let mut c = String::from("[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n");
    for (cert, key) in certs {
        c.push_str(&certificate_toml(cert, key));
    }
    if !tls.is_empty() {
        c.push_str(&format!("  [listener.tls]\n{tls}\n"));
    }
    c.push_str(&format!(
        "\n[[pool]]\nname = \"game\"\n  [[pool.backend]]\n  id = \"b1\"\n  address = \"{backend}\"\n\n[[route]]\nlistener = \"public\"\npath_prefix = \"/\"\npool = \"game\"\n\n{extra}"
    ));
    c
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (scripts/test.sh installs it)")
}

fn resolve(name: &str, addr: SocketAddr) -> String {
    format!("{name}:{}:127.0.0.1", addr.port())
}

struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_path: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ca_path = ca.write_ca(dir.path());
        Self { dir, ca, ca_path }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cert(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf, String) {
        let issued = self.ca.issue(names);
        let (c, k) = issued.write(self.path(), name);
        (c, k, issued.serial)
    }
}

#[test]
fn curl_over_tls_with_http1_and_http2_streams_a_mebibyte_both_ways() {
    let s = Setup::new();
    let (cert, key, _) = s.cert("game", &["game.test"]);
    let b = Backend::start("b1");
    let lb = Balancer::start(&tls_config(
        b.addr,
        &[(cert, key)],
        "  hsts = \"max-age=31536000; includeSubDomains\"\n  forward_sni = true",
        "",
    ));
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let upload = s.path().join("upload.bin");
    std::fs::write(&upload, &body).unwrap();
    let at = format!("@{}", upload.display());
    let resolve = resolve("game.test", lb.addr());
    let url = format!("https://game.test:{}/echo", lb.addr().port());
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out_file = s.path().join(format!("out-{version}.bin"));
        let out = curl(&[
            flag,
            "--cacert",
            s.ca_path.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--data-binary",
            &at,
            "-H",
            "content-type: application/octet-stream",
            "-o",
            out_file.to_str().unwrap(),
            "-w",
            "%{http_version} %{response_code}",
            &url,
        ]);
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{version} 200")
        );
        assert_eq!(std::fs::read(&out_file).unwrap(), body, "echo over {flag}");
    }

    // What the backend is told, and what the client gets back.
    let out = curl(&[
        "--cacert",
        s.ca_path.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-H",
        "X-Forwarded-Proto: gopher",
        &format!("https://game.test:{}/headers", lb.addr().port()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let header = |name: &str| -> Vec<String> {
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0] == name)
            .map(|p| p[1].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(header("x-forwarded-proto"), ["https"]);
    assert_eq!(header("x-forwarded-port"), [lb.addr().port().to_string()]);
    assert_eq!(header("x-forwarded-sni"), ["game.test"]);
}

/// The certificate `openssl s_client` is given for `servername` (None:
/// no SNI); `Err` with its output when the handshake fails.
fn s_client_serial(
    addr: SocketAddr,
    servername: Option<&str>,
    ca: &Path,
) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect"])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error"]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pem_start = text.find("-----BEGIN CERTIFICATE-----");
    let pem_end = text.find("-----END CERTIFICATE-----");
    let (Some(a), Some(b)) = (pem_start, pem_end) else {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    };
    let pem = &text[a..b + "-----END CERTIFICATE-----".len()];
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let serial = String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap();
    Ok(serial.trim().trim_start_matches("serial=").to_string())
}

#[test]
fn sni_picks_each_names_certificate_and_unknown_names_get_the_default_or_a_refusal() {
    let s = Setup::new();
    let (c1, k1, game) = s.cert("game", &["game.test"]);
    let (c2, k2, other) = s.cert("other", &["*.other.test"]);
    let b = Backend::start("b1");
    let certs = [(c1, k1), (c2, k2)];
    let lb = Balancer::start(&tls_config(b.addr, &certs, "", ""));
    assert_eq!(
        s_client_serial(lb.addr(), Some("game.test"), &s.ca_path).unwrap(),
        game
    );
    assert_eq!(
        s_client_serial(lb.addr(), Some("eu.other.test"), &s.ca_path).unwrap(),
        other
    );
    // A wildcard covers one label only: a.b.other.test gets the default,
    // as do an unknown name and a client that sends no SNI.
    assert_eq!(
        s_client_serial(lb.addr(), Some("a.b.other.test"), &s.ca_path).unwrap(),
        game
    );
    assert_eq!(
        s_client_serial(lb.addr(), Some("unknown.test"), &s.ca_path).unwrap(),
        game
    );
    assert_eq!(s_client_serial(lb.addr(), None, &s.ca_path).unwrap(), game);
    drop(lb);

    let lb = Balancer::start(&tls_config(
        b.addr,
        &certs,
        "  unknown_name = \"refuse\"",
        "[admin]\naddress = \"127.0.0.1:0\"\n",
    ));
    assert_eq!(
        s_client_serial(lb.addr(), Some("game.test"), &s.ca_path).unwrap(),
        game
    );
    let refused = s_client_serial(lb.addr(), Some("unknown.test"), &s.ca_path).unwrap_err();
    assert!(
        refused.contains("alert") || refused.contains("error"),
        "{refused}"
    );
    assert!(s_client_serial(lb.addr(), None, &s.ca_path).is_err());
    let metrics = tests::http::blocking_get(lb.admin_addr(), "/metrics");
    let count = |outcome: &str| {
        tests::http::metric(
            &metrics,
            &format!("balancer_tls_handshakes_total{{listener=\"public\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("unknown_name"), Some(2.0), "{metrics}");
    assert_eq!(count("ok"), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn plaintext_truncated_and_stalled_handshakes_are_closed_and_counted() {
    let s = Setup::new();
    let (cert, key, _) = s.cert("game", &["game.test"]);
    let b = Backend::start("b1");
    let lb = Balancer::start(&tls_config(
        b.addr,
        &[(cert, key)],
        "  handshake_timeout = \"1s\"",
        "[admin]\naddress = \"127.0.0.1:0\"\n",
    ));
    // Plain HTTP to the TLS port: a 400 that says so, then the close.
    let answer = tests::http::raw(
        lb.addr(),
        b"GET / HTTP/1.1\r\nHost: game.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("use https://"), "{answer}");

    // A ClientHello cut short, and a client that connects and says nothing:
    // both closed by the handshake timeout.
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut cut = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    cut.write_all(&hello).await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    let start = Instant::now();
    for s in [&mut cut, &mut silent] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("closed by the handshake timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing but the close");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    // Garbage that is not TLS at all.
    let junk = tests::http::raw(lb.addr(), &[0u8, 1, 2, 3], Duration::from_secs(5)).await;
    assert!(junk.is_empty());

    let admin = lb.admin_addr();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = tests::http::get_text(admin, "/metrics").await;
        let value = |outcome: &str| {
            tests::http::metric(
                &m,
                &format!(
                    "balancer_tls_handshakes_total{{listener=\"public\",outcome=\"{outcome}\"}}"
                ),
            )
        };
        let open = tests::http::metric(&m, "balancer_client_connections{listener=\"public\"}");
        let ok = value("plaintext_http") == Some(1.0)
            && value("timeout") == Some(2.0)
            && value("not_tls") == Some(1.0)
            && open == Some(0.0);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake outcomes or open connections wrong:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a real client still gets through.
    let tls = tests::tls::connect(lb.addr(), "game.test", s.ca.client(&[b"http/1.1"]))
        .await
        .unwrap();
    drop(tls);
}

#[tokio::test]
async fn a_plaintext_listener_redirects_to_https_except_acme_challenges() {
    let b = Backend::start("b1");
    let config = format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n  [listener.https_redirect]\n  except_path_prefixes = [\"/.well-known/acme-challenge/\"]\n\n[[pool]]\nname = \"game\"\n  [[pool.backend]]\n  id = \"b1\"\n  address = \"{}\"\n\n[[route]]\nlistener = \"public\"\npath_prefix = \"/\"\npool = \"game\"\n",
        b.addr
    );
    let lb = Balancer::start(&config);
    let out = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: game.test:8080",
        &format!("http://{}/play?room=7", lb.addr()),
    ]);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 308"), "{head}");
    assert!(
        head.contains("location: https://game.test/play?room=7"),
        "{head}"
    );
    // The challenge reaches the pool (the backend has no such file: its 404).
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{response_code}",
        "-H",
        "Host: game.test",
        &format!("http://{}/.well-known/acme-challenge/token", lb.addr()),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    // The access line is written as the response ends: it may trail curl.
    lb.proc.wait_log("the challenge proxied to b1", |v| {
        v["path"] == "/.well-known/acme-challenge/token" && v["backend"] == "b1"
    });
}

#[tokio::test]
async fn tls_to_backends_with_a_private_ca_pools_checks_and_refuses_what_does_not_verify() {
    let s = Setup::new();
    let issued = s.ca.issue(&["127.0.0.1", "backend.internal"]);
    let (bcert, bkey) = issued.write(s.path(), "backend");
    // The client certificate the balancer shows (mutual TLS).
    let client = s.ca.issue(&["balancer.internal"]);
    let (ccert, ckey) = client.write(s.path(), "client");
    let plain = Backend::start_tls("tls-1", &bcert, &bkey, &[]);
    let mutual = Backend::start_tls(
        "mtls-1",
        &bcert,
        &bkey,
        &["--tls-client-ca", s.ca_path.to_str().unwrap()],
    );
    // A CA the backends' certificate does not come from.
    let stranger = TestCa::new();
    let stranger_path = s.path().join("stranger.pem");
    std::fs::write(&stranger_path, stranger.pem()).unwrap();
    let ca = s.ca_path.display();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[[pool]]
name = "tls"
  [pool.tls]
  ca = "{ca}"
  [pool.health]
  interval = "200ms"
  [[pool.backend]]
  id = "tls-1"
  address = "{plain}"

[[pool]]
name = "named"
  [pool.tls]
  ca = "{ca}"
  server_name = "backend.internal"
  [[pool.backend]]
  id = "tls-1"
  address = "{plain}"

[[pool]]
name = "mutual"
  [pool.tls]
  ca = "{ca}"
  cert = "{ccert}"
  key = "{ckey}"
  [[pool.backend]]
  id = "mtls-1"
  address = "{mutual}"

[[pool]]
name = "no-client-cert"
  [pool.tls]
  ca = "{ca}"
  [[pool.backend]]
  id = "mtls-1"
  address = "{mutual}"

[[pool]]
name = "wrong-ca"
  [pool.tls]
  ca = "{stranger}"
  [[pool.backend]]
  id = "tls-1"
  address = "{plain}"

[[route]]
listener = "public"
host = "tls.test"
pool = "tls"
[[route]]
listener = "public"
host = "named.test"
pool = "named"
[[route]]
listener = "public"
host = "mutual.test"
pool = "mutual"
[[route]]
listener = "public"
host = "no-client-cert.test"
pool = "no-client-cert"
[[route]]
listener = "public"
host = "wrong-ca.test"
pool = "wrong-ca"
"#,
        plain = plain.addr,
        mutual = mutual.addr,
        ccert = ccert.display(),
        ckey = ckey.display(),
        stranger = stranger_path.display(),
    );
    let lb = Balancer::start(&config);
    let admin = lb.admin_addr();
    // The health check speaks TLS too: the backend comes up.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = tests::http::get_text(admin, "/metrics").await;
        if tests::http::metric(&m, "balancer_backend_up{backend=\"tls-1\",pool=\"tls\"}")
            == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS backend never passed its check:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = tests::http::h1();
    for prefix in ["tls", "named", "mutual"] {
        for _ in 0..20 {
            let r =
                tests::http::get_host(&client, &lb.url("/whoami"), &format!("{prefix}.test")).await;
            assert_eq!(r.status, 200, "{prefix}: {}", r.text());
        }
    }
    // A streamed (chunked) upload over the TLS connection, echoed back.
    let body: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
    let upload = s.path().join("upload.bin");
    std::fs::write(&upload, &body).unwrap();
    let out_file = s.path().join("echoed.bin");
    let out = curl(&[
        "-H",
        "Host: tls.test",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", upload.display()),
        "-o",
        out_file.to_str().unwrap(),
        "-w",
        "%{response_code}",
        &lb.url("/echo"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(std::fs::read(&out_file).unwrap(), body);
    // Keep-alive pooling: 60 requests over a handful of TLS connections.
    let m = tests::http::get_text(admin, "/metrics").await;
    let connects = tests::http::metric(
        &m,
        "balancer_upstream_connect_duration_seconds_count{pool=\"tls\"}",
    )
    .unwrap();
    assert!(
        connects <= 4.0,
        "{connects} TLS connections for 21 requests"
    );

    // Verification failures: a 502 at once and a log line, not a hang.
    // The balancer refuses the backend's certificate during the handshake;
    // a TLS 1.3 server refuses a missing client certificate only after it,
    // with an alert the balancer reads in place of the response.
    for (prefix, body, why) in [
        (
            "wrong-ca",
            "TLS to the backend failed",
            "invalid peer certificate",
        ),
        ("no-client-cert", "backend failed", "CertificateRequired"),
    ] {
        let start = Instant::now();
        let r = tests::http::get_host(&client, &lb.url("/whoami"), &format!("{prefix}.test")).await;
        assert_eq!(r.status, 502, "{prefix}");
        assert!(r.text().contains(body), "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        lb.proc.wait_log("the TLS failure logged", |v| {
            v["message"] == "request failed"
                && v["pool"] == prefix
                && v["error"].as_str().is_some_and(|e| e.contains(why))
        });
    }
}

/// `balancer check --config FILE`: (exit code, stdout, stderr).
fn check(config: &str, dir: &Path) -> (i32, String, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(tests::bin("balancer"))
        .args(["check", "--config"])
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
fn balancer_check_verifies_every_certificate_and_warns_about_expiry() {
    let s = Setup::new();
    let backend: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let (good, good_key, serial) = s.cert("good", &["game.test"]);
    let soon = s.ca.issue_for_days(&["soon.test"], 3);
    let (soon_cert, soon_key) = soon.write(s.path(), "soon");
    let (code, out, err) = check(
        &tls_config(
            backend,
            &[(good.clone(), good_key.clone()), (soon_cert, soon_key)],
            "",
            "",
        ),
        s.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("good.pem: OK (game.test; serial {serial}")),
        "{out}"
    );
    assert!(
        err.contains("warning: listener \"public\":") && err.contains("soon.pem: expires in "),
        "{err}"
    );

    // A key that belongs to another certificate, and a missing file: both
    // reported, each with its file, exit 2.
    let (_, other_key, _) = s.cert("other", &["other.test"]);
    let missing = s.path().join("missing.pem");
    let (code, _, err) = check(
        &tls_config(
            backend,
            &[(good.clone(), other_key), (missing, good_key)],
            "",
            "",
        ),
        s.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("other.key: does not match the certificate in"),
        "{err}"
    );
    assert!(err.contains("missing.pem: cannot read"), "{err}");
    assert!(err.contains("(2 problems)"), "{err}");
}

#[tokio::test]
async fn a_reload_naming_a_bad_certificate_is_refused_and_the_old_one_keeps_serving() {
    let s = Setup::new();
    let (cert, key, serial) = s.cert("game", &["game.test"]);
    let b = Backend::start("b1");
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    let lb = Balancer::start(&tls_config(
        b.addr,
        &[(cert.clone(), key.clone())],
        "",
        admin,
    ));
    let client = s.ca.client(&[b"http/1.1"]);
    let serial_now = || async {
        let tls = tests::tls::connect(lb.addr(), "game.test", s.ca.client(&[b"http/1.1"]))
            .await
            .unwrap();
        tests::tls::peer_serial(&tls)
    };
    assert_eq!(serial_now().await, serial);
    // The new file adds a certificate whose key is wrong.
    let (c2, _, _) = s.cert("second", &["second.test"]);
    lb.rewrite_config(&tls_config(
        b.addr,
        &[(cert.clone(), key.clone()), (c2, key.clone())],
        "",
        admin,
    ));
    let refused = lb.proc.wait_log("the refusal", |v| {
        v["message"] == "config reload failed: keeping the running config and certificates"
    });
    assert_eq!(refused["problems"], 1);
    let status: serde_json::Value =
        serde_json::from_str(&tests::http::get_text(lb.admin_addr(), "/api/status").await).unwrap();
    let errors = status["reloads"]["last_errors"].as_array().unwrap();
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("game.key: does not match the certificate in"),
        "{status}"
    );
    assert_eq!(serial_now().await, serial);
    drop(client);
    // Fixed: the reload goes through and SNI serves the second name.
    let second = s.ca.issue(&["second.test"]);
    let (c2, k2) = second.write(s.path(), "second");
    lb.rewrite_config(&tls_config(b.addr, &[(cert, key), (c2, k2)], "", admin));
    lb.proc.wait_log("the reload", |v| {
        v["message"] == "config reloaded"
            && v["changes"]
                .as_str()
                .is_some_and(|c| c.contains("listener:public"))
    });
    let tls = tests::tls::connect(lb.addr(), "second.test", s.ca.client(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tests::tls::peer_serial(&tls), second.serial);
}

#[test]
fn http2_can_be_turned_off_and_tls12_refused() {
    let s = Setup::new();
    let (cert, key, _) = s.cert("game", &["game.test"]);
    let b = Backend::start("b1");
    let lb = Balancer::start(&tls_config(
        b.addr,
        &[(cert, key)],
        "  http2 = false\n  min_version = \"1.3\"",
        "[admin]\naddress = \"127.0.0.1:0\"\n",
    ));
    let resolve = resolve("game.test", lb.addr());
    let url = format!("https://game.test:{}/whoami", lb.addr().port());
    let ca = s.ca_path.to_str().unwrap();
    // curl asks for h2 and gets HTTP/1.1.
    let out = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1.1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A TLS 1.2-only client is refused; TLS 1.3 gets through.
    let out = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(!out.status.success(), "TLS 1.2 was accepted");
    let out = curl(&["--tlsv1.3", "--cacert", ca, "--resolve", &resolve, &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = tests::http::blocking_get(lb.admin_addr(), "/metrics");
    assert_eq!(
        tests::http::metric(
            &m,
            "balancer_tls_handshakes_total{listener=\"public\",outcome=\"incompatible\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        tests::http::metric(
            &m,
            "balancer_tls_negotiated_total{alpn=\"http/1.1\",listener=\"public\",version=\"1.3\"}"
        ),
        Some(2.0),
        "{m}"
    );
}
