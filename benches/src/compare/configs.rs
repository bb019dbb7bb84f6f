//! The config files of the proxies, as text. Every proxy gets the same
//! set-up: round robin over the same backends, keep-alive to the clients
//! (120 s, no request limit) and to the backends (up to 1024 idle
//! connections), WebSocket tunnels with no or a one-hour idle limit, no
//! access log. Config generation `g` differs from `g - 1` in the first
//! backend's weight (1 when even, 2 when odd) and, for nginx and HAProxy,
//! the value of an `X-Gen` response header: the change of the reload test.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The first backend's weight in config generation `generation`.
fn weight(generation: u32, backend: usize) -> u32 {
    if backend == 0 && generation % 2 == 1 {
        2
    } else {
        1
    }
}

/// The balancer's config file.
pub fn balancer_config(upstreams: &[SocketAddr], generation: u32) -> String {
    let mut s = format!(
        "# Written by benches' compare (generation {generation}).\n\
         [[listener]]\nname = \"bench\"\naddress = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"up\"\npolicy = \"round_robin\"\n\
         max_idle_per_backend = {}\n",
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
         [timeouts]\nrequest_header = \"120s\"\nclient_idle = \"120s\"\n\
         websocket_idle = \"none\"\nshutdown_grace = \"2s\"\n",
    );
    s
}

/// nginx's config file; every path in `dir`.
pub fn nginx_config(
    dir: &Path,
    port: u16,
    workers: u8,
    upstreams: &[SocketAddr],
    generation: u32,
) -> String {
    let d = dir.display();
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

/// HAProxy's config file (no `log` line: no logging).
pub fn haproxy_config(
    dir: &Path,
    port: u16,
    threads: u8,
    upstreams: &[SocketAddr],
    generation: u32,
) -> String {
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
    http-response set-header X-Gen {generation}
    default_backend up

backend up
    balance roundrobin
{servers}",
        d = dir.display()
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
        for generation in [0, 1] {
            let text = balancer_config(&ups(), generation);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.toml");
            std::fs::write(&path, &text).unwrap();
            let c = config::load(&path).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
            assert_eq!(c.pools[0].backends.len(), 2);
            assert_eq!(c.pools[0].backends[0].weight, 1 + generation);
            assert_eq!(c.pools[0].backends[1].weight, 1);
        }
    }

    #[test]
    fn proxy_configs_name_both_backends_and_the_port() {
        let dir = Path::new("/tmp/x");
        let n = nginx_config(dir, 18080, 2, &ups(), 3);
        assert!(n.contains("worker_processes 2;"));
        assert!(n.contains("listen 127.0.0.1:18080"));
        assert!(n.contains("server 127.0.0.1:9001 weight=2;"));
        assert!(n.contains("server 127.0.0.1:9002 weight=1;"));
        assert!(n.contains("keepalive 1024;"));
        assert!(n.contains("pid /tmp/x/nginx.pid;"));
        let h = haproxy_config(dir, 18081, 1, &ups(), 2);
        assert!(h.contains("nbthread 1"));
        assert!(h.contains("bind 127.0.0.1:18081"));
        assert!(h.contains("server up-1 127.0.0.1:9001 weight 1"));
        assert!(h.contains("http-reuse always"));
        assert!(h.contains("timeout tunnel 1h"));
        assert!(!h.contains("\n    log "));
    }
}
