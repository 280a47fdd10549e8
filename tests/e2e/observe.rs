//! Metrics with exact values, bounded series, access logs, and live reload.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn config(upstream: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  a: {{ endpoints: ["${{MOCK_A}}"] }}
  b: {{ endpoints: ["${{MOCK_B}}"] }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
rate_limits:
  tight: {{ rate: 1/m, burst: 2, key: client_ip }}
routes:
  - {{ name: limited, path_prefix: /echo/limited/, auth: none, rate_limit: tight, upstream: {upstream} }}
  - {{ name: api, path_prefix: /echo/, auth: required, upstream: {upstream} }}
"#
    )
}

struct Setup {
    a: Mock,
    b: Mock,
    gw: Gateway,
}

fn start() -> Setup {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let gw = Gateway::start(
        &config("a"),
        &[
            ("MOCK_A", &a.addr.to_string()),
            ("MOCK_B", &b.addr.to_string()),
            ("JWT_SECRET", MOCK_JWT_SECRET),
        ],
    );
    Setup { a, b, gw }
}

fn scrape(gw: &Gateway) -> prometheus_parse::Scrape {
    let text = gw.metrics();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name}{labels:?} matches {} series",
        matching.len()
    );
    matching.first().copied().unwrap_or(0.0)
}

fn token() -> String {
    sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 5, "exp": now() + 600}),
    )
}

