//! The deployment files speak of metrics that exist: every `authgate_*` name in the Grafana
//! dashboard (`deploy/grafana/authgate.json`) and the alert rules (`deploy/prometheus/alerts.yml`)
//! is in a live scrape of authgate, and every label their queries select or group by is a label
//! of those metrics. `deploy/check.sh` checks the files themselves (promtool, schemas); this is
//! the part that needs a running gateway.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::collections::{BTreeMap, BTreeSet};

const ADMIN: &str = "e2e-deploy-admin";

/// A series (metric name and some of its labels) and the least value it must have.
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Routes with auth, a shared rate limit (Redis) and deadlines, like deploy/compose/authgate.yaml;
/// a JWKS provider and an introspection provider so that their metrics exist too.
fn config(mock: &Mock, redis: &Redis) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}", token_env: ADMIN_TOKEN }}
redis: {{ url: "{redis}", command_timeout: 200ms }}
upstreams:
  lms: {{ endpoints: ["{m}"], connect_timeout: 1s, health_check: {{ path: /health/, interval: 1s }} }}
auth:
  realm: lms-api
  providers:
    lms-jwt: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
    mock-jwks: {{ type: jwt, algorithms: [RS256], jwks_url: "http://{m}/.well-known/jwks.json" }}
    knox:
      type: introspection
      url: "http://{m}/api/auth/introspect/"
      client_id: authgate
      client_secret_env: INTROSPECTION_SECRET
      timeout: 500ms
rate_limits:
  search: {{ rate: 1/m, burst: 2, key: subject, scope: shared }}
routes:
  - {{ name: search, path_prefix: /api/products/search/, methods: [GET], auth: {{ providers: [lms-jwt, knox] }}, rate_limit: search, deadline: 5s, upstream: lms }}
  - {{ name: slow, path_prefix: /echo/slow/, auth: required, deadline: 300ms, upstream: lms }}
  - {{ name: echo, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        m = mock.addr,
        redis = redis.url()
    )
}

fn token(secret: &str, user: u64) -> String {
    sign(
        Algorithm::HS256,
        secret,
        None,
        &json!({ "user_id": user, "exp": now() + 600 }),
    )
}

fn get(gw: &Gateway, path: &str, token: Option<&str>) -> u16 {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().expect("send").status().as_u16()
}

/// Metric names in a text: `authgate_` followed by `[a-z0-9_]`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("authgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_ident {
            out.insert(tail[..end].trim_end_matches('_').to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Sample name -> label names, from a Prometheus text exposition; `# TYPE` lines give
/// families (with no labels) that have no sample yet.
fn scrape_index(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            if let Some(name) = decl.split_whitespace().next() {
                out.entry(name.to_string()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            labels.extend(label_names(&line[name_end + 1..]));
        }
    }
    out
}

/// Label names of a `{a="x",b=~"y"}` block, given the text after `{`; stops at the closing `}`.
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        // Operator (= != =~ !~), then a quoted value with backslash escapes.
        while chars
            .peek()
            .is_some_and(|c| matches!(c, '=' | '!' | '~' | ' '))
        {
            chars.next();
        }
        if !name.is_empty() {
            names.push(name);
        }
        match chars.next() {
            Some('"') => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
            }
            _ => return names,
        }
    }
}

/// `by (...)` / `without (...)` label lists of a PromQL expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut rest = expr;
        while let Some(i) = rest.find(kw) {
            let before_ok = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let after = rest[i + kw.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                let inner = &after[1..after.find(')').unwrap_or(after.len())];
                out.extend(
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            rest = &rest[i + kw.len()..];
        }
    }
    out
}

