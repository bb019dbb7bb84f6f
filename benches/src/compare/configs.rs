//! The config files of the proxies, as text. Every proxy gets the same
//! set-up: round robin over the same backends, keep-alive to the clients
//! (120 s, no request limit) and to the backends (up to 1024 idle
//! connections), WebSocket tunnels with no or a one-hour idle limit, no
//! access log. Config generation `g` differs from `g - 1` in the first
//! backend's weight (1 when even, 2 when odd) and, for nginx and HAProxy,
//! the value of an `X-Gen` response header: the change of the reload test.
//!
//! Every proxy also listens on a second port that terminates TLS with the
//! same certificate ([`TlsFiles`]) and serves the same routes; the backends
//! stay plaintext. The TLS settings are each proxy's way of saying the
//! same thing: TLS 1.2 and 1.3, the library's default ciphers and groups,
//! ALPN `h2` and `http/1.1`, a server-side session cache and session
//! tickets both on:
//!
//! | | balancer (rustls 0.23, ring) | nginx (OpenSSL) | HAProxy (OpenSSL) |
//! |---|---|---|---|
//! | versions | `min_version = "1.2"` | `ssl_protocols TLSv1.2 TLSv1.3` | `ssl-default-bind-options ssl-min-ver TLSv1.2` |
//! | ALPN | `http2 = true` | `listen ... ssl http2` | `alpn h2,http/1.1` |
//! | session cache | `session_cache = 10000` (entries) | `ssl_session_cache shared:SSL:10m` | `tune.ssl.cachesize 20000` (its default) |
//! | tickets | `session_tickets = true` | `ssl_session_tickets on` | on (its default) |
//! | ciphers | rustls's defaults | `ssl_ciphers` default (`HIGH:!aNULL:!MD5`) | its default |

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::tls::TlsFiles;

/// The name of the balancer's TLS listener (its log line gives the port).
pub const BALANCER_TLS_LISTENER: &str = "bench-tls";

/// The first backend's weight in config generation `generation`.
fn weight(generation: u32, backend: usize) -> u32 {
    if backend == 0 && generation % 2 == 1 {
        2
    } else {
        1
    }
}

/// The balancer's config file.
pub fn balancer_config(upstreams: &[SocketAddr], tls: &TlsFiles, generation: u32) -> String {
    let mut s = format!(
        "# Written by benches' compare (generation {generation}).\n\
         [[listener]]\nname = \"bench\"\naddress = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"{BALANCER_TLS_LISTENER}\"\naddress = \"127.0.0.1:0\"\n\n\
         \x20 [[listener.certificate]]\n  cert = {:?}\n  key = {:?}\n\n\
         \x20 [listener.tls]\n  min_version = \"1.2\"\n  http2 = true\n\
         \x20 session_tickets = true\n  session_cache = 10000\n\n\
         [[pool]]\nname = \"up\"\npolicy = \"round_robin\"\n\
         max_idle_per_backend = {}\n",
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
        1024 / upstreams.len().max(1)
    );
    for (i, a) in upstreams.iter().enumerate() {
        let _ = write!(
            s,
            "\n  [[pool.backend]]\n  id = \"up-{}\"\n  address = \"{a}\"\n  weight = {}\n",
            i + 1,
            weight(generation, i)
        );
    }
    s.push_str(
        "\n[[route]]\nlistener = \"bench\"\npath_prefix = \"/\"\npool = \"up\"\n\n\
         [[route]]\nlistener = \"bench-tls\"\npath_prefix = \"/\"\npool = \"up\"\n\n\
         [timeouts]\nrequest_header = \"120s\"\nclient_idle = \"120s\"\n\
         websocket_idle = \"none\"\nshutdown_grace = \"2s\"\n\n\
         # Every client is 127.0.0.1 here, and nginx and HAProxy have no\n\
         # per-address cap by default.\n\
         [limits]\nmax_connections_per_ip = 0\n",
    );
    s
}

