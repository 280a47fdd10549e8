//! The one place where gateway-made answers are shaped: each `Rejection` becomes the contract's
//! status, JSON body and headers, and decides whether the client connection may be kept.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime};

use crate::auth::AuthError;
pub use crate::auth::Reason;
pub use crate::ratelimit::RateLimitInfo;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    BadRequest(&'static str),
    UriTooLong,
    HeadersTooLarge,
    NotFound,
    PayloadTooLarge {
        limit: u64,
    },
    MissingToken,
    TokenExpired {
        expired_at: SystemTime,
    },
    InvalidToken {
        reason: Reason,
    },
    /// A DPoP failure: 401 `invalid_token` with a `DPoP` challenge.
    InvalidDpop(Box<crate::auth::DpopRefusal>),
    InsufficientScope {
        required: Vec<String>,
    },
    /// A valid identity failing an `auth.claims` rule.
    Forbidden {
        claim: std::sync::Arc<str>,
    },
    /// A CORS preflight on a route with `cors`, from an allowed origin: 204.
    Preflight(crate::cors::Preflight),
    /// A CORS preflight from an origin the route's `cors` does not list.
    OriginNotAllowed,
    RateLimited(RateLimitInfo),
    UpstreamUnavailable,
    AuthUnavailable {
        retry_after: Duration,
    },
    UpstreamTimeout {
        deadline_ms: u64,
    },
    Internal,
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Rejection::MissingToken,
            AuthError::Expired { expired_at } => Rejection::TokenExpired { expired_at },
            AuthError::Invalid { reason, .. } => Rejection::InvalidToken { reason },
            AuthError::Scope { required } => Rejection::InsufficientScope { required },
            AuthError::Forbidden { claim } => Rejection::Forbidden { claim },
            AuthError::Unavailable { retry_after } => Rejection::AuthUnavailable { retry_after },
            AuthError::Dpop(r) => Rejection::InvalidDpop(r),
        }
    }
}

/// Texts from `auth` that appear in 401 answers.
#[derive(Debug, Clone, Default)]
pub struct AuthTexts {
    pub realm: String,
    pub refresh_endpoint: Option<String>,
    pub login_endpoint: Option<String>,
}

