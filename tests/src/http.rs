//! Small HTTP clients for tests: HTTP/1.1 keep-alive and HTTP/2 prior
//! knowledge, plus raw-socket helpers for requests no client library sends.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type TestClient = Client<HttpConnector, Body>;

/// A keep-alive HTTP/1.1 client.
pub fn h1() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 client with prior knowledge (h2c, no upgrade dance).
pub fn h2() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends a request and reads the whole response.
pub async fn send(client: &TestClient, req: http::Request<Body>) -> Reply {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` and read the whole response.
pub async fn get(client: &TestClient, url: &str) -> Reply {
    let req = http::Request::get(url).body(empty()).unwrap();
    send(client, req).await
}

/// POST `body` to `url` and read the whole response.
pub async fn post(client: &TestClient, url: &str, body: impl Into<Bytes>) -> Reply {
    let req = http::Request::post(url).body(full(body)).unwrap();
    send(client, req).await
}

/// A state-changing admin call as operators' tools make it: POST `url`
/// with the header that tells it from a browser's cross-site form post,
/// and the bearer `token` if given.
pub async fn post_admin(client: &TestClient, url: &str, token: Option<&str>) -> Reply {
    let mut req = http::Request::post(url).header("x-admin-request", "1");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(client, req.body(empty()).unwrap()).await
}

/// GET `url` with a `Host` header.
pub async fn get_host(client: &TestClient, url: &str, host: &str) -> Reply {
    let req = http::Request::get(url)
        .header(http::header::HOST, host)
        .body(empty())
        .unwrap();
    send(client, req).await
}

/// Writes raw bytes on a new connection and reads until the server closes
/// it or `limit` passes; returns what was read.
pub async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET http://addr{path}`'s body (the admin API, metrics).
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    get(&h1(), &format!("http://{addr}{path}")).await.text()
}

/// [`get_text`] from a test without a runtime.
pub fn blocking_get(addr: SocketAddr, path: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(get_text(addr, path))
}

/// The value of the first sample of `metrics` whose line starts with
/// `series` (name and labels, as rendered).
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
