//! The response cache on search routes: coalescing, keys, vary, upstream directives, stale
//! answers, query hygiene, and auth before any lookup.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::time::Duration;

fn config(mock: &Mock) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"], connect_timeout: 300ms }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
response_cache: {{ max_size: 8MiB, max_entry_size: 512KiB }}
routes:
  - name: search
    path_prefix: /api/products/search/
    methods: [GET]
    auth: required
    deadline: 5s
    cache: {{ ttl: 60s, vary: [] }}
    max_query_length: 200
    max_page_size: 50
    upstream: lms
  - {{ name: mine, path_prefix: /echo/mine/, auth: required, cache: {{ ttl: 60s, vary: [subject] }}, upstream: lms }}
  - {{ name: shared, path_prefix: /echo/shared/, auth: required, cache: {{ ttl: 60s, vary: [] }}, upstream: lms }}
  - {{ name: maybe, path_prefix: /echo/maybe/, auth: optional, cache: {{ ttl: 60s, vary: [] }}, upstream: lms }}
  - {{ name: fallback, path_prefix: /echo/fallback/, auth: none, cache: {{ ttl: 1s, stale_if_error: 30s }}, upstream: lms }}
  - {{ name: swr, path_prefix: /echo/swr/, auth: none, cache: {{ ttl: 1s, stale_while_revalidate: 30s }}, upstream: lms }}
  - {{ name: open, path_prefix: /echo/, auth: none, cache: {{ ttl: 60s }}, upstream: lms }}
"#,
        m = mock.addr
    )
}

fn start() -> (Mock, Gateway) {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock), &[("JWT_SECRET", MOCK_JWT_SECRET)]);
    (mock, gw)
}

fn token(uid: u64) -> String {
    sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": uid, "exp": now() + 600}),
    )
}

fn get(
    gw: &Gateway,
    path: &str,
    tok: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut r = client().get(gw.url(path));
    if let Some(t) = tok {
        r = r.bearer_auth(t);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().expect("send")
}

fn x_cache(r: &reqwest::blocking::Response) -> String {
    r.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn fifty_concurrent_searches_make_one_upstream_call() {
    let (mock, gw) = start();
    let t = token(1);
    let results: Vec<(u16, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    let r = get(
                        &gw,
                        "/api/products/search/?q=yoga&page_size=5&delay_ms=400",
                        Some(&t),
                        &[],
                    );
                    let xc = x_cache(&r);
                    (r.status().as_u16(), xc, r.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(
        mock.count("GET /api/products/search"),
        1,
        "coalescing failed"
    );
    assert_eq!(results.iter().filter(|(_, x, _)| x == "MISS").count(), 1);
    assert_eq!(results.iter().filter(|(_, x, _)| x == "HIT").count(), 49);
    assert!(
        results.windows(2).all(|w| w[0].2 == w[1].2),
        "everyone got the same answer"
    );
    let v: Value = serde_json::from_str(&results[0].2).unwrap();
    assert!(v["count"].as_u64().unwrap() > 0);
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "authgate_response_cache_total",
            &[("route", "search"), ("result", "hit")]
        ),
        49.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_response_cache_total",
            &[("route", "search"), ("result", "miss")]
        ),
        1.0
    );
}

#[test]
fn keys_sort_parameters_and_vary_on_subject() {
    let (mock, gw) = start();
    let (alice, bob) = (token(1), token(2));
    let r = get(
        &gw,
        "/api/products/search/?q=yoga&category=fitness",
        Some(&alice),
        &[],
    );
    assert_eq!(x_cache(&r), "MISS");
    let first = r.text().unwrap();
    let r = get(
        &gw,
        "/api/products/search/?category=fitness&q=yoga",
        Some(&bob),
        &[],
    );
    assert_eq!(
        x_cache(&r),
        "HIT",
        "parameter order must share an entry (vary [] is public)"
    );
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.text().unwrap(), first);
    assert_eq!(mock.count("GET /api/products/search"), 1);

    // vary: [subject] keeps users apart.
    let seen = |r: reqwest::blocking::Response| -> String {
        let v: Value = r.json().unwrap();
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == "x-auth-subject")
            .unwrap()[1]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = get(&gw, "/echo/mine/x", Some(&alice), &[]);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(seen(r), "1");
    let r = get(&gw, "/echo/mine/x", Some(&bob), &[]);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(seen(r), "2");
    let r = get(&gw, "/echo/mine/x", Some(&alice), &[]);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(seen(r), "1", "alice must never see bob's answer");

    // HEAD is answered from the GET entry, without a body.
    let r = client()
        .head(gw.url("/echo/mine/x"))
        .bearer_auth(&alice)
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.bytes().unwrap().len(), 0);
}