/// A rendered answer, ready to write.
pub struct Rendered {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Whether the client connection may carry another request afterwards.
    pub keepalive: bool,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::UriTooLong => 414,
            Rejection::HeadersTooLarge => 431,
            Rejection::MissingToken
            | Rejection::TokenExpired { .. }
            | Rejection::InvalidToken { .. }
            | Rejection::InvalidDpop(_) => 401,
            Rejection::InsufficientScope { .. }
            | Rejection::Forbidden { .. }
            | Rejection::OriginNotAllowed => 403,
            Rejection::Preflight(_) => 204,
            Rejection::NotFound => 404,
            Rejection::PayloadTooLarge { .. } => 413,
            Rejection::RateLimited(_) => 429,
            Rejection::Internal => 500,
            Rejection::UpstreamUnavailable => 502,
            Rejection::AuthUnavailable { .. } => 503,
            Rejection::UpstreamTimeout { .. } => 504,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BadRequest(_) => "bad_request",
            Rejection::UriTooLong => "uri_too_long",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::NotFound => "not_found",
            Rejection::Forbidden { .. } | Rejection::OriginNotAllowed => "forbidden",
            Rejection::Preflight(_) => "preflight",
            Rejection::PayloadTooLarge { .. } => "payload_too_large",
            Rejection::MissingToken => "missing_token",
            Rejection::TokenExpired { .. } => "token_expired",
            Rejection::InvalidToken { .. } | Rejection::InvalidDpop(_) => "invalid_token",
            Rejection::InsufficientScope { .. } => "insufficient_scope",
            Rejection::RateLimited(_) => "rate_limited",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::AuthUnavailable { .. } => "auth_unavailable",
            Rejection::UpstreamTimeout { .. } => "upstream_timeout",
            Rejection::Internal => "internal_error",
        }
    }

    /// What the client should read; never echoes request data.
    fn message(&self) -> String {
        match self {
            Rejection::BadRequest(why) => (*why).to_string(),
            Rejection::UriTooLong => "The request line is longer than 8 KiB.".into(),
            Rejection::HeadersTooLarge => "The request headers are larger than 64 KiB.".into(),
            Rejection::NotFound => "No route matches this request.".into(),
            Rejection::PayloadTooLarge { limit } => {
                format!("The request body is larger than the {limit} bytes this gateway accepts.")
            }
            Rejection::MissingToken => {
                "Authentication credentials were not provided. Send an Authorization header.".into()
            }
            Rejection::TokenExpired { .. } => {
                "The access token has expired. Obtain a new one from the refresh endpoint.".into()
            }
            Rejection::InvalidToken { reason } => {
                format!("The access token is not valid ({reason}). Log in again to get a new one.")
            }
            Rejection::InvalidDpop(r) if r.nonce.is_some() => {
                "This resource needs a DPoP proof with the server's nonce: make a new proof \
                 with the value of DPoP-Nonce and retry."
                    .into()
            }
            Rejection::InvalidDpop(r) => {
                format!("The DPoP proof of possession is not valid ({}).", r.reason)
            }
            Rejection::InsufficientScope { .. } => {
                "The access token does not grant the scopes this resource requires.".into()
            }
            Rejection::Forbidden { claim } => {
                format!("The identity is not allowed here (the {claim} claim does not match).")
            }
            Rejection::OriginNotAllowed => "This origin may not call this resource.".into(),
            Rejection::Preflight(_) => String::new(),
            Rejection::RateLimited(i) => {
                format!("Rate limit exceeded. Retry in {} seconds.", i.retry_after_s)
            }
            Rejection::UpstreamUnavailable => "The upstream service is unavailable.".into(),
            Rejection::AuthUnavailable { .. } => {
                "Credentials cannot be checked right now because the identity provider is \
                 unavailable. Retry shortly."
                    .into()
            }
            Rejection::UpstreamTimeout { deadline_ms } => {
                format!("The upstream service did not answer within {deadline_ms} ms.")
            }
            Rejection::Internal => "The gateway failed to handle this request.".into(),
        }
    }

    /// Whether the connection can carry another request. Answers given before the body was
    /// read (413) or after an upstream failure close it, so no half-read body or broken state
    /// leaks into the next request.
    pub fn keepalive(&self) -> bool {
        !matches!(
            self,
            Rejection::PayloadTooLarge { .. }
                | Rejection::BadRequest(_)
                | Rejection::UriTooLong
                | Rejection::HeadersTooLarge
                | Rejection::UpstreamUnavailable
                | Rejection::UpstreamTimeout { .. }
                | Rejection::Internal
        )
    }

    pub fn render(&self, request_id: &str, texts: &AuthTexts) -> Rendered {
        if let Rejection::Preflight(p) = self {
            return preflight(p, request_id);
        }
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code()));
        body.insert("message".into(), json!(self.message()));
        body.insert("request_id".into(), json!(request_id));
        let mut headers: Vec<(HeaderName, String)> = Vec::new();
        let www = HeaderName::from_static("www-authenticate");
        match self {
            Rejection::MissingToken => {
                headers.push((www, format!("Bearer realm=\"{}\"", texts.realm)));
            }
            Rejection::TokenExpired { expired_at } => {
                headers.push((
                    www,
                    format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"The access token expired\"",
                        texts.realm
                    ),
                ));
                body.insert("action".into(), json!("refresh"));
                body.insert("refresh_endpoint".into(), json!(texts.refresh_endpoint));
                body.insert("expired_at".into(), json!(rfc3339(*expired_at)));
            }
            Rejection::InvalidToken { reason } => {
                headers.push((
                    www,
                    format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{reason}\"",
                        texts.realm
                    ),
                ));
                body.insert("action".into(), json!("login"));
                body.insert("login_endpoint".into(), json!(texts.login_endpoint));
            }
            Rejection::InvalidDpop(r) => {
                // RFC 9449 7.1 and 9: the DPoP scheme's challenge names the algorithms a proof
                // may use; a missing nonce is its own error, with the nonce to use.
                let error = match r.nonce {
                    Some(_) => "use_dpop_nonce",
                    None => "invalid_dpop_proof",
                };
                headers.push((www, format!("DPoP error=\"{error}\", algs=\"{}\"", r.algs)));
                if let Some(n) = &r.nonce {
                    headers.push((HeaderName::from_static("dpop-nonce"), n.clone()));
                }
            }
            Rejection::InsufficientScope { required } => {
                headers.push((
                    www,
                    format!(
                        "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
                        texts.realm,
                        required.join(" ")
                    ),
                ));
                body.insert("required_scopes".into(), json!(required));
            }
            Rejection::Forbidden { claim } => {
                // No challenge parameters: another token would not help an identity that is
                // not allowed (RFC 6750 3.1 names none for this).
                headers.push((www, format!("Bearer realm=\"{}\"", texts.realm)));
                body.insert("claim".into(), json!(&**claim));
            }
            Rejection::RateLimited(i) => {
                headers.push((
                    HeaderName::from_static("retry-after"),
                    i.retry_after_s.to_string(),
                ));
                headers.push((
                    HeaderName::from_static("ratelimit-limit"),
                    i.limit.to_string(),
                ));
                headers.push((
                    HeaderName::from_static("ratelimit-remaining"),
                    i.remaining.to_string(),
                ));
                headers.push((
                    HeaderName::from_static("ratelimit-reset"),
                    i.reset_s.to_string(),
                ));
                body.insert("retry_after_s".into(), json!(i.retry_after_s));
                body.insert("policy".into(), json!(&*i.policy));
            }
            Rejection::AuthUnavailable { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.push((HeaderName::from_static("retry-after"), secs.to_string()));
            }
            Rejection::UpstreamTimeout { deadline_ms } => {
                body.insert("deadline_ms".into(), json!(deadline_ms));
            }
            _ => {}
        }
        let body = Bytes::from(Value::Object(body).to_string());
        let header = build_header(self.status(), request_id, body.len(), &headers);
        Rendered {
            header,
            body,
            keepalive: self.keepalive(),
        }
    }
}

