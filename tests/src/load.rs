//! A bounded load of keep-alive GET clients, for tests that must show no
//! request fails while something happens to the balancer or its backends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;

use crate::http::{empty, h1};

/// Keep-alive clients sending GETs until [`GetLoad::finish`], a deadline,
/// or a per-client count, whichever comes first.
#[derive(Debug)]
pub struct GetLoad {
    stop: Arc<AtomicBool>,
    passed: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl GetLoad {
    /// Starts `clients` clients on `url`, each stopping by `until` at the latest.
    pub fn start(url: &str, clients: usize, until: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, passed, failed, url) = (
                    stop.clone(),
                    passed.clone(),
                    failed.clone(),
                    url.to_string(),
                );
                tokio::spawn(async move {
                    let c = h1();
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                            break;
                        }
                        let req = ::http::Request::get(&url).body(empty()).unwrap();
                        let ok = match c.request(req).await {
                            Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                            Ok(r) => {
                                eprintln!("load: status {}", r.status());
                                false
                            }
                            Err(e) => {
                                eprintln!("load: error {e}");
                                false
                            }
                        };
                        let counter = if ok { &passed } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            passed,
            failed,
            clients,
        }
    }

    /// Requests answered 200 so far.
    pub fn passed(&self) -> usize {
        self.passed.load(Ordering::Relaxed)
    }

    /// Stops the clients and returns `(passed, failed)`.
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        (
            self.passed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