#[test]
fn auth_and_hygiene_run_before_the_cache() {
    let (mock, gw) = start();
    let t = token(1);
    assert_eq!(
        get(&gw, "/api/products/search/?q=a", Some(&t), &[]).status(),
        200
    );
    let r = get(&gw, "/api/products/search/?q=a", None, &[]);
    assert_eq!(
        r.status(),
        401,
        "a cached answer must not skip authentication"
    );
    let r = get(&gw, "/api/products/search/?q=a", Some("not-a-token"), &[]);
    assert_eq!(r.status(), 401);
    let long = format!("/api/products/search/?q={}", "x".repeat(300));
    let r = get(&gw, &long, Some(&t), &[]);
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "bad_request");
    assert!(v["message"].as_str().unwrap().contains("max_query_length"));
    let r = get(
        &gw,
        "/api/products/search/?q=a&page_size=500",
        Some(&t),
        &[],
    );
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("max_page_size"));
    assert_eq!(
        get(&gw, "/api/products/search/?q=a&page_size=50", Some(&t), &[]).status(),
        200
    );
    assert_eq!(mock.count("GET /api/products/search"), 2);
}

#[test]
fn upstream_directives_are_honoured() {
    let (mock, gw) = start();
    for _ in 0..3 {
        let r = get(
            &gw,
            "/echo/nostore",
            None,
            &[("X-Mock-Cache-Control", "no-store")],
        );
        assert_eq!(x_cache(&r), "MISS");
    }
    assert_eq!(mock.count("GET /echo"), 3, "no-store answers were cached");
    for _ in 0..2 {
        get(
            &gw,
            "/echo/private",
            None,
            &[("X-Mock-Cache-Control", "private, max-age=60")],
        );
    }
    assert_eq!(mock.count("GET /echo"), 5);
    // max-age shorter than the route's ttl wins.
    let stored = std::time::Instant::now();
    assert_eq!(
        x_cache(&get(
            &gw,
            "/echo/short",
            None,
            &[("X-Mock-Cache-Control", "max-age=1")]
        )),
        "MISS"
    );
    assert_eq!(x_cache(&get(&gw, "/echo/short", None, &[])), "HIT");
    // max-age=1 (whole seconds): a miss again soon after, never before.
    wait_until("the entry to expire", Duration::from_secs(3), || {
        x_cache(&get(&gw, "/echo/short", None, &[])) == "MISS"
    });
    assert!(
        stored.elapsed() >= Duration::from_millis(900),
        "expired early"
    );
    // Errors are not stored; a client's no-cache bypasses.
    get(&gw, "/echo/err", None, &[("X-Mock-Status", "500")]);
    assert_eq!(get(&gw, "/echo/err", None, &[]).status(), 200);
    assert_eq!(
        x_cache(&get(
            &gw,
            "/echo/err",
            None,
            &[("Cache-Control", "no-cache")]
        )),
        "BYPASS"
    );
}

#[test]
fn stale_answers_when_the_upstream_fails() {
    let (mut mock, gw) = start();
    let r = get(&gw, "/echo/fallback/x", None, &[]);
    assert_eq!(x_cache(&r), "MISS");
    let body = r.text().unwrap();
    // Past the 1 s ttl, an upstream 5xx: the last good answer instead (a hit before then).
    let mut r = get(&gw, "/echo/fallback/x", None, &[("X-Mock-Status", "503")]);
    wait_until("the entry to expire", Duration::from_secs(3), || {
        r = get(&gw, "/echo/fallback/x", None, &[("X-Mock-Status", "503")]);
        x_cache(&r) != "HIT"
    });
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.text().unwrap(), body);
    // The upstream stopped: still answered.
    mock.proc.kill();
    let r = get(&gw, "/echo/fallback/x", None, &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.text().unwrap(), body);
    // Nothing cached: the contract's 502.
    let r = get(&gw, "/echo/fallback/other", None, &[]);
    assert_eq!(r.status(), 502);
}