/// A preflight's 204: no body, and so no `Content-Length` or `Content-Type` (RFC 9110 8.6).
#[allow(clippy::expect_used)]
fn preflight(p: &crate::cors::Preflight, request_id: &str) -> Rendered {
    let mut h = ResponseHeader::build(204, Some(5)).expect("valid status");
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert_header("x-request-id", v).expect("valid value");
    }
    h.insert_header(crate::cors::ACAM, p.allow_methods.clone())
        .expect("valid header");
    if let Some(v) = &p.allow_headers {
        h.insert_header(crate::cors::ACAH, v.clone())
            .expect("valid header");
    }
    h.insert_header(crate::cors::ACMA, p.max_age.clone())
        .expect("valid header");
    Rendered {
        header: h,
        body: Bytes::new(),
        keepalive: true,
    }
}

#[allow(clippy::expect_used)]
fn build_header(
    status: u16,
    request_id: &str,
    len: usize,
    extra: &[(HeaderName, String)],
) -> ResponseHeader {
    // Every value here is built from config-validated text or numbers; a failure is a bug, and
    // it is better caught loudly by the unit tests than turned into an unauthenticated pass.
    let mut h = ResponseHeader::build(status, Some(4 + extra.len())).expect("valid status");
    h.insert_header(http::header::CONTENT_TYPE, "application/json")
        .expect("static header");
    h.insert_header(http::header::CONTENT_LENGTH, len.to_string())
        .expect("number");
    h.insert_header(http::header::CACHE_CONTROL, "no-store")
        .expect("static header");
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert_header("x-request-id", v).expect("valid value");
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append_header(name.clone(), v).expect("valid header");
        }
    }
    h
}

/// RFC 3339 UTC with milliseconds ("2026-12-03T07:50:21.123Z"), for log lines: written into
/// a stack buffer, so a line's timestamp costs no allocation and no formatter.
pub struct LogTime([u8; 24]);

