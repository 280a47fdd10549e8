//! Soak test: mixed traffic (JWT, opaque, API key, anonymous, rate-limited, slow search) for
//! SOAK_MINUTES (default 10), sampling the gateway's RSS, open descriptors and latency
//! percentiles each minute. Writes `soak/RESULTS.md` and exits non-zero if memory or
//! descriptors grow more than 10 % after the first minute's warm-up (runs of 7 minutes or
//! more compare the median of minutes 2-4 with the median of the last three).
//!
//! Run with `scripts/soak` (release binaries); `AUTHGATE_BIN_DIR` picks the binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Minute {
    minute: u64,
    requests: usize,
    errors: usize,
    rss_kib: u64,
    fds: usize,
    p50: f64,
    p99: f64,
}

fn main() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let redis = Redis::start();
    let mock = Mock::start("soak");
    let key = "soak-api-key";
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s, threads: 2 }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{redis}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
    knox: {{ type: introspection, url: "http://{m}/api/auth/introspect/", client_id: authgate, client_secret_env: INTROSPECTION_SECRET }}
    svc: {{ type: api_key, keys: [{{ id: s, sha256: "{digest}", subject: "service:soak" }}] }}
rate_limits:
  anon: {{ rate: 20/s, burst: 20, key: client_ip, scope: shared }}
