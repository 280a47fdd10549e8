//! The floor of a proxy on authgate's pingora: the plain proxy of the stock anchors
//! (`bench/pingora-stock`: one `upstream_peer` phase, pooled upstream connections, mimalloc,
//! work stealing off), built against the workspace's patched pingora (third_party/,
//! PATCHES.md), with mimalloc through authgate-alloc and header-case preservation off on both
//! sides, as authgate runs it (patch 2).
//! No authentication, limits, metrics or timeouts: what any proxy on this pingora pays per
//! request before doing anything of its own.
//!
//! `pingora-floor --listen 127.0.0.1:8083 --upstream 127.0.0.1:8000 --threads 1`

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: authgate_alloc::MiMalloc = authgate_alloc::MiMalloc;

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.discard_header_case = true;
        Ok(Box::new(peer))
    }
}

const USAGE: &str = "usage: pingora-floor --listen ADDR --upstream ADDR [--threads N]";

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut threads) = (None, None, 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--upstream" => {
                upstream = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--upstream {value}: {e}"))?,
                )
            }
            "--threads" => {
                threads = value
                    .parse()
                    .map_err(|e| format!("--threads {value}: {e}"))?
            }
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
            eprintln!("pingora-floor: {e}");
            return ExitCode::from(2);
        }
    };
    // As the anchors: default ServerConf but threads, short grace periods, no work stealing.
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut http = pingora_proxy::http_proxy(
        &server.configuration,
        Floor {
            upstream: args.upstream,
        },
    );
    let mut options = HttpServerOptions::default();
    options.discard_header_case = true;
    http.server_options = Some(options);
    let mut proxy = Service::new("pingora-floor".to_string(), http);
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    eprintln!(
        "pingora-floor listening on {} -> {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