/// nginx's config file; every path in `dir`; `ports` plaintext and TLS.
pub fn nginx_config(
    dir: &Path,
    ports: (u16, u16),
    tls: &TlsFiles,
    workers: u8,
    upstreams: &[SocketAddr],
    generation: u32,
) -> String {
    let d = dir.display();
    let (port, tls_port) = ports;
    let (cert, key) = (tls.cert.display(), tls.key.display());
    let mut servers = String::new();
    for (i, a) in upstreams.iter().enumerate() {
        let _ = writeln!(
            servers,
            "        server {a} weight={};",
            weight(generation, i)
        );
    }
    format!(
        "# Written by benches' compare (generation {generation}).
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log notice;

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;

    upstream backends {{
{servers}        keepalive 1024;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=1024;
        listen 127.0.0.1:{tls_port} ssl http2 backlog=1024;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;

        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            add_header X-Gen {generation};
        }}

        location /ws {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    )
}

/// HAProxy's config file (no `log` line: no logging); `ports` plaintext
/// and TLS.
pub fn haproxy_config(
    dir: &Path,
    ports: (u16, u16),
    tls: &TlsFiles,
    threads: u8,
    upstreams: &[SocketAddr],
    generation: u32,
) -> String {
    let (port, tls_port) = ports;
    let mut servers = String::new();
    for (i, a) in upstreams.iter().enumerate() {
        let _ = writeln!(
            servers,
            "    server up-{} {a} weight {}",
            i + 1,
            weight(generation, i)
        );
    }
    format!(
        "# Written by benches' compare (generation {generation}).
global
    nbthread {threads}
    maxconn 9000
    pidfile {d}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn 9000
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 120s
    timeout http-keep-alive 120s
    timeout tunnel 1h

frontend bench
    bind 127.0.0.1:{port} backlog 1024
    bind 127.0.0.1:{tls_port} ssl crt {bundle} alpn h2,http/1.1 backlog 1024
    http-response set-header X-Gen {generation}
    default_backend up

backend up
    balance roundrobin
{servers}",
        d = dir.display(),
        bundle = tls.bundle.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<SocketAddr> {
        vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ]
    }

    #[test]
    fn balancer_config_is_valid_and_toggles_the_weight() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::generate(dir.path()).unwrap();
        for generation in [0, 1] {
            let text = balancer_config(&ups(), &tls, generation);
            let path = dir.path().join("b.toml");
            std::fs::write(&path, &text).unwrap();
            let c = config::load(&path).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
            assert_eq!(c.pools[0].backends.len(), 2);
            assert_eq!(c.pools[0].backends[0].weight, 1 + generation);
            assert_eq!(c.pools[0].backends[1].weight, 1);
            assert_eq!(c.listeners.len(), 2);
            assert_eq!(c.routes.len(), 2);
        }
    }

    #[test]
    fn proxy_configs_name_both_backends_and_the_port() {
        let tmp = tempfile::tempdir().unwrap();
        let tls = TlsFiles::generate(tmp.path()).unwrap();
        let dir = Path::new("/tmp/x");
        let n = nginx_config(dir, (18080, 18443), &tls, 2, &ups(), 3);
        assert!(n.contains("worker_processes 2;"));
        assert!(n.contains("listen 127.0.0.1:18080"));
        assert!(n.contains("listen 127.0.0.1:18443 ssl http2"));
        assert!(n.contains(&format!("ssl_certificate {};", tls.cert.display())));
        assert!(n.contains("ssl_session_cache shared:SSL:10m;"));
        assert!(n.contains("server 127.0.0.1:9001 weight=2;"));
        assert!(n.contains("server 127.0.0.1:9002 weight=1;"));
        assert!(n.contains("keepalive 1024;"));
        assert!(n.contains("pid /tmp/x/nginx.pid;"));
        let h = haproxy_config(dir, (18081, 18444), &tls, 1, &ups(), 2);
        assert!(h.contains("nbthread 1"));
        assert!(h.contains("bind 127.0.0.1:18081"));
        assert!(h.contains(&format!(
            "bind 127.0.0.1:18444 ssl crt {} alpn h2,http/1.1",
            tls.bundle.display()
        )));
        assert!(h.contains("server up-1 127.0.0.1:9001 weight 1"));
        assert!(h.contains("http-reuse always"));
        assert!(h.contains("timeout tunnel 1h"));
        assert!(!h.contains("\n    log "));
    }
}
