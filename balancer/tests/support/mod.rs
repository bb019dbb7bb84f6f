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