#[test]
fn stale_while_revalidate_refreshes_in_one_request() {
    let (mock, gw) = start();
    assert_eq!(x_cache(&get(&gw, "/echo/swr/x", None, &[])), "MISS");
    // Past the route's 1 s ttl. A wait, not a poll: any request now would start the refresh
    // this test is about.
    std::thread::sleep(Duration::from_millis(1200));
    // Expired but within the revalidate window: one request refreshes (slowly), the others
    // get the stale answer at once.
    let results: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..5)
            .map(|_| {
                s.spawn(|| {
                    x_cache(&get(
                        &gw,
                        "/echo/swr/x",
                        None,
                        &[("X-Mock-Delay-Ms", "300")],
                    ))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results.iter().filter(|x| *x == "MISS").count() <= 1,
        "{results:?}"
    );
    assert!(results.iter().any(|x| x == "STALE"), "{results:?}");
    let before = mock.count("GET /echo");
    assert_eq!(before, 2, "one refresh for five requests");
    wait_until("the refreshed entry", Duration::from_secs(2), || {
        x_cache(&get(&gw, "/echo/swr/x", None, &[])) == "HIT"
    });
    assert_eq!(mock.count("GET /echo"), before);
}

fn echoed(r: reqwest::blocking::Response, header: &str) -> (String, Option<String>) {
    let xc = x_cache(&r);
    let v: Value = r.json().expect("json");
    let value = v["headers"].as_array().and_then(|a| {
        a.iter()
            .find(|p| {
                p[0].as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(header))
            })
            .and_then(|p| p[1].as_str().map(str::to_owned))
    });
    (xc, value)
}

#[test]
fn an_upstream_vary_on_a_gateway_header_is_keyed_on_what_the_upstream_received() {
    let (_mock, gw) = start();
    // The upstream marks per-user answers the standard way.
    let vary = [
        ("X-Mock-Cache-Control", "public, max-age=60"),
        ("X-Mock-Response-Header", "Vary: X-Auth-Subject"),
    ];
    let (t7, t42) = (token(7), token(42));
    let call = |t: &str, extra: &[(&str, &str)]| {
        let mut headers = vary.to_vec();
        headers.extend_from_slice(extra);
        echoed(
            get(&gw, "/echo/shared/me", Some(t), &headers),
            "x-auth-subject",
        )
    };
    assert_eq!(call(&t7, &[]), ("MISS".into(), Some("7".into())));
    // Another user never gets user 7's answer, even naming 7 in the header itself.
    assert_eq!(call(&t42, &[]), ("MISS".into(), Some("42".into())));
    assert_eq!(
        call(&t42, &[("X-Auth-Subject", "7")]),
        ("HIT".into(), Some("42".into()))
    );
    assert_eq!(call(&t7, &[]), ("HIT".into(), Some("7".into())));
}

#[test]
fn the_host_is_part_of_the_cache_key() {
    let (mock, gw) = start();
    let call = |host: &str| {
        echoed(
            get(&gw, "/echo/hosted?q=1", None, &[("Host", host)]),
            "host",
        )
    };
    assert_eq!(
        call("evil.example"),
        ("MISS".into(), Some("evil.example".into()))
    );
    assert_eq!(
        call("api.example"),
        ("MISS".into(), Some("api.example".into()))
    );
    assert_eq!(
        call("API.example:80"),
        ("HIT".into(), Some("api.example".into()))
    );
    assert_eq!(mock.count("GET /echo"), 2);
}

#[test]
fn anonymous_and_authenticated_callers_never_share_an_entry() {
    let (mock, gw) = start();
    let anon = get(&gw, "/echo/maybe/x", None, &[]);
    assert_eq!(x_cache(&anon), "MISS");
    let t = token(5);
    let authed = get(&gw, "/echo/maybe/x", Some(&t), &[]);
    assert_eq!(x_cache(&authed), "MISS", "not the anonymous entry");
    assert_eq!(x_cache(&get(&gw, "/echo/maybe/x", None, &[])), "HIT");
    assert_eq!(
        x_cache(&get(&gw, "/echo/maybe/x", Some(&token(6)), &[])),
        "HIT"
    );
    assert_eq!(mock.count("GET /echo"), 2);
}

#[test]
fn a_cached_route_with_auth_must_say_how_it_varies() {
    let dir = TestDir::new("vary-required");
    let file = dir.path("c.yaml");
    std::fs::write(
        &file,
        r#"
upstreams: { u: { endpoints: ["127.0.0.1:1"] } }
auth:
  providers:
    p: { type: jwt, algorithms: [HS256], keys: [{ secret_env: S }], audience: [a] }
routes: [{ name: r, path_prefix: /, auth: required, cache: { ttl: 60s }, upstream: u }]
"#,
    )
    .expect("write");
    let out = std::process::Command::new(bin("authgate"))
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env("S", "a-secret-that-is-long-enough-for-hs256!")
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("routes[0].cache.vary: must be given"),
        "{stderr}"
    );
}
