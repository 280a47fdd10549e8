//! Router-level tests: real HTTP requests through the whole middleware stack, without
//! a socket (the binary itself is smoke-tested by the integration tests).

use std::{sync::Arc, time::Instant};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use crate::{
    app::{self, AppState},
    cli::Cli,
};
use clap::Parser as _;

fn router() -> Router {
    let cli = Cli::try_parse_from(["upstream-mock", "--name", "unit"]).expect("default flags");
    app::router(Arc::new(AppState::new(&cli.serve).expect("state")))
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(router: &Router, req: Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post_json(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn introspect(token: &str, client: &str) -> Request<Body> {
    Request::post("/api/auth/introspect/")
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(client)),
        )
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .expect("request")
}

#[tokio::test]
async fn unknown_paths_are_drf_404_and_every_answer_is_named() {
    let r = router();
    let a = call(&r, get("/nope")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body, json!({"detail": "Not found."}));
    assert_eq!(a.headers["x-mock-name"], "unit");
    let a = call(
        &r,
        Request::delete("/api/token/")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["x-mock-name"], "unit");
}

#[tokio::test]
async fn simplejwt_pair_then_refresh() {
    let r = router();
    let a = call(
        &r,
        post_json(
            "/api/token/",
            json!({"username": "alice", "password": "alice-pass"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let access = a.body["access"].as_str().expect("access");
    let refresh = a.body["refresh"].as_str().expect("refresh").to_owned();
    let key = DecodingKey::from_secret(crate::cli::DEFAULT_JWT_SECRET.as_bytes());
    let claims = jsonwebtoken::decode::<Value>(access, &key, &Validation::new(Algorithm::HS256))
        .expect("valid access")
        .claims;
    assert_eq!(
        (claims["user_id"].clone(), claims["token_type"].clone()),
        (json!(42), json!("access"))
    );

    let a = call(
        &r,
        post_json("/api/token/refresh/", json!({ "refresh": refresh })),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body["access"].is_string());
    assert!(a.body.get("refresh").is_none());

    let a = call(
        &r,
        post_json("/api/token/refresh/", json!({ "refresh": access })),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["code"], "token_not_valid");

    let a = call(
        &r,
        post_json(
            "/api/token/",
            json!({"username": "alice", "password": "bad"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.body["detail"],
        "No active account found with the given credentials"
    );
}

#[tokio::test]
async fn knox_login_introspect_logout() {
    let r = router();
    let a = call(
        &r,
        post_json(
            "/api/auth/login/",
            json!({"username": "bob", "password": "bob-pass"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let token = a.body["token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), 64);
    assert!(a.body["expiry"].as_str().expect("expiry").ends_with('Z'));

    let a = call(&r, introspect(&token, "authgate:wrong")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));

    let a = call(&r, introspect(&token, "authgate:introspection-secret")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["active"], true);
    assert_eq!(a.body["sub"], "7");
    assert_eq!(a.body["scope"], "read write");
    assert_eq!(a.body["username"], "bob");
    assert!(a.body["exp"].as_u64().expect("exp") > crate::tokens::unix_now());

    let logout = Request::post("/api/auth/logout/")
        .header(header::AUTHORIZATION, format!("Token {token}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&r, logout).await.status, StatusCode::NO_CONTENT);
    let a = call(&r, introspect(&token, "authgate:introspection-secret")).await;
    assert_eq!(a.body, json!({"active": false}));

    // Minted straight into the store, already expired.
    let a = call(
        &r,
        post_json("/__mock/opaque", json!({"sub": "9", "ttl_s": -1})),
    )
    .await;
    let expired = a.body["token"].as_str().expect("token").to_owned();
    let a = call(&r, introspect(&expired, "authgate:introspection-secret")).await;
    assert_eq!(a.body, json!({"active": false}));
}

#[tokio::test]
async fn served_jwks_verifies_minted_tokens() {
    let r = router();
    for (alg, name) in [
        (Algorithm::RS256, "RS256"),
        (Algorithm::ES256, "ES256"),
        (Algorithm::EdDSA, "EdDSA"),
    ] {
        let exp = crate::tokens::unix_now() + 60;
        let a = call(
            &r,
            post_json(
                "/__mock/mint",
                json!({"alg": name, "claims": {"sub": "42", "exp": exp}}),
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {}", a.body);
        let token = a.body["token"].as_str().expect("token").to_owned();
        let jwks: JwkSet =
            serde_json::from_value(call(&r, get("/.well-known/jwks.json")).await.body)
                .expect("jwks");
        let kid = jsonwebtoken::decode_header(&token)
            .expect("header")
            .kid
            .expect("kid");
        let key = DecodingKey::from_jwk(jwks.find(&kid).expect("published")).expect("jwk key");
        let claims = jsonwebtoken::decode::<Value>(&token, &key, &Validation::new(alg))
            .expect("verifies")
            .claims;
        assert_eq!(
            claims,
            json!({"sub": "42", "exp": exp}),
            "claims are verbatim"
        );
    }
    // Failure switch.
    call(
        &r,
        Request::post("/__mock/jwks/fail?on=true")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(
        call(&r, get("/.well-known/jwks.json")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn echo_reports_raw_target_and_body() {
    let r = router();
    let body = vec![b'z'; 3 * 1024 * 1024];
    let req = Request::put("/echo/a%2Fb/../c?x=%41&y=1+2")
        .header("x-one", "1")
        .header("x-mock-status", "202")
        .body(Body::from(body.clone()))
        .expect("request");
    let a = call(&r, req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.body["name"], "unit");
    assert_eq!(a.body["method"], "PUT");
    assert_eq!(a.body["path"], "/echo/a%2Fb/../c");
    assert_eq!(a.body["query"], "x=%41&y=1+2");
    assert_eq!(a.body["body_len"], body.len());
    assert_eq!(a.body["body_sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(a.body["headers"][0], json!(["x-one", "1"]));
    assert_eq!(call(&r, get("/echo")).await.body["query"], Value::Null);
}

#[tokio::test]
async fn stats_count_routes_but_not_mock_controls() {
    let r = router();
    call(&r, get("/api/products/search/?q=yoga")).await;
    call(&r, get("/api/products/search/?page=2")).await;
    call(
        &r,
        Request::builder()
            .uri("/api/users/42/profile/")
            .header("x-auth-subject", "42")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    call(&r, get("/__mock/stats")).await;
    let stats = call(&r, get("/__mock/stats")).await.body;
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_route"]["GET /api/products/search/"], 2);
    assert_eq!(stats["by_route"]["GET /api/users/{id}/profile/"], 1);
    assert_eq!(stats["by_path"]["/api/users/42/profile/"], 1);

    let last = call(&r, get("/__mock/last?route=GET%20/api/products/search/"))
        .await
        .body;
    assert_eq!(last["query"], "page=2");
    let last = call(
        &r,
        get("/__mock/last?route=GET%20/api/users/%7Bid%7D/profile/"),
    )
    .await
    .body;
    assert_eq!(last["headers"], json!([["x-auth-subject", "42"]]));

    call(
        &r,
        Request::post("/__mock/reset")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(call(&r, get("/__mock/stats")).await.body["total"], 0);
}

#[tokio::test]
async fn search_pages_and_headers() {
    let r = router();
    let req = Request::get("/api/products/search/?q=yoga&page_size=5&page=2")
        .header(header::HOST, "gw.test:8080")
        .header("x-mock-cache-control", "public, max-age=60")
        .body(Body::empty())
        .expect("request");
    let a = call(&r, req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[header::CACHE_CONTROL], "public, max-age=60");
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        a.body["next"],
        "http://gw.test:8080/api/products/search/?page=3&page_size=5&q=yoga"
    );
    assert_eq!(
        a.body["previous"],
        "http://gw.test:8080/api/products/search/?page_size=5&q=yoga"
    );
    let a = call(&r, get("/api/products/search/?page=100000")).await;
    assert_eq!(
        (a.status, a.body),
        (StatusCode::NOT_FOUND, json!({"detail": "Invalid page."}))
    );
    assert!(!call(&r, get("/api/products/search/"))
        .await
        .headers
        .contains_key(header::CACHE_CONTROL));
}

#[tokio::test]
async fn profile_needs_matching_subject() {
    let r = router();
    let a = call(&r, get("/api/users/42/profile/")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let req = Request::get("/api/users/42/profile/")
        .header("x-auth-subject", "42")
        .body(Body::empty())
        .expect("req");
    let a = call(&r, req).await;
    assert_eq!(
        a.body,
        json!({"id": 42, "username": "alice", "email": "alice@example.com"})
    );
}

#[tokio::test]
async fn delay_holds_the_response() {
    let r = router();
    let start = Instant::now();
    assert_eq!(
        call(&r, get("/health/?delay_ms=80")).await.status,
        StatusCode::OK
    );
    assert!(start.elapsed().as_millis() >= 80);
    let start = Instant::now();
    let req = Request::get("/health/")
        .header("x-mock-delay-ms", "60")
        .body(Body::empty())
        .expect("req");
    call(&r, req).await;
    assert!(start.elapsed().as_millis() >= 60);
}

#[tokio::test]
async fn health_switch() {
    let r = router();
    call(
        &r,
        Request::post("/__mock/health?status=503")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    let a = call(&r, get("/health/")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    call(
        &r,
        Request::post("/__mock/health?status=200")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(
        call(&r, get("/health/")).await.body,
        json!({"status": "ok"})
    );
}
