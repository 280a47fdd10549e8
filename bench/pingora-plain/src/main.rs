//! A stock pingora 0.9 plain HTTP proxy: the baseline authgate is measured against.
//!
//! Deliberately untuned: default `ServerConf` (work stealing on, glibc malloc, default
//! keepalive pool) except `threads` and short grace periods so it stops fast. The only
//! `ProxyHttp` phase implemented is `upstream_peer`; upstream connections are pooled and
//! reused by pingora (keepalive), as in any pingora proxy.
//!
//! `pingora-plain --listen 127.0.0.1:8081 --upstream 127.0.0.1:8000 --threads 1`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;
use std::process::ExitCode;

struct Plain {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
}

const USAGE: &str = "usage: pingora-plain --listen ADDR --upstream ADDR [--threads N]";

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--upstream" => {
                let v = value()?;
                upstream = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--upstream {v}: {e}"))?,
                );
            }
            "--threads" => {
                let v = value()?;
                threads = v.parse().map_err(|e| format!("--threads {v}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?,
        upstream: upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?,
        threads: threads.max(1),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Plain {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    eprintln!(
        "pingora-plain listening on {} -> {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
