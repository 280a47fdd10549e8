//! A pingora 0.9 plain HTTP proxy, shared by the two baselines authgate is measured against:
//! `pingora-plain` (stock) and `pingora-tuned` (mimalloc, work stealing off).
//!
//! Default `ServerConf` (default keepalive pool) except `threads`, short grace periods so it
//! stops fast, and, for the tuned one, `work_stealing`. The only `ProxyHttp` phase implemented
//! is `upstream_peer`; upstream connections are pooled and reused by pingora (keepalive), as in
//! any pingora proxy.

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

const USAGE: &str = "usage: --listen ADDR --upstream ADDR [--threads N]";

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

/// How the baseline differs from pingora's defaults.
pub struct Tuning {
    /// The binary's name, for messages.
    pub name: &'static str,
    /// pingora's default is `true`.
    pub work_stealing: bool,
}

pub fn run(tuning: Tuning) -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", tuning.name);
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: tuning.work_stealing,
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
        "{} listening on {} -> {} ({} thread(s))",
        tuning.name, args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
