//! Forwarding, routing, normalisation, error bodies, admin endpoints, shutdown and `check`.

use authgate_tests::*;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// One upstream (the mock), a public echo route, a protected route and a strict body limit.
fn config() -> String {
    r#"
server:
  listen: ["${AG_LISTEN}"]
  max_request_body: 64KiB
  grace_period: 5s
admin: { listen: "${AG_ADMIN}" }
upstreams:
  lms:
    endpoints: ["${MOCK}"]
    health_check: { path: /health/, interval: 200ms }
auth:
  providers:
    keys:
      type: api_key
      keys: [{ id: k, sha256: "0000000000000000000000000000000000000000000000000000000000000000", subject: s }]
routes:
  - { name: public, path_prefix: /echo/public/, auth: none, upstream: lms }
  - { name: private, path_prefix: /echo/private/, auth: required, upstream: lms }
  - { name: ws, path: /ws, auth: none, upstream: lms }
  - { name: stream, path: /stream, auth: none, upstream: lms }
  - { name: rest, path_prefix: /echo/, methods: [GET, POST, PUT, DELETE, PATCH], auth: none, upstream: lms }
"#
    .to_string()
}

fn start() -> (Mock, Gateway) {
    let mock = Mock::start("m1");
    let gw = Gateway::start(&config(), &[("MOCK", &mock.addr.to_string())]);
    (mock, gw)
}

fn echo_headers(v: &Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_ascii_lowercase(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn forwards_methods_bodies_and_query_strings_byte_for_byte() {
    let (_mock, gw) = start();
    let c = client();
    let body = b"{\"name\": \"caf\xc3\xa9\", \"n\": 1}".to_vec();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let send_body = method != "GET";
        let mut req = c.request(m, gw.url("/echo/items/42?q=yoga+mat&tag=a&tag=b"));
        if send_body {
            req = req.body(body.clone());
        }
        let resp = req.send().expect("send");
        assert_eq!(resp.status(), 200, "{method}");
        let v: Value = resp.json().expect("json");
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/echo/items/42");
        assert_eq!(v["query"], "q=yoga+mat&tag=a&tag=b");
        if send_body {
            assert_eq!(
                v["body_sha256"],
                hex::encode(Sha256::digest(&body)),
                "{method}"
            );
        }
    }
    // Spaces, unicode and reserved characters in the query arrive exactly as sent.
    let target = "/echo/search?q=yoga%20mat&q=caf%C3%A9&empty=&plus=a+b&x=%2F%3F%26";
    let r = raw_get(gw.addr, target, "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["query"],
        "q=yoga%20mat&q=caf%C3%A9&empty=&plus=a+b&x=%2F%3F%26"
    );
}

#[test]
fn large_bodies_stream_both_ways() {
    let (_mock, gw) = start_with_big_limit();
    let body: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
    let v: Value = client()
        .post(gw.url("/echo/upload"))
        .body(body.clone())
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(v["body_len"], 5 << 20);
    assert_eq!(v["body_sha256"], hex::encode(Sha256::digest(&body)));
    // A chunked response arrives chunk by chunk, not buffered to the end.
    let started = Instant::now();
    let mut resp = client()
        .get(gw.url("/stream?chunks=5&interval_ms=300&chunk_size=10"))
        .send()
        .expect("send");
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut resp, &mut first).expect("first byte");
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut resp, &mut rest).expect("rest");
    assert_eq!(rest.len() + 1, 50);
    assert!(
        first_at < Duration::from_millis(1000),
        "first chunk after {first_at:?}: buffered?"
    );
    assert!(started.elapsed() >= Duration::from_millis(1200));
}

fn start_with_big_limit() -> (Mock, Gateway) {
    let mock = Mock::start("m1");
    let gw = Gateway::start(
        &config().replace("max_request_body: 64KiB", "max_request_body: 8MiB"),
        &[("MOCK", &mock.addr.to_string())],
    );
    (mock, gw)
}

