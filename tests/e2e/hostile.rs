//! Hostile HTTP: oversized heads, smuggling shapes, control characters, odd targets,
//! pipelining, path tricks. Each gets a clear error, and the upstream sees nothing that the
//! gateway did not judge.

use authgate_tests::*;

fn config(mock: &Mock) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    keys: {{ type: api_key, keys: [{{ id: k, sha256: "0000000000000000000000000000000000000000000000000000000000000000", subject: s }}] }}
routes:
  - {{ name: admin-host, path_prefix: /, host: admin.example.com, auth: required, upstream: lms }}
  - {{ name: admin, path_prefix: /echo/admin/, auth: required, upstream: lms }}
  - {{ name: public, path_prefix: /echo/, auth: none, upstream: lms }}
"#,
        m = mock.addr
    )
}

fn req(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: api.example.com\r\n{headers}Connection: close\r\n\r\n")
        .into_bytes()
}

#[test]
fn oversized_and_malformed_heads_are_refused() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock), &[]);
    let long = format!("/echo/{}", "a".repeat(9000));
    let r = raw(gw.addr, &req(&long, ""));
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"], "uri_too_long");
    let big: String = (0..70)
        .map(|i| format!("X-Big-{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    let r = raw(gw.addr, &req("/echo/x", &big));
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(raw(gw.addr, &req("/echo/x", &many)).status, 400);

    let smuggling: [&[u8]; 3] = [
        b"POST /echo/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
        b"GET /echo/x HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: h\r\nX-Ctl: a\x01b\r\nConnection: close\r\n\r\n",
    ];
    for (i, s) in smuggling.iter().enumerate() {
        let r = raw(gw.addr, s);
        assert_eq!(r.status, 400, "shape {i}");
    }
    let r = raw(
        gw.addr,
        b"GET /echo/\x01x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // Absolute-form targets are refused by pingora's parser rather than re-routed.
    let r = raw(gw.addr, &req("http://admin.example.com/echo/x", ""));
    assert_eq!(r.status, 400);
    assert_eq!(
        mock.total(),
        0,
        "the upstream saw a request the gateway refused"
    );

    // Content-Length with Transfer-Encoding: pingora's parser lets Transfer-Encoding win and
    // drops Content-Length (RFC 9112 6.3), so the upstream sees one unambiguous request; what
    // hides behind the chunked body is parsed as a request of its own and judged (401 here).
    let r = raw(
        gw.addr,
        b"POST /echo/x HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/admin/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 0);
    assert!(!r.json()["headers"].to_string().contains("content-length"));
    let stats = mock.stats();
    assert_eq!(stats["total"], 1);
    assert!(
        stats["by_path"].get("/echo/admin/smuggled").is_none(),
        "a smuggled request reached the upstream"
    );
    mock.reset();

    // Still serving afterwards.
    assert_eq!(raw(gw.addr, &req("/echo/ok", "")).status, 200);
    // Invalid UTF-8 in a header value is opaque data (obs-text), passed on as bytes.
    assert_eq!(
        raw(gw.addr, &req("/echo/ok", "X-Bytes: a\u{fffd}b\r\n")).status,
        200
    );
}

#[test]
fn pipelined_requests_never_slip_past_judgement() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock), &[]);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /echo/admin/2 HTTP/1.1\r\nHost: h\r\n\r\nGET /echo/3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    // Served in order, each judged on its own: the protected one in the middle is refused.
    assert_eq!(statuses, vec!["200", "401", "200"], "{text}");
    assert_eq!(mock.total(), 2);
    // One after another on a kept-alive connection, each is judged and answered.
    let c = client();
    for (path, want) in [("/echo/1", 200), ("/echo/admin/2", 401), ("/echo/3", 200)] {
        assert_eq!(c.get(gw.url(path)).send().unwrap().status(), want);
    }
    assert_eq!(mock.total(), 4);
}