/// Every `expr` (and `definition`/`query` string of template variables) in the dashboard.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn alert_exprs(yaml: &serde_yaml::Value) -> Vec<String> {
    yaml["groups"]
        .as_sequence()
        .expect("alerts.yml: groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let redis = Redis::start();
    let mock = Mock::start("deploy");
    let gw = Gateway::start(
        &config(&mock, &redis),
        &[
            ("JWT_SECRET", MOCK_JWT_SECRET),
            ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
            ("ADMIN_TOKEN", ADMIN),
        ],
    );
    gw.wait_ready();

    // Traffic of every kind the dashboard shows: good and bad tokens, a 404, a 429, a 504.
    let good = token(MOCK_JWT_SECRET, 42);
    let forged = token("not-the-secret", 42);
    assert_eq!(get(&gw, "/api/products/search/?q=a", Some(&good)), 200);
    assert_eq!(get(&gw, "/api/products/search/?q=b", Some(&good)), 200);
    assert_eq!(get(&gw, "/api/products/search/?q=c", Some(&good)), 429);
    assert_eq!(get(&gw, "/api/products/search/?q=a", Some(&forged)), 401);
    assert_eq!(get(&gw, "/api/products/search/?q=a", None), 401);
    assert_eq!(get(&gw, "/echo/slow/x?delay_ms=2000", Some(&good)), 504);
    assert_eq!(get(&gw, "/echo/ok", Some(&good)), 200);
    assert_eq!(get(&gw, "/nowhere", None), 404);
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .expect("reload");
    assert_eq!(reload.status(), 200, "POST /admin/reload");

    let scrape = gw.metrics();
    // The requests above were counted the way the dashboard's queries read them.
    let expected: [Expect; 9] = [
        (
            "authgate_requests_total",
            &[("route", "search"), ("status", "200")],
            2.0,
        ),
        (
            "authgate_requests_total",
            &[("route", "search"), ("status", "429")],
            1.0,
        ),
        (
            "authgate_requests_total",
            &[("route", "unmatched"), ("status", "404")],
            1.0,
        ),
        (
            "authgate_rate_limited_total",
            &[("route", "search"), ("policy", "search")],
            1.0,
        ),
        (
            "authgate_upstream_timeouts_total",
            &[("route", "slow")],
            1.0,
        ),
        (
            "authgate_auth_total",
            &[("provider", "lms-jwt"), ("outcome", "invalid_token")],
            1.0,
        ),
        (
            "authgate_auth_total",
            &[("provider", "none"), ("outcome", "missing_token")],
            1.0,
        ),
        ("authgate_config_reloads_total", &[("result", "ok")], 1.0),
        (
            "authgate_upstream_healthy_endpoints",
            &[("upstream", "lms")],
            1.0,
        ),
    ];
    for (name, labels, at_least) in expected {
        let v = metric(&scrape, name, labels);
        assert!(
            v >= at_least,
            "{name}{labels:?} = {v}, expected at least {at_least}\n{scrape}"
        );
    }

    let index = scrape_index(&scrape);
    let exported = |name: &str| {
        index.contains_key(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|b| index.contains_key(b)))
    };
    // Label names a selector or grouping may use: those of the metric, plus Prometheus' target
    // labels.
    let labels_of = |name: &str| -> BTreeSet<String> {
        let mut l: BTreeSet<String> = ["instance", "job"].map(String::from).into();
        for (sample, labels) in &index {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.strip_suffix(s))
                .unwrap_or(sample);
            if sample == name || base == name {
                l.extend(labels.iter().cloned());
            }
        }
        l
    };

    let root = repo();
    let dashboard_text =
        std::fs::read_to_string(root.join("deploy/grafana/authgate.json")).expect("dashboard");
    let alerts_text =
        std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard JSON");
    let alerts: serde_yaml::Value = serde_yaml::from_str(&alerts_text).expect("alerts YAML");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let dashboard_count = exprs.len();
    exprs.extend(alert_exprs(&alerts));
    assert!(
        dashboard_count >= 10 && exprs.len() > dashboard_count + 5,
        "too few queries found ({dashboard_count} in the dashboard, {} in all): did the files move?",
        exprs.len()
    );

    let mut problems = Vec::new();
    let mut used = metric_names(&dashboard_text);
    used.extend(metric_names(&alerts_text));
    assert!(used.len() >= 10, "only {used:?}");
    for name in &used {
        if !exported(name) {
            problems.push(format!("{name}: not in the scrape"));
        }
    }
    for expr in &exprs {
        let names = metric_names(expr);
        // Selectors: name{label...}.
        for name in &names {
            let allowed = labels_of(name);
            let mut rest = expr.as_str();
            while let Some(i) = rest.find(name.as_str()) {
                let after = &rest[i + name.len()..];
                if let Some(block) = after.strip_prefix('{') {
                    for label in label_names(block) {
                        if !allowed.contains(&label) {
                            problems.push(format!(
                                "{name}{{{label}=...}} in `{expr}`: {name} has no label {label}"
                            ));
                        }
                    }
                }
                rest = after;
            }
        }
        // Groupings, and label_values(metric, label) of template variables.
        let mut allowed: BTreeSet<String> = names.iter().flat_map(|n| labels_of(n)).collect();
        allowed.insert("le".into());
        let mut grouped = grouping_labels(expr);
        if let Some(args) = expr
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
        {
            grouped.extend(args.split(',').skip(1).map(|l| l.trim().to_string()));
        }
        for label in grouped {
            if !allowed.contains(&label) {
                problems.push(format!(
                    "`{expr}` groups by {label}, which none of {names:?} has"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the deployment files do not match the metrics authgate exports:\n  {}\n--- scrape ---\n{scrape}",
        problems.join("\n  ")
    );
}

#[test]
fn the_parsers_of_this_file_read_what_they_should() {
    assert_eq!(
        metric_names(
            "sum(rate(authgate_a_total[5m])) / x_authgate_b + authgate_c_bucket{le=\"1\"}"
        ),
        ["authgate_a_total", "authgate_c_bucket"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        label_names(r#"route=~"$route", status!="5\"}.." ,le="+Inf"} rest"#),
        ["route", "status", "le"]
    );
    assert_eq!(
        grouping_labels("sum by (le, route) (x) / sum without(instance) (y) / nearby (z)"),
        ["le", "route", "instance"]
    );
    let idx = scrape_index(
        "# TYPE authgate_x counter\n# TYPE authgate_h histogram\nauthgate_h_bucket{route=\"a\",le=\"+Inf\"} 1\n",
    );
    assert!(idx["authgate_x"].is_empty());
    assert_eq!(
        idx["authgate_h_bucket"],
        ["le", "route"].map(String::from).into()
    );
}