#[test]
fn adds_forwarding_headers_and_strips_forged_and_hop_by_hop_ones() {
    let (_mock, gw) = start();
    let resp = raw(
        gw.addr,
        "GET /echo/h HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Request-Id: client-id-1\r\nX-Auth-Subject: admin\r\nx-auth-scopes: all\r\nX-Auth-Provider: me\r\n\
             Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nTrailer: X-T\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nAuthorization: Bearer abc\r\n\r\n"
        .as_bytes(),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("client-id-1"));
    let h = echo_headers(&resp.json());
    assert_eq!(
        header(&h, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&h, "x-forwarded-host"), Some("api.example.com"));
    assert_eq!(header(&h, "x-request-id"), Some("client-id-1"));
    assert_eq!(header(&h, "authorization"), Some("Bearer abc"));
    for gone in [
        "x-auth-subject",
        "x-auth-scopes",
        "x-auth-provider",
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "upgrade",
        "http2-settings",
        "connection",
    ] {
        assert_eq!(header(&h, gone), None, "{gone} must not reach the upstream");
    }
    // A malformed request id is replaced by a fresh UUID, and the same id is sent both ways.
    let resp = raw_get(gw.addr, "/echo/h", "X-Request-Id: bad id with spaces\r\n");
    let id = resp.header("x-request-id").expect("id").to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(
        header(&echo_headers(&resp.json()), "x-request-id"),
        Some(id.as_str())
    );
}

#[test]
fn paths_are_normalised_before_routing_and_forwarding() {
    let (mock, gw) = start();
    let cases = [
        ("//echo//public/./a/../b", "/echo/public/b"),
        ("/echo/public/%61%62c", "/echo/public/abc"),
        ("/echo/public/x/%2e%2e/y", "/echo/public/y"),
        ("/echo/public/caf%c3%a9", "/echo/public/caf%C3%A9"),
        ("/echo/public/a/b/..", "/echo/public/a/"),
    ];
    for (sent, want) in cases {
        let r = raw_get(gw.addr, sent, "");
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], want, "{sent}");
    }
    // Every spelling of a protected path is judged by the protected route, and none reaches
    // the upstream without credentials.
    mock.reset();
    for sneaky in [
        "/echo/public/../private/x",
        "/echo/public/%2e%2e/private/x",
        "/echo/public/.%2E/private/x",
        "//echo/private/x",
        "/echo/./private/x",
        "/echo/%70rivate/x",
    ] {
        let r = raw_get(gw.addr, sneaky, "");
        assert_eq!(r.status, 401, "{sneaky} must hit the private route");
        assert_eq!(r.json()["error"], "missing_token", "{sneaky}");
    }
    for refused in [
        "/echo/public/..%2fprivate/x",
        "/echo/public/%5c..%5cprivate",
        "/echo/public/%zz",
    ] {
        let r = raw_get(gw.addr, refused, "");
        assert_eq!(r.status, 400, "{refused}");
        assert_eq!(r.json()["error"], "bad_request");
    }
    assert_eq!(
        mock.total(),
        0,
        "the upstream saw a request that should have been refused"
    );
}

