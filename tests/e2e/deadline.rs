//! Route deadlines (504), the deadline header upstream, retries and passive health.

use authgate_tests::*;
use std::time::{Duration, Instant};

fn config(endpoints: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: [{endpoints}], connect_timeout: 500ms, read_timeout: 700ms }}
routes:
  - {{ name: search, path_prefix: /echo/search, auth: none, deadline: 300ms, upstream: lms }}
  - {{ name: stream, path: /stream, auth: none, upstream: lms }}
  - {{ name: slowok, path_prefix: /echo/slowok, auth: none, deadline: 5s, upstream: lms }}
  - {{ name: open, path_prefix: /echo/, auth: none, upstream: lms }}
"#
    )
}

fn seen_timeout(v: &Value) -> Option<u64> {
    v["headers"]
        .as_array()?
        .iter()
        .find(|p| {
            p[0].as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("x-request-timeout-ms"))
        })
        .and_then(|p| p[1].as_str()?.parse().ok())
}

#[test]
fn deadline_gives_504_quickly_and_the_next_request_succeeds() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&format!("\"{}\"", mock.addr)), &[]);
    let started = Instant::now();
    let r = client()
        .get(gw.url("/echo/search?q=x&delay_ms=2000"))
        .send()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    assert!(took < Duration::from_millis(600), "504 after {took:?}");
    assert!(
        took >= Duration::from_millis(290),
        "504 too early: {took:?}"
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    assert_eq!(v["deadline_ms"], 300);

    let r = client().get(gw.url("/echo/search?q=x")).send().unwrap();
    assert_eq!(r.status(), 200, "the request after a timeout");
    let left = seen_timeout(&r.json().unwrap()).expect("deadline header upstream");
    assert!(left > 100 && left <= 300, "upstream saw {left} ms");

    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "authgate_upstream_timeouts_total",
            &[("route", "search")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_upstream_errors_total",
            &[("upstream", "lms"), ("kind", "timeout")]
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            "authgate_upstream_duration_seconds_count",
            &[("route", "search"), ("upstream", "lms")]
        ) >= 1.0
    );
    // The timed-out GET reached the upstream once and was not retried (a retry would go out
    // at once, before or just after the 504).
    holds_for(
        "one GET at the upstream",
        Duration::from_millis(500),
        || mock.count("GET /echo") == 2,
    );
}

#[test]
fn client_may_shorten_the_deadline_but_never_lengthen_it() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&format!("\"{}\"", mock.addr)), &[]);
    // Shorter: 150 ms applies.
    let started = Instant::now();
    let r = client()
        .get(gw.url("/echo/slowok?delay_ms=1000"))
        .header("X-Request-Timeout-Ms", "150")
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(r.json::<Value>().unwrap()["deadline_ms"], 150);
    let r = client()
        .get(gw.url("/echo/slowok"))
        .header("X-Request-Timeout-Ms", "150")
        .send()
        .unwrap();
    let left = seen_timeout(&r.json().unwrap()).unwrap();
    assert!(left <= 150, "upstream saw {left}");
    // Longer: the route's 300 ms stays.
    let r = client()
        .get(gw.url("/echo/search?delay_ms=1000"))
        .header("X-Request-Timeout-Ms", "60000")
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().unwrap()["deadline_ms"], 300);
    let r = client()
        .get(gw.url("/echo/search"))
        .header("X-Request-Timeout-Ms", "60000")
        .send()
        .unwrap();
    let left = seen_timeout(&r.json().unwrap()).unwrap();
    assert!(left <= 300, "upstream saw {left}");
    // A route without a deadline forwards none of its own.
    let r = client().get(gw.url("/echo/open")).send().unwrap();
    assert_eq!(seen_timeout(&r.json().unwrap()), None);
}

#[test]
fn a_post_that_reached_the_upstream_is_never_retried() {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let gw = Gateway::start(&config(&format!("\"{}\", \"{}\"", a.addr, b.addr)), &[]);
    let r = client()
        .post(gw.url("/echo/search?delay_ms=1500"))
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    holds_for("the POST sent once", Duration::from_millis(500), || {
        a.count("POST /echo") + b.count("POST /echo") == 1
    });
}

#[test]
fn one_endpoint_down_every_request_still_succeeds() {
    let live = Mock::start("live");
    let dead = free_port();
    let gw = Gateway::start(
        &config(&format!("\"{}\", \"127.0.0.1:{dead}\"", live.addr)),
        &[],
    );
    for i in 0..20 {
        let r = client()
            .get(gw.url(&format!("/echo/open/{i}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
    }
    let text = gw.metrics();
    let refused = metric(
        &text,
        "authgate_upstream_errors_total",
        &[("upstream", "lms"), ("kind", "connect_refused")],
    );
    // Retried on the live endpoint, and taken out of rotation after a few failures.
    assert!(
        (1.0..=3.0).contains(&refused),
        "{refused} refused connections"
    );
    assert_eq!(
        metric(
            &text,
            "authgate_upstream_healthy_endpoints",
            &[("upstream", "lms")]
        ),
        1.0
    );
    // A POST is not retried even when its connection was refused: it either reached the live
    // endpoint once or failed.
    assert_eq!(live.count("GET /echo"), 20);
}

#[test]
fn all_endpoints_down_is_a_quick_502() {
    let (p1, p2) = (free_port(), free_port());
    let gw = Gateway::start(
        &config(&format!("\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"")),
        &[],
    );
    for _ in 0..5 {
        let started = Instant::now();
        let r = client().get(gw.url("/echo/open")).send().unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.json::<Value>().unwrap()["error"], "upstream_unavailable");
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
    }
    let r = client().get(gw.admin_url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 503, "no healthy endpoint left");
}

#[test]
fn a_stalled_body_is_cut_by_the_read_timeout() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&format!("\"{}\"", mock.addr)), &[]);
    let mut r = client()
        .get(gw.url("/stream?chunks=3&interval_ms=2000&chunk_size=5"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let mut body = Vec::new();
    let res = std::io::Read::read_to_end(&mut r, &mut body);
    assert!(
        res.is_err() || body.len() < 15,
        "the stalled body was delivered whole"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