#[test]
fn path_and_host_tricks_stay_under_the_right_policy() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock), &[]);
    let cases: &[(&str, &str, u16)] = &[
        ("/echo/public/../admin/x", "", 401),
        ("/echo/%61dmin/x", "", 401),
        ("/echo/.%2e/echo/admin/x", "", 401),
        ("/echo/admin%2fx", "", 400),
        ("/echo/ADMIN/x", "", 200), // paths are case-sensitive: not the admin route
        ("/echo/admin;jsessionid=1/x", "", 200), // ';' parameters are part of the segment
        ("/echo/admin/x;p=1", "", 401),
        ("/echo/%EF%BC%8Fadmin/x", "", 200), // a fullwidth solidus is not a slash
        ("/echo/x", "X-Forwarded-Host: admin.example.com\r\n", 200),
    ];
    for (target, headers, want) in cases {
        let r = raw(gw.addr, &req(target, headers));
        assert_eq!(r.status, *want, "{target}");
    }
    // Host decides the host route; a Host that matches no host route falls through.
    let host = |h: &str| {
        raw(
            gw.addr,
            format!("GET /echo/x HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .status
    };
    assert_eq!(host("admin.example.com"), 401);
    assert_eq!(host("ADMIN.example.com:8080"), 401);
    assert_eq!(host("other.example.com"), 200);
    // Everything that reached the upstream was judged public.
    let forwarded = cases.iter().filter(|c| c.2 == 200).count() as u64 + 1;
    assert_eq!(mock.total(), forwarded);
}

/// Dribbles `bytes` one at a time, `gap` apart, then keeps dribbling header bytes until the
/// gateway closes the connection. Returns how long after the first byte the connection was
/// closed and what the gateway sent before closing; `None` if still open after `give_up`.
fn dribble_until_closed(
    s: &mut std::net::TcpStream,
    bytes: &[u8],
    gap: std::time::Duration,
    give_up: std::time::Duration,
) -> Option<(std::time::Duration, Vec<u8>)> {
    use std::io::{ErrorKind, Read, Write};
    s.set_read_timeout(Some(gap)).unwrap();
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut filler = b"X-Slow: ".iter().chain(std::iter::repeat(&b'a'));
    let mut next = bytes.iter().chain(&mut filler);
    while start.elapsed() < give_up {
        if s.write_all(&[*next.next().unwrap()]).is_err() {
            return Some((start.elapsed(), got));
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((start.elapsed(), got)),
        }
    }
    None
}

#[test]
fn slow_clients_are_disconnected_after_the_header_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let mock = Mock::start("m");
    let yaml = config(&mock).replace(
        "grace_period: 1s }",
        "grace_period: 1s, header_timeout: 1s }",
    );
    let gw = Gateway::start(&yaml, &[]);
    let gap = Duration::from_millis(100);
    let give_up = Duration::from_secs(15);

    // Slowloris: a head that never ends is cut after the timeout (pingora alone waits 60 s
    // per read, forever in total), with nothing sent back and nothing forwarded.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    let (after, got) = dribble_until_closed(
        &mut s,
        b"GET /echo/slow HTTP/1.1\r\nHost: h\r\n",
        gap,
        give_up,
    )
    .expect("a slow head is disconnected");
    assert!(
        after >= Duration::from_millis(900),
        "closed too early: {after:?}"
    );
    assert!(after < Duration::from_secs(8), "closed late: {after:?}");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // A client that connects and sends nothing is cut as well.
    let mut idle = std::net::TcpStream::connect(gw.addr).unwrap();
    idle.set_read_timeout(Some(give_up)).unwrap();
    let start = Instant::now();
    assert_eq!(idle.read(&mut [0u8; 64]).unwrap_or(0), 0);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );

    // A head sent in pieces but completed within the timeout is served; so is a request
    // whose upstream takes longer than the header timeout: only the head is timed.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    for piece in [
        &b"GET /echo/pieces?delay_ms=1500 HTTP/1.1\r\n"[..],
        b"Host: h\r\n",
        b"Connection: close\r\n\r\n",
    ] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    s.set_read_timeout(Some(give_up)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(mock.total(), 1);

    // On a kept-alive connection the next head gets the same limit: the first request is
    // answered, the dribbled second one is cut and never forwarded.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /echo/first HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(give_up)).unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let (after, got) = dribble_until_closed(&mut s, b"GET /echo/second HTTP/1.1\r\n", gap, give_up)
        .expect("a slow second head is disconnected");
    assert!(after < Duration::from_secs(8), "closed late: {after:?}");
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("HTTP/1.1"), "a second answer: {got:?}");
    assert_eq!(
        mock.total(),
        2,
        "only the two complete heads were forwarded"
    );

    // Every cut connection is counted; normal traffic still flows.
    let text = gw.metrics();
    assert_eq!(metric(&text, "authgate_header_timeouts_total", &[]), 3.0);
    assert_eq!(
        client().get(gw.url("/echo/after")).send().unwrap().status(),
        200
    );
}