#[test]
fn counters_match_a_scripted_mix_exactly() {
    let s = start();
    let c = client();
    let t = token();
    for _ in 0..3 {
        assert_eq!(
            c.get(s.gw.url("/echo/x?secret=q"))
                .bearer_auth(&t)
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(c.get(s.gw.url("/echo/x")).send().unwrap().status(), 401);
    }
    assert_eq!(
        c.get(s.gw.url("/echo/x"))
            .bearer_auth("a.b.c")
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(c.post(s.gw.url("/elsewhere")).send().unwrap().status(), 404);
    for want in [200, 200, 429, 429] {
        assert_eq!(
            c.get(s.gw.url("/echo/limited/x")).send().unwrap().status(),
            want
        );
    }
    let m = scrape(&s.gw);
    let req = |route, method, status| {
        value(
            &m,
            "authgate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(req("api", "GET", "200"), 3.0);
    assert_eq!(req("api", "GET", "401"), 3.0);
    assert_eq!(req("unmatched", "POST", "404"), 1.0);
    assert_eq!(req("limited", "GET", "200"), 2.0);
    assert_eq!(req("limited", "GET", "429"), 2.0);
    let auth = |provider, outcome| {
        value(
            &m,
            "authgate_auth_total",
            &[("provider", provider), ("outcome", outcome)],
        )
    };
    assert_eq!(auth("simple", "ok"), 3.0);
    assert_eq!(auth("none", "missing_token"), 2.0);
    assert_eq!(auth("simple", "invalid_token"), 1.0);
    assert_eq!(
        value(
            &m,
            "authgate_rate_limited_total",
            &[("route", "limited"), ("policy", "tight")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "authgate_token_cache_total",
            &[("tier", "local"), ("result", "hit")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "authgate_token_cache_total",
            &[("tier", "local"), ("result", "miss")]
        ),
        2.0
    );
    let count = |name: &str, route: &str| {
        m.samples
            .iter()
            .find(|x| x.metric == name && x.labels.get("route") == Some(route))
            .map(|x| match &x.value {
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                _ => f64::NAN,
            })
            .unwrap_or(0.0)
    };
    assert_eq!(count("authgate_request_duration_seconds", "api"), 6.0);
    assert_eq!(count("authgate_upstream_duration_seconds", "api"), 3.0);
    assert_eq!(value(&m, "authgate_build_info", &[]), 1.0);
    // Sub-millisecond and multi-second buckets both exist.
    let text = s.gw.metrics();
    assert!(text.contains("le=\"0.0001\"") && text.contains("le=\"30\""));
}

#[test]
fn client_data_never_mints_series() {
    let s = start();
    let series = |gw: &Gateway| -> HashSet<String> {
        gw.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    for i in 0..5 {
        raw(
            s.gw.addr,
            format!("BREW /nowhere/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        raw_get(
            s.gw.addr,
            &format!("/nowhere/{i}?x={i}"),
            "X-Request-Id: id-{i}\r\n",
        );
    }
    let before = series(&s.gw);
    for i in 0..50 {
        raw(
            s.gw.addr,
            format!("BREW{i} /nowhere/{i}/{i} HTTP/1.1\r\nHost: h{i}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        raw_get(
            s.gw.addr,
            &format!("/random/{i}/path?q={i}"),
            &format!("X-Request-Id: id-{i}\r\nX-Forwarded-For: 10.0.0.{i}\r\n"),
        );
    }
    let after = series(&s.gw);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "client data created series: {new:?}");
}

#[test]
fn one_access_line_per_request_without_secrets() {
    let s = start();
    let t = token();
    let n = 7;
    for i in 0..n {
        let path = if i % 2 == 0 {
            "/echo/x?password=hunter2"
        } else {
            "/nope"
        };
        client().get(s.gw.url(path)).bearer_auth(&t).send().unwrap();
    }
    wait_until("all access lines", WAIT, || {
        s.gw.log_lines()
            .iter()
            .filter(|l| l["kind"] == "access")
            .count()
            >= n
    });
    let lines: Vec<Value> =
        s.gw.log_lines()
            .into_iter()
            .filter(|l| l["kind"] == "access")
            .collect();
    assert_eq!(lines.len(), n);
    for field in [
        "ts",
        "request_id",
        "route",
        "method",
        "path",
        "status",
        "duration_ms",
        "upstream",
        "upstream_ms",
        "subject",
        "auth",
        "token_cache",
        "rate_limit",
    ] {
        assert!(
            lines.iter().all(|l| l.get(field).is_some()),
            "field {field} missing"
        );
    }
    // RFC 3339 in UTC with exactly three fractional digits, and this machine's time.
    let now = chrono::Utc::now();
    for l in &lines {
        let ts = l["ts"].as_str().expect("ts is a string");
        let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("ts is RFC 3339");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "{ts}"
        );
        let off = (now - parsed.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs();
        assert!(off < 120, "ts {ts} is {off} s from now ({now})");
    }
    let ok = lines
        .iter()
        .find(|l| l["status"] == 200)
        .expect("a 200 line");
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["path"], "/echo/x");
    assert_eq!(ok["subject"], "5");
    assert_eq!(ok["auth"], "ok");
    assert_eq!(ok["upstream"], "a");
    assert!(ok["upstream_ms"].as_f64().is_some());
    let log = s.gw.proc.output();
    assert!(!log.contains(&t), "a token reached the log");
    assert!(!log.contains("hunter2"), "a query string reached the log");
}

#[test]
fn reload_under_load_switches_upstreams_without_failures() {
    let s = start();
    let t = token();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let seen_b = std::sync::atomic::AtomicBool::new(false);
    let served = std::sync::atomic::AtomicUsize::new(0);
    let served_n = || served.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.get(s.gw.url("/echo/load")).bearer_auth(&t).send() {
                        Ok(r) if r.status() == 200 => {
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if r.headers()["x-mock-name"] == "b" {
                                seen_b.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        _ => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        wait_until(
            "load on the first upstream",
            Duration::from_secs(10),
            || served_n() >= 40,
        );
        std::fs::write(&s.gw.config, config("b")).unwrap();
        s.gw.proc.signal(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen_b.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // And the new version carries load too.
        let at_switch = served_n();
        wait_until(
            "load on the second upstream",
            Duration::from_secs(10),
            || served_n() >= at_switch + 40,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(seen_b.into_inner(), "the reload never took effect");
    assert_eq!(
        failures.into_inner(),
        0,
        "requests failed during the reload"
    );
    assert!(s.a.total() > 0 && s.b.total() > 0);
    assert_eq!(
        value(
            &scrape(&s.gw),
            "authgate_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );

    // A broken file is refused, with the reason, and the running config keeps serving.
    std::fs::write(&s.gw.config, "routes: [oops\n").unwrap();
    let r = client()
        .post(s.gw.admin_url("/admin/reload"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().unwrap()["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    std::fs::write(&s.gw.config, config("nosuchupstream")).unwrap();
    s.gw.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the refused reload to be counted", WAIT, || {
        value(
            &scrape(&s.gw),
            "authgate_config_reloads_total",
            &[("result", "error")],
        ) == 2.0
    });
    let r = client()
        .get(s.gw.url("/echo/after"))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-name"], "b");
    wait_until("the refused reload in the log", WAIT, || {
        s.gw.log_lines().iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload refused"))
        })
    });
}

/// A log shipper that stops reading: stderr is a pipe nobody drains. Once it is full, the
/// gateway drops log lines (counted) and keeps answering; nothing waits for the pipe.
#[test]
fn a_stalled_stderr_never_stalls_traffic() {
    use std::process::{Child, Command, Stdio};
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mock = Mock::start("m");
    let dir = TestDir::new("stall");
    let config = dir.path("authgate.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{}"] }}
routes:
  - {{ name: public, path_prefix: /echo/, auth: none, upstream: lms }}
"#,
            mock.addr
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The pipe's far end is held (so writes block rather than fail) and never read.
    let gw = Killed(
        Command::new(bin("authgate"))
            .arg("--config")
            .arg(&config)
            .env("AG_LISTEN", addr.to_string())
            .env("AG_ADMIN", admin.to_string())
            .env("RUST_LOG", "info")
            .env("AUTHGATE_LOG_QUEUE", "16")
            .env_remove("AUTHGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_port(addr, WAIT);
    wait_port(admin, WAIT);
    // A pipe holds 64 KiB, a few hundred access lines; a thousand requests go well past it.
    let c = client_with_timeout(Duration::from_secs(5));
    for i in 0..1000 {
        let r = c
            .get(format!("http://{addr}/echo/{i}"))
            .send()
            .unwrap_or_else(|e| panic!("request {i} stalled or failed: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
    }
    let m = c
        .get(format!("http://{admin}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metric(&m, "authgate_log_lines_dropped_total", &[]) > 0.0,
        "lines were dropped, and counted"
    );
    drop(gw);
}