impl LogTime {
    pub fn new(t: SystemTime) -> Self {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs() as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut digits = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        // Years past 9999 are not RFC 3339; a clock that far off shows as 9999.
        digits(0, 4, y.clamp(0, 9999) as u32);
        digits(5, 2, m);
        digits(8, 2, d);
        digits(11, 2, rem / 3600);
        digits(14, 2, rem % 3600 / 60);
        digits(17, 2, rem % 60);
        digits(20, 3, since.subsec_millis());
        LogTime(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and the literal separators are ever written.
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

/// RFC 3339 UTC, second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> AuthTexts {
        AuthTexts {
            realm: "lms-api".into(),
            refresh_endpoint: Some("/api/token/refresh/".into()),
            login_endpoint: Some("/api/token/".into()),
        }
    }

    fn body(r: &Rendered) -> Value {
        serde_json::from_slice(&r.body).expect("json body")
    }

    fn header<'a>(r: &'a Rendered, name: &str) -> Option<&'a str> {
        r.header.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn every_rejection_has_the_common_shape() {
        let all = [
            Rejection::BadRequest("x"),
            Rejection::NotFound,
            Rejection::PayloadTooLarge { limit: 10 },
            Rejection::MissingToken,
            Rejection::TokenExpired {
                expired_at: SystemTime::UNIX_EPOCH,
            },
            Rejection::InvalidToken {
                reason: "bad signature".into(),
            },
            Rejection::InsufficientScope {
                required: vec!["a".into()],
            },
            Rejection::UpstreamUnavailable,
            Rejection::AuthUnavailable {
                retry_after: Duration::from_millis(1500),
            },
            Rejection::UpstreamTimeout { deadline_ms: 300 },
            Rejection::Internal,
        ];
        for r in all {
            let out = r.render("req-1", &texts());
            let b = body(&out);
            assert_eq!(out.header.status.as_u16(), r.status());
            assert_eq!(b["error"], r.code());
            assert_eq!(b["request_id"], "req-1");
            assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(header(&out, "content-type"), Some("application/json"));
            assert_eq!(header(&out, "x-request-id"), Some("req-1"));
            assert_eq!(
                header(&out, "content-length"),
                Some(out.body.len().to_string().as_str())
            );
        }
    }

    #[test]
    fn auth_answers_carry_rfc6750_challenges_and_actions() {
        let t = texts();
        let missing = Rejection::MissingToken.render("r", &t);
        assert_eq!(
            header(&missing, "www-authenticate"),
            Some("Bearer realm=\"lms-api\"")
        );

        let expired = Rejection::TokenExpired {
            expired_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
        .render("r", &t);
        let b = body(&expired);
        assert_eq!(b["action"], "refresh");
        assert_eq!(b["refresh_endpoint"], "/api/token/refresh/");
        assert_eq!(b["expired_at"], "2023-11-14T22:13:20Z");
        assert!(header(&expired, "www-authenticate")
            .is_some_and(|h| h.contains("error=\"invalid_token\"")));

        let invalid = Rejection::InvalidToken {
            reason: "bad signature".into(),
        }
        .render("r", &t);
        assert_eq!(body(&invalid)["action"], "login");
        assert_eq!(body(&invalid)["login_endpoint"], "/api/token/");

        let scope = Rejection::InsufficientScope {
            required: vec!["read".into(), "write".into()],
        }
        .render("r", &t);
        assert_eq!(body(&scope)["required_scopes"], json!(["read", "write"]));
        assert!(
            header(&scope, "www-authenticate").is_some_and(|h| h.contains("scope=\"read write\""))
        );
    }

    #[test]
    fn extras() {
        let t = texts();
        let rl = Rejection::RateLimited(RateLimitInfo {
            index: 0,
            policy: "user".into(),
            limit: 5,
            limit_header: http::HeaderValue::from(5u32),
            remaining: 0,
            reset_s: 3,
            retry_after_s: 1,
        })
        .render("r", &t);
        assert_eq!(header(&rl, "retry-after"), Some("1"));
        assert_eq!(header(&rl, "ratelimit-limit"), Some("5"));
        assert_eq!(body(&rl)["policy"], "user");
        let to = Rejection::UpstreamTimeout { deadline_ms: 300 }.render("r", &t);
        assert_eq!(body(&to)["deadline_ms"], 300);
        assert!(!to.keepalive);
        let au = Rejection::AuthUnavailable {
            retry_after: Duration::from_millis(1500),
        }
        .render("r", &t);
        assert_eq!(header(&au, "retry-after"), Some("2"));
        assert!(Rejection::NotFound.render("r", &t).keepalive);
    }

    #[test]
    fn log_time_has_milliseconds_and_matches_the_seconds_form() {
        use std::time::Duration;
        assert_eq!(
            LogTime::new(SystemTime::UNIX_EPOCH).as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-02-29 (a leap day) 23:59:59.987
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(951_868_799_987);
        assert_eq!(LogTime::new(t).as_str(), "2000-02-29T23:59:59.987Z");
        for secs in [0u64, 86_399, 951_782_400, 1_796_284_221, 4_102_444_800] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(5);
            let seconds = rfc3339(t);
            assert_eq!(
                LogTime::new(t).as_str(),
                format!("{}.005Z", &seconds[..seconds.len() - 1])
            );
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }
}
