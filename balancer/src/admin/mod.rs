//! The admin listener: a small JSON API next to the proxy listeners.
//!
//! * `GET /api/status`: generation, pools, backends (state, weight, open
//!   connections, requests) and the backends still draining after a reload.
//! * `GET /`: the status page (HTML, refreshes itself from `/api/status`).
//! * `GET /metrics`: Prometheus text format (see docs/metrics.md).
//! * `POST /api/reload`: reloads the config file now (as SIGHUP does) and
//!   answers with the outcome: the new generation and the changes, or every
//!   error of a refused file.
//!
//! * `POST /api/pools/{pool}/backends/{id}/{drain|enable|disable}`: the
//!   operator's say about one backend.
//!
//! Every request passes [`guard`] first: its `Host` must be one of the
//! listener's own (421 otherwise), a state-changing call must not come from
//! another site (403) and needs `Authorization: Bearer <admin.token>`
//! whenever a token is set (401); with `admin.protect_reads` the reads
//! need the token too. [`listener`] caps and times out the connections.
//! A refused request changes nothing.
//!
//! The admin side reads the live snapshot and the reload state; it never
//! touches the request path.

pub mod guard;
mod listener;
mod status;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::reload::{DrainList, ReloadOutcome, ReloadStats};
use crate::runtime::Snapshot;
use crate::upstream::Operator;

pub use guard::Guard;
pub use listener::serve_admin;

/// Shared with the serve loop.
#[derive(Debug)]
pub struct AdminState {
    /// The live config, as requests see it.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Prometheus metrics (none when they could not be set up).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// `[admin]` as it was at start: the listener is bound once, a reload
    /// does not change it.
    pub config: config::AdminConfig,
    /// Which requests get through (built from `config` and the bound address).
    pub guard: Guard,
    /// Asks the serve loop for a reload and waits for its outcome.
    pub reload: mpsc::Sender<oneshot::Sender<ReloadOutcome>>,
    pub draining: DrainList,
    pub reloads: Arc<Mutex<ReloadStats>>,
    /// The supervised instances (`process` in the status JSON).
    pub supervisor: Arc<crate::supervise::Supervisor>,
}

/// The status page: one self-contained HTML file, no CDN, no build step.
const STATUS_PAGE: &str = include_str!("status.html");

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Answers one request that arrived on a connection to `local`.
async fn handle(
    state: &AdminState,
    local: IpAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Err(refusal) = state
        .guard
        .check(local, req.method(), req.uri(), req.headers())
    {
        tracing::info!(
            method = %req.method(),
            path = req.uri().path(),
            status = refusal.status.as_u16(),
            reason = %refusal.reason,
            "admin request refused"
        );
        let mut resp = json_response(refusal.status, &json!({"error": refusal.reason}));
        if refusal.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        return resp;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/api/status") => json_response(StatusCode::OK, &status::status(state)),
        (&Method::GET, "/metrics") => metrics(state),
        (&Method::GET, "/") => {
            let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/api/reload") => reload(state).await,
        (&Method::POST, path) if path.starts_with("/api/pools/") => operator(state, path),
        (_, "/api/status" | "/api/reload") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

fn metrics(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(m) = &state.metrics else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "metrics are off"}));
    };
    let text = m.render(&status::scrape(state));
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `POST /api/pools/{pool}/backends/{id}/{drain|enable|disable}`, and
/// `POST /api/pools/{pool}/restart`.
fn operator(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["api", "pools", pool, "restart"] = parts.as_slice() {
        return restart(state, pool);
    }
    let ["api", "pools", pool, "backends", id, action] = parts.as_slice() else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    };
    let new_state = match *action {
        "drain" => Operator::Draining,
        "enable" => Operator::Enabled,
        "disable" => Operator::Disabled,
        _ => return json_response(StatusCode::NOT_FOUND, &json!({"error": "unknown action"})),
    };
    let snap = state.snapshot.load_full();
    let Some((live, backend)) = snap
        .pools
        .get(*pool)
        .and_then(|p| p.backends.iter().find(|b| &*b.id == *id).map(|b| (p, b)))
    else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no backend {id:?} in pool {pool:?}")}),
        );
    };
    backend.set_operator(new_state);
    tracing::warn!(
        pool = *pool,
        backend = *id,
        state = new_state.as_str(),
        "operator changed backend state"
    );
    json_response(
        StatusCode::OK,
        &json!({
            "pool": pool,
            "id": id,
            "state": status::backend_state(backend, live, &crate::clock::Now::lazy()),
            "open": backend.open_connections(),
        }),
    )
}

/// `POST /api/pools/{pool}/restart`: a rolling restart of a supervised
/// pool, started (202) or queued after the one under way.
fn restart(state: &AdminState, pool: &str) -> Response<Full<Bytes>> {
    let already = state.supervisor.is_restarting(pool);
    match state.supervisor.request_restart(pool) {
        Ok(instances) => {
            tracing::warn!(
                pool,
                instances,
                "rolling restart asked for through the admin API"
            );
            json_response(
                StatusCode::ACCEPTED,
                &json!({
                    "pool": pool,
                    "result": if already { "queued" } else { "restarting" },
                    "instances": instances,
                }),
            )
        }
        Err(why) => json_response(StatusCode::NOT_FOUND, &json!({"error": why})),
    }
}

async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    if state.reload.send(tx).await.is_err() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "shutting down"}),
        );
    }
    match rx.await {
        Ok(ReloadOutcome::Reloaded {
            generation,
            changes,
        }) => json_response(
            StatusCode::OK,
            &json!({"result": "reloaded", "generation": generation, "changes": changes}),
        ),
        Ok(ReloadOutcome::Rejected { errors }) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"result": "rejected", "errors": errors}),
        ),
        Ok(ReloadOutcome::Unchanged) => {
            json_response(StatusCode::OK, &json!({"result": "unchanged"}))
        }
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "shutting down"}),
        ),
    }
}