#[test]
fn gateway_answers_are_contract_json() {
    let (mock, gw) = start();
    let r = raw_get(gw.addr, "/nothing/here", "X-Request-Id: trace-404\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some("trace-404"));
    let v = r.json();
    assert_eq!(v["error"], "not_found");
    assert_eq!(v["request_id"], "trace-404");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Method not listed on the route: no other route matches either.
    let r = raw(
        gw.addr,
        format!(
            "OPTIONS /echo/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 404);

    // Over max_request_body, declared up front.
    let big = vec![b'x'; 65 * 1024];
    let resp = client()
        .post(gw.url("/echo/up"))
        .body(big.clone())
        .send()
        .expect("send");
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().expect("json");
    assert_eq!(v["error"], "payload_too_large");
    assert_eq!(
        mock.count("POST /echo"),
        0,
        "a body declared too large reached the upstream"
    );

    // Over the limit in a chunked body, discovered while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'y'; 8 * 1024])).collect();
    let resp = client()
        .post(gw.url("/echo/up"))
        .body(reqwest::blocking::Body::new(ChunkReader::new(chunks)))
        .send();
    match resp {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert_eq!(
                r.json::<Value>().expect("json")["error"],
                "payload_too_large"
            );
        }
        // The gateway may close the connection before the client finished sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // A streamed body is forwarded as it arrives, so the upstream may have seen the start of
    // it; the gateway cut it off at the limit, so no complete oversized body got through.
    assert!(
        mock.count("POST /echo") <= 1,
        "the oversized body was forwarded more than once"
    );
}

/// A `Read` over chunks, so reqwest sends the body with chunked encoding.
struct ChunkReader {
    chunks: std::collections::VecDeque<Vec<u8>>,
}

impl ChunkReader {
    fn new(chunks: Vec<Result<Vec<u8>, std::io::Error>>) -> Self {
        ChunkReader {
            chunks: chunks.into_iter().map(|c| c.unwrap()).collect(),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut chunk) = self.chunks.pop_front() else {
            return Ok(0);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            chunk.drain(..n);
            self.chunks.push_front(chunk);
        }
        Ok(n)
    }
}

#[test]
fn upstream_down_is_502_and_not_ready() {
    let mut mock = Mock::start("m1");
    let gw = Gateway::start(&config(), &[("MOCK", &mock.addr.to_string())]);
    gw.wait_ready();
    let resp = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .expect("readyz");
    assert_eq!(resp.status(), 200);
    mock.proc.kill();
    let r = raw_get(gw.addr, "/echo/x", "");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    wait_until("/readyz to report the dead upstream", WAIT, || {
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 503)
    });
    // Health check out of rotation: still a quick, clean 502.
    let started = Instant::now();
    let r = raw_get(gw.addr, "/echo/x", "");
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .expect("healthz")
            .status(),
        200
    );
}

#[test]
fn round_robin_over_healthy_endpoints() {
    let a = Mock::start("a");
    let mut b = Mock::start("b");
    let yaml = config().replace(
        r#"endpoints: ["${MOCK}"]"#,
        r#"endpoints: ["${MOCK_A}", "${MOCK_B}"]"#,
    );
    let gw = Gateway::start(
        &yaml,
        &[
            ("MOCK_A", &a.addr.to_string()),
            ("MOCK_B", &b.addr.to_string()),
        ],
    );
    gw.wait_ready();
    let names = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let r = client().get(gw.url("/echo/rr")).send().expect("send");
                assert_eq!(r.status(), 200);
                r.headers()["x-mock-name"].to_str().unwrap().to_string()
            })
            .collect()
    };
    let seen = names(10);
    assert_eq!(seen.iter().filter(|n| *n == "a").count(), 5, "{seen:?}");
    assert_eq!(seen.iter().filter(|n| *n == "b").count(), 5, "{seen:?}");
    // b goes away; once its health check fails, every request goes to a.
    b.proc.kill();
    wait_until("b to leave rotation", WAIT, || {
        gw.metrics()
            .contains("authgate_upstream_healthy_endpoints{upstream=\"lms\"} 1")
    });
    assert!(names(10).iter().all(|n| n == "a"));
}

#[test]
fn websocket_upgrade_passes_through() {
    let (_mock, gw) = start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
        )
        .await
        .expect("in time")
        .expect("websocket handshake through the gateway");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello through authgate"))
            .await
            .expect("send");
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("in time");
        assert_eq!(
            msg.expect("message")
                .expect("ok")
                .into_text()
                .expect("text"),
            "hello through authgate"
        );
    });
}

#[test]
fn metrics_count_requests_by_route_method_and_status() {
    let (_mock, gw) = start();
    for _ in 0..3 {
        raw_get(gw.addr, "/echo/m", "");
    }
    raw_get(gw.addr, "/nowhere", "");
    raw_get(gw.addr, "/nowhere/else", "");
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "authgate_requests_total",
            &[("route", "rest"), ("method", "GET"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_request_duration_seconds_count",
            &[("route", "rest")]
        ),
        3.0
    );
    assert_eq!(metric(&text, "authgate_build_info", &[]), 1.0);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let (mock, mut gw) = start();
    let url = gw.url("/echo/slow?delay_ms=1500");
    let slow = std::thread::spawn(move || {
        let r = client().get(url).send().expect("slow request completes");
        (r.status().as_u16(), Instant::now())
    });
    wait_until(
        "the slow request at the upstream",
        Duration::from_secs(5),
        || mock.count("GET /echo") >= 1,
    );
    let signalled = Instant::now();
    gw.proc.signal(nix::sys::signal::Signal::SIGTERM);
    // New connections are refused soon after the signal.
    wait_until("the listener to close", Duration::from_secs(3), || {
        std::net::TcpStream::connect_timeout(&gw.addr, Duration::from_millis(100)).is_err()
    });
    let (status, done_at) = slow.join().expect("thread");
    assert_eq!(status, 200, "the in-flight request was cut off");
    let exit = gw
        .proc
        .wait_exit(Duration::from_secs(8))
        .expect("exits within the grace period");
    assert!(exit.success(), "exit status {exit:?}");
    // It exits once drained, not after the whole 5 s grace period.
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(done_at >= signalled);
}