routes:
  - {{ name: search, path_prefix: /api/products/search/, auth: required, deadline: 300ms, cache: {{ ttl: 2s }}, upstream: lms }}
  - {{ name: anon, path_prefix: /echo/anon/, auth: none, rate_limit: anon, upstream: lms }}
  - {{ name: api, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        redis = redis.url(),
        m = mock.addr,
        digest = hex::encode(Sha256::digest(key.as_bytes())),
    );
    let gw = Gateway::start(
        &yaml,
        &[
            ("JWT_SECRET", MOCK_JWT_SECRET),
            ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
            ("RUST_LOG", "warn"),
        ],
    );
    gw.wait_ready();
    let pid = gw.proc.pid();
    let opaque: Vec<String> = (0..50)
        .map(|i| {
            let v: Value = client()
                .post(mock.url("/__mock/opaque"))
                .json(&json!({"sub": format!("o{i}"), "ttl_s": 86400}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            v["token"].as_str().unwrap().to_string()
        })
        .collect();
    let jwts: Vec<String> = (0..200)
        .map(|i| {
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &json!({"user_id": i, "exp": now() + 86400}),
            )
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let window: Arc<Mutex<(Vec<f64>, usize)>> = Arc::new(Mutex::new((Vec::new(), 0)));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (stop, window, opaque, jwts, base) = (
                stop.clone(),
                window.clone(),
                opaque.clone(),
                jwts.clone(),
                gw.url(""),
            );
            std::thread::spawn(move || {
                let c = client_with_timeout(Duration::from_secs(5));
                let mut i: usize = w * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    let req = match i % 6 {
                        0 => c
                            .get(format!("{base}/echo/jwt/{}", i % 1000))
                            .bearer_auth(&jwts[i % jwts.len()]),
                        1 => c
                            .get(format!("{base}/echo/opaque"))
                            .bearer_auth(&opaque[i % opaque.len()]),
                        2 => c
                            .get(format!("{base}/echo/svc"))
                            .header("Authorization", format!("Api-Key {key}")),
                        3 => c.get(format!("{base}/echo/anon/{}", i % 100)),
                        4 => c
                            .get(format!(
                                "{base}/api/products/search/?q=yoga&page={}&delay_ms={}",
                                i % 20,
                                if i.is_multiple_of(10) { 500 } else { 0 }
                            ))
                            .bearer_auth(&jwts[0]),
                        _ => c
                            .get(format!("{base}/echo/bad"))
                            .bearer_auth("invalid.token.value"),
                    };
                    let started = Instant::now();
                    let res = req.send();
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    let ok = match (&res, i % 6) {
                        (Ok(r), 5) => r.status() == 401,
                        (Ok(r), 3) => r.status() == 200 || r.status() == 429,
                        (Ok(r), 4) => r.status() == 200 || r.status() == 504,
                        (Ok(r), _) => r.status() == 200,
                        (Err(_), _) => false,
                    };
                    let mut w = window.lock().unwrap();
                    w.0.push(ms);
                    if !ok {
                        w.1 += 1;
                    }
                }
            })
        })
        .collect();

    let mut rows: Vec<Minute> = Vec::new();
    for minute in 1..=minutes {
        std::thread::sleep(Duration::from_secs(60));
        let (mut lat, errors) = {
            let mut w = window.lock().unwrap();
            (std::mem::take(&mut w.0), std::mem::replace(&mut w.1, 0))
        };
        lat.sort_by(f64::total_cmp);
        let row = Minute {
            minute,
            requests: lat.len(),
            errors,
            rss_kib: rss_kib(pid),
            fds: fds(pid),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
        };
        println!(
            "minute {:>3}: {:>7} requests, {:>4} unexpected, RSS {:>7} KiB, fds {:>4}, p50 {:.2} ms, p99 {:.2} ms",
            row.minute, row.requests, row.errors, row.rss_kib, row.fds, row.p50, row.p99
        );
        rows.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }

    let (early, late, compared) = windows(&rows);
    let grow = |f: fn(&Minute) -> u64| {
        let (a, b) = (median(early, f), median(late, f));
        if a > 0.0 {
            (b - a) / a * 100.0
        } else {
            0.0
        }
    };
    let rss_growth = grow(|m| m.rss_kib);
    let fd_growth = grow(|m| m.fds as u64);
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    let flat = rss_growth <= 10.0 && fd_growth <= 10.0;
    let machine = format!(
        "{} cores, {}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut md = format!(
        "# Soak results\n\nMachine: {machine}. Run of {minutes} minute(s), 6 client threads on loopback, gateway with 2 worker threads, Redis shared limits, mixed traffic (HS256 JWT, opaque tokens via introspection, API key, anonymous rate-limited, cached search with a slow upstream 10 % of the time, invalid tokens).\n\n| minute | requests | unexpected answers | RSS KiB | open fds | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
            r.minute, r.requests, r.errors, r.rss_kib, r.fds, r.p50, r.p99
        ));
    }
    md.push_str(&format!(
        "\nAfter the first minute (warm-up), {compared}: RSS {rss_growth:+.1} %, descriptors {fd_growth:+.1} %; unexpected answers: {errors}. Verdict: {}.\n",
        if flat && errors == 0 { "flat (within 10 %), no unexpected answers" } else { "NOT FLAT or unexpected answers" }
    ));
    let out = repo().join("soak");
    std::fs::create_dir_all(&out).unwrap();
    let file = if minutes >= 10 {
        "RESULTS.md"
    } else {
        "RESULTS-short.md"
    };
    std::fs::write(out.join(file), md).unwrap();
    println!("soak: RSS {rss_growth:+.1} %, fds {fd_growth:+.1} %, unexpected answers {errors}");
    if !flat || errors > 0 {
        std::process::exit(1);
    }
}

/// The samples growth is judged on. One sample is a snapshot of pools (upstream, Redis,
/// clients) that fill and drain by a few connections from one second to the next, so longer
/// runs compare windows of three minutes: a leak grows through them, a pool's jitter does not.
fn windows(rows: &[Minute]) -> (&[Minute], &[Minute], &'static str) {
    if rows.len() >= 7 {
        (
            &rows[1..4],
            &rows[rows.len() - 3..],
            "median of minutes 2-4 against median of the last three",
        )
    } else {
        (
            &rows[..1],
            &rows[rows.len() - 1..],
            "first minute against the last",
        )
    }
}

fn median(rows: &[Minute], f: fn(&Minute) -> u64) -> f64 {
    let mut v: Vec<u64> = rows.iter().map(f).collect();
    v.sort_unstable();
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}
