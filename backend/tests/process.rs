//! The `backend` binary as a process: it reports its address, answers its
//! endpoints and exits cleanly on SIGTERM. (Also makes `cargo test` build the
//! binary, which the end-to-end tests in `tests/` start.)

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_its_endpoints_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--id",
            "proc-1",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("backend exited before listening")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" {
            break v["address"].as_str().unwrap().to_string();
        }
    };
    assert!(get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(&addr, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(get(&addr, "/whoami").ends_with("\r\n\r\nproc-1"));
    assert!(get(&addr, "/nope").starts_with("HTTP/1.1 404"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let end = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "backend did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
