//! The whole request path, in process over loopback: a keep-alive client ->
//! balancer -> pooled connection -> backend -> back, with Prometheus metrics
//! on and off, side by side in one run. The difference is the cost of
//! recording metrics on the request path.

// Set-up fails only if the fixtures themselves are wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use balancer::app::App;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn start(with_metrics: bool, backend: SocketAddr) -> SocketAddr {
    let config = config::parse(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .unwrap();
    let app = App::bind_with(config, with_metrics).await.unwrap();
    let addr = app.local_addr("public").unwrap();
    tokio::spawn(app.serve(std::future::pending()));
    addr
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (on, off) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let state = Arc::new(backend::AppState::new("b"));
        tokio::spawn(backend::serve(listener, state, std::future::pending()));
        (start(true, backend).await, start(false, backend).await)
    });
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let mut group = c.benchmark_group("request_path");
    for (name, addr) in [("metrics_on", on), ("metrics_off", off)] {
        let uri: http::Uri = format!("http://{addr}/whoami").parse().unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let resp = client.get(uri.clone()).await.unwrap();
                    resp.into_body().collect().await.unwrap()
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    targets = request_path
}
criterion_main!(benches);