/// Runs `authgate check --config FILE`.
fn check(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(bin("authgate"))
        .args(["check", "--config"])
        .arg(file)
        // For files written for `Gateway::start`, which sets these.
        .env("AG_LISTEN", "127.0.0.1:1")
        .env("AG_ADMIN", "127.0.0.1:2")
        .output()
        .unwrap()
}

#[test]
fn check_refuses_what_start_up_would_refuse() {
    // Files that compile, and that start-up then refuses while building the version: `check`
    // builds it too (offline), so it refuses them with the same words.
    let dir = TestDir::new("check-build");
    authgate_tests::certs::self_signed(&dir.path(""), false);
    std::fs::rename(dir.path("server.key"), dir.path("first.key")).unwrap();
    std::fs::rename(dir.path("server.pem"), dir.path("first.pem")).unwrap();
    authgate_tests::certs::self_signed(&dir.path(""), false);
    let cases = [
        (
            "a health-check path no request line can carry",
            "upstreams: { lms: { endpoints: ['127.0.0.1:9'], health_check: { path: '/health/ x', interval: 5s } } }\nroutes: [{ name: a, path_prefix: /, auth: none, upstream: lms }]\n".to_string(),
            "health check path",
        ),
        (
            "a listener key that is not its certificate's",
            format!(
                "server: {{ listen: ['${{AG_LISTEN}}'], tls: {{ listen: '127.0.0.1:{}', cert_file: {}, key_file: {} }} }}\nadmin: {{ listen: '${{AG_ADMIN}}' }}\nupstreams: {{ lms: {{ endpoints: ['127.0.0.1:9'] }} }}\nroutes: [{{ name: a, path_prefix: /, auth: none, upstream: lms }}]\n",
                free_port(),
                dir.path("first.pem").display(),
                dir.path("server.key").display()
            ),
            "is not the key of the certificate",
        ),
    ];
    for (what, yaml, says) in cases {
        let file = dir.path("case.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let out = check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        let err = Gateway::try_start(&yaml, &[]).err().expect(what);
        assert!(err.contains(says), "{what}: start-up says {err}");
    }
    // The boundary: `check` is offline, so a host name it cannot resolve here is not its
    // business (start-up resolves it where it runs).
    let file = dir.path("dns.yaml");
    std::fs::write(
        &file,
        "upstreams: { lms: { endpoints: ['lms.internal.invalid:8000'] } }\nroutes: [{ name: a, path_prefix: /, auth: none, upstream: lms }]\n",
    )
    .unwrap();
    assert!(check(&file).status.success());
}

#[test]
fn check_subcommand_reports_good_and_bad_files() {
    let dir = TestDir::new("check");
    let good = dir.path("good.yaml");
    std::fs::write(
        &good,
        "upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }\nroutes: [{ name: a, path_prefix: /, auth: none, upstream: lms }]\n",
    )
    .unwrap();
    let out = check(&good);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("1 routes"), "{stdout}");

    let bad = dir.path("bad.yaml");
    std::fs::write(
        &bad,
        "server:\n  grace_period: soon\nupstreams:\n  lms: { endpoints: [] }\nroutes:\n  - { name: a, path_prefix: /, auth: none, upstream: ghost }\n",
    )
    .unwrap();
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.grace_period"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    // Structurally valid but semantically wrong: every problem listed.
    std::fs::write(&bad, "upstreams:\n  lms: { endpoints: [] }\nroutes:\n  - { name: a, path_prefix: /, auth: none, upstream: ghost }\n").unwrap();
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstreams.lms.endpoints"), "{stderr}");
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"ghost\""),
        "{stderr}"
    );

    // The gateway itself refuses to start on a bad file, naming the problem.
    let err = Gateway::try_start("upstreams: {}\nroutes: []\n", &[])
        .err()
        .expect("must not start");
    assert!(err.contains("upstreams"), "{err}");
}
