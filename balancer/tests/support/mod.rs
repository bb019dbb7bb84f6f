//! What the balancer's socket-level integration tests share: a balancer
//! (`App`, in process) started on a config text, serving until the test ends.

use std::net::SocketAddr;

/// Parses `config_text`, binds it (metrics off) and serves it; the address
/// of its listener named `public`.
pub async fn serve(config_text: &str) -> SocketAddr {
    let config = config::parse(config_text).expect("a valid test config");
    let app = balancer::app::App::bind_with(config, false)
        .await
        .expect("the balancer binds");
    let addr = app.local_addr("public").expect("a listener named public");
    tokio::spawn(app.serve(std::future::pending()));
    addr
}

/// [`serve`] with Prometheus metrics on: also the metrics, to read what
/// a test's traffic counted (`Metrics::render`).
#[allow(dead_code)] // Not every test binary reads metrics.
pub async fn serve_with_metrics(
    config_text: &str,
) -> (SocketAddr, std::sync::Arc<balancer::metrics::Metrics>) {
    let config = config::parse(config_text).expect("a valid test config");
    let app = balancer::app::App::bind_with(config, true)
        .await
        .expect("the balancer binds");
    let addr = app.local_addr("public").expect("a listener named public");
    let metrics = app.proxy().metrics.clone().expect("metrics set up");
    tokio::spawn(app.serve(std::future::pending()));
    (addr, metrics)
}

/// Waits until `cond` holds, for 10 s at most; `what` names it in the
/// failure. (Not every test file waits: hence the `allow`.)
#[allow(dead_code)]
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Reads a response head (20 s at most); returns it and the bytes read
/// past it.
#[allow(dead_code)]
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.expect("a readable socket");
            assert!(n > 0, "closed before a head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head in time");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head's end, found above")
        + 4;
    let rest = buf.split_off(end);
    (String::from_utf8_lossy(&buf).into_owned(), rest)
}
