//! The committed corpus (`corpus/<target>/`) through the same checks the
//! fuzz targets run: `cargo test` in `fuzz/`, on stable, no cargo-fuzz.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut failed = Vec::new();
    let mut seen = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
        seen += 1;
    }
    assert!(seen > 0, "{} is empty", dir.display());
    assert!(failed.is_empty(), "{target}: {failed:#?}");
}

#[test]
fn response_head() {
    replay("response_head", balancer_fuzz::response_head::check);
}

#[test]
fn chunked() {
    replay("chunked", balancer_fuzz::chunked::check);
}

#[test]
fn ws_frames() {
    replay("ws_frames", balancer_fuzz::ws_frames::check);
}

#[test]
fn client_ip() {
    replay("client_ip", balancer_fuzz::client_ip::check);
}

#[test]
fn tls_tickets() {
    replay("tls_tickets", balancer_fuzz::tls_tickets::check);
}

#[test]
fn https_redirect() {
    replay("https_redirect", balancer_fuzz::https_redirect::check);
}

#[test]
fn sticky_cookie() {
    replay("sticky_cookie", balancer_fuzz::sticky_cookie::check);
}

#[test]
fn hash_key() {
    replay("hash_key", balancer_fuzz::hash_key::check);
}

#[test]
fn config() {
    replay("config", balancer_fuzz::config::check);
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol", balancer_fuzz::proxy_protocol::check);
}

#[test]
fn h2_frames() {
    replay("h2_frames", balancer_fuzz::h2_frames::check);
}
