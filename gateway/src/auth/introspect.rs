//! RFC 7662 token introspection for opaque tokens.

use super::Principal;
use crate::config::model::IntrospectionSpec;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionFailure {
    /// The server said `active: false`.
    Inactive,
    /// It answered, but not with something usable.
    Malformed(&'static str),
    /// Down, timing out, or refusing our client credentials: nobody can tell.
    Unavailable,
}

/// Longest introspection answer read: a few hundred bytes is usual.
const MAX_ANSWER: usize = 64 * 1024;

use super::MAX_TIME_SECS as MAX_TIME;

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    /// Everything else, where the subject field is looked up.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Where an introspection answer comes from: the POST of RFC 7662 section 2.1 and nothing
/// more. `Ok` is a 2xx body of at most `MAX_ANSWER` bytes; anything else (down, timing out,
/// refusing our client credentials, too large) is `Err`, logged by the endpoint, which knows
/// why. Reading the answer stays in `Introspector`, so tests of it need no server.
#[async_trait]
pub trait IntrospectionEndpoint: Send + Sync {
    async fn post(&self, provider: &str, token: &str) -> Result<Vec<u8>, ()>;
}

/// The endpoint over HTTP(S), with the provider's CA bundle and client credentials.
pub struct HttpEndpoint {
    url: String,
    client_id: String,
    client_secret: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpEndpoint {
    pub fn new(name: &str, spec: &IntrospectionSpec) -> Result<Self, String> {
        let client = crate::tls::trust::idp_client_builder(spec.ca.as_deref())
            .map_err(|e| format!("auth.providers.{name}: {e}"))?
            .timeout(spec.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("auth.providers.{name}: HTTP client: {e}"))?;
        Ok(HttpEndpoint {
            url: spec.url.clone(),
            client_id: spec.client_id.clone(),
            client_secret: String::from_utf8_lossy(spec.client_secret.expose()).into_owned(),
            timeout: spec.timeout,
            client,
        })
    }
}

#[async_trait]
impl IntrospectionEndpoint for HttpEndpoint {
    async fn post(&self, provider: &str, token: &str) -> Result<Vec<u8>, ()> {
        let request = self
            .client
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .timeout(self.timeout)
            .send();
        let resp = match request.await {
            Ok(r) => r,
            Err(e) => {
                // The cause chain names TLS problems (expired, unknown issuer, wrong name); the
                // URL and the token are not in it.
                let e = e.without_url();
                tracing::warn!(provider, timeout = e.is_timeout(), error = %crate::tls::trust::error_chain(&e), "introspection request failed");
                return Err(());
            }
        };
        if !resp.status().is_success() {
            tracing::warn!(
                provider,
                status = resp.status().as_u16(),
                "introspection endpoint refused"
            );
            return Err(());
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            tracing::warn!(provider, "introspection answer too large");
            return Err(());
        }
        match read_capped(resp, MAX_ANSWER).await {
            Some(b) => Ok(b),
            None => {
                tracing::warn!(provider, "introspection answer unreadable or too large");
                Err(())
            }
        }
    }
}

pub struct Introspector {
    pub name: Arc<str>,
    endpoint: Box<dyn IntrospectionEndpoint>,
    subject_field: String,
    /// `max_concurrency` calls at once: a flood of junk tokens costs the IdP at most that.
    slots: tokio::sync::Semaphore,
    /// Fields of the answer copied into the principal for route rules.
    keep: Arc<[crate::config::model::ClaimPath]>,
    /// `dpop` is on: the answer's `cnf` is read (RFC 9449 6.2).
    binds: bool,
}

impl Introspector {
    pub fn new(name: &str, spec: &IntrospectionSpec) -> Result<Self, String> {
        let endpoint = HttpEndpoint::new(name, spec)?;
        Ok(Self::with_endpoint(name, spec, Box::new(endpoint)))
    }

    /// As `new`, asking `endpoint` instead of the spec's URL.
    pub fn with_endpoint(
        name: &str,
        spec: &IntrospectionSpec,
        endpoint: Box<dyn IntrospectionEndpoint>,
    ) -> Self {
        Introspector {
            name: name.into(),
            endpoint,
            subject_field: spec.subject_field.clone(),
            slots: tokio::sync::Semaphore::new(spec.max_concurrency as usize),
            keep: Arc::from([]),
            binds: spec.dpop.mode != crate::config::model::DpopMode::Off,
        }
    }

    /// Keeps these fields of each answer with the principal (see `auth::keep_claims`).
    pub fn keeping(mut self, keep: Arc<[crate::config::model::ClaimPath]>) -> Self {
        self.keep = keep;
        self
    }

    pub async fn introspect(&self, token: &str) -> Result<Principal, IntrospectionFailure> {
        let Ok(_slot) = self.slots.try_acquire() else {
            tracing::warn!(provider = %self.name, "introspection calls at max_concurrency; answered 503");
            return Err(IntrospectionFailure::Unavailable);
        };
        let body = self
            .endpoint
            .post(&self.name, token)
            .await
            .map_err(|()| IntrospectionFailure::Unavailable)?;
        let answer: Answer = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(_) => return Err(IntrospectionFailure::Unavailable),
        };
        if !answer.active {
            return Err(IntrospectionFailure::Inactive);
        }
        // Only the configured field: falling back to `username` would put user names in the
        // namespace of user ids, where "1" is somebody else.
        let subject = match answer.rest.get(&self.subject_field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => {
                return Err(IntrospectionFailure::Malformed(
                    "introspection gave no subject",
                ))
            }
        };
        if !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(IntrospectionFailure::Malformed(
                "subject is not printable ASCII",
            ));
        }
        if answer.exp.is_some_and(|t| t > MAX_TIME) || answer.iat.is_some_and(|t| t > MAX_TIME) {
            return Err(IntrospectionFailure::Malformed(
                "introspection gave an exp or iat out of range",
            ));
        }
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let expires_at = answer.exp.map(at);
        if expires_at.is_some_and(|e| e <= SystemTime::now()) {
            // Active but already past its exp: a server clock problem; trust exp.
            return Err(IntrospectionFailure::Inactive);
        }
        let jkt = match self.binds {
            true => super::dpop::confirmation(answer.rest.get("cnf"))
                .map_err(IntrospectionFailure::Malformed)?,
            false => None,
        };
        Ok(Principal {
            subject,
            scopes: super::scope_set(
                answer
                    .scope
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter(|s| s.bytes().all(|b| (0x21..0x7f).contains(&b)))
                    .map(str::to_owned)
                    .collect(),
            ),
            provider: self.name.clone(),
            expires_at,
            valid_until: expires_at,
            credential_id: None,
            jti: answer.jti,
            issued_at: answer.iat.map(at),
            claims: super::keep_claims(&self.keep, &answer.rest),
            jkt,
        })
    }
}

/// The body, or `None` past `limit` bytes or on a read error.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ClaimPath, DpopMode, DpopSpec, Secret};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// An authorization server in memory: one answer for every token, and what it was asked.
    #[derive(Default)]
    struct MemoryEndpoint {
        answer: Mutex<Option<Vec<u8>>>,
        asked: Mutex<Vec<String>>,
        /// When set, every call waits here until released: calls in flight can be counted.
        hold: Option<Arc<tokio::sync::Notify>>,
        in_flight: AtomicUsize,
    }

    impl MemoryEndpoint {
        fn answering(v: serde_json::Value) -> Arc<Self> {
            let e = MemoryEndpoint::default();
            *e.answer.lock().expect("lock") = Some(serde_json::to_vec(&v).expect("test value"));
            Arc::new(e)
        }
    }

    #[async_trait]
    impl IntrospectionEndpoint for Arc<MemoryEndpoint> {
        async fn post(&self, _provider: &str, token: &str) -> Result<Vec<u8>, ()> {
            self.asked.lock().expect("lock").push(token.to_string());
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if let Some(hold) = &self.hold {
                hold.notified().await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.answer.lock().expect("lock").clone().ok_or(())
        }
    }

    fn spec(dpop: DpopMode, max_concurrency: u32) -> IntrospectionSpec {
        IntrospectionSpec {
            url: "https://idp.invalid/introspect".into(),
            client_id: "authgate".into(),
            client_secret: Secret::new(b"s3cret".to_vec()),
            timeout: Duration::from_millis(500),
            ca: None,
            subject_field: "user_id".into(),
            max_concurrency,
            dpop: DpopSpec {
                mode: dpop,
                ..DpopSpec::default()
            },
        }
    }

    fn introspector(endpoint: &Arc<MemoryEndpoint>) -> Introspector {
        Introspector::with_endpoint("knox", &spec(DpopMode::Off, 4), Box::new(endpoint.clone()))
    }

    fn later(secs: u64) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("test value")
            .as_secs()
            + secs
    }

    #[tokio::test]
    async fn an_active_answer_is_a_principal_of_the_configured_subject_field() {
        let exp = later(600);
        let ep = MemoryEndpoint::answering(json!({
            "active": true, "user_id": 42, "username": "alice",
            "scope": "read  write bad\u{1}scope", "exp": exp, "jti": "j-1", "tenant": "t1"
        }));
        let keep: Arc<[ClaimPath]> = Arc::from([ClaimPath::parse("tenant").expect("test value")]);
        let p = introspector(&ep)
            .keeping(keep)
            .introspect("opaque-1")
            .await
            .expect("active");
        assert_eq!(p.subject, "42", "a numeric id, not the username");
        assert_eq!(&*p.provider, "knox");
        let mut scopes: Vec<&str> = p.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        assert_eq!(
            scopes,
            ["read", "write"],
            "a scope with a control byte is dropped"
        );
        assert_eq!(
            p.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
        );
        assert_eq!(p.jti.as_deref(), Some("j-1"));
        assert_eq!(
            p.claims.as_deref().and_then(|c| c.get("tenant")),
            Some(&json!("t1"))
        );
        assert_eq!(p.jkt, None, "cnf is not read with dpop off");
        assert_eq!(*ep.asked.lock().expect("lock"), ["opaque-1"]);
    }

    #[tokio::test]
    async fn inactive_expired_and_unusable_answers_are_told_apart() {
        let cases = [
            (json!({"active": false}), IntrospectionFailure::Inactive),
            // Active but past its exp: the server's clock is off; exp is believed.
            (
                json!({"active": true, "user_id": "u", "exp": 1_000}),
                IntrospectionFailure::Inactive,
            ),
            (
                json!({"active": true, "username": "alice"}),
                IntrospectionFailure::Malformed("introspection gave no subject"),
            ),
            (
                json!({"active": true, "user_id": ""}),
                IntrospectionFailure::Malformed("introspection gave no subject"),
            ),
            (
                json!({"active": true, "user_id": "al\u{e9}"}),
                IntrospectionFailure::Malformed("subject is not printable ASCII"),
            ),
            (
                json!({"active": true, "user_id": "u", "exp": u64::MAX}),
                IntrospectionFailure::Malformed("introspection gave an exp or iat out of range"),
            ),
            // Not an RFC 7662 answer at all: nobody can tell, so not the client's fault.
            (json!({"user_id": "u"}), IntrospectionFailure::Unavailable),
        ];
        for (answer, want) in cases {
            let ep = MemoryEndpoint::answering(answer.clone());
            let got = introspector(&ep).introspect("t").await;
            assert_eq!(got.err(), Some(want), "{answer}");
        }
    }

    #[tokio::test]
    async fn an_endpoint_failure_or_a_body_that_is_not_json_is_unavailable() {
        let down = Arc::new(MemoryEndpoint::default());
        assert_eq!(
            introspector(&down).introspect("t").await.err(),
            Some(IntrospectionFailure::Unavailable)
        );
        let junk = Arc::new(MemoryEndpoint::default());
        *junk.answer.lock().expect("lock") = Some(b"<html>login</html>".to_vec());
        assert_eq!(
            introspector(&junk).introspect("t").await.err(),
            Some(IntrospectionFailure::Unavailable)
        );
    }

    #[tokio::test]
    async fn with_dpop_on_the_cnf_binding_is_read_and_a_bad_one_refused() {
        let with = |cnf: serde_json::Value| {
            MemoryEndpoint::answering(json!({"active": true, "user_id": "u", "cnf": cnf}))
        };
        let on = |ep: &Arc<MemoryEndpoint>| {
            Introspector::with_endpoint("knox", &spec(DpopMode::Optional, 4), Box::new(ep.clone()))
        };
        let p = on(&with(
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        ))
        .introspect("t")
        .await
        .expect("bound");
        assert_eq!(
            p.jkt.as_deref(),
            Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
        assert!(matches!(
            on(&with(json!({"x5t#S256": "abc"}))).introspect("t").await,
            Err(IntrospectionFailure::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn calls_beyond_max_concurrency_are_refused_without_asking_the_server() {
        let hold = Arc::new(tokio::sync::Notify::new());
        let ep = Arc::new(MemoryEndpoint {
            hold: Some(hold.clone()),
            ..MemoryEndpoint::default()
        });
        *ep.answer.lock().expect("lock") = Some(br#"{"active":true,"user_id":"u"}"#.to_vec());
        let x = Arc::new(Introspector::with_endpoint(
            "knox",
            &spec(DpopMode::Off, 2),
            Box::new(ep.clone()),
        ));
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let x = x.clone();
                tokio::spawn(async move { x.introspect("t").await })
            })
            .collect();
        while ep.in_flight.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let third = tokio::time::timeout(Duration::from_secs(5), x.introspect("t")).await;
        assert_eq!(
            third.expect("refused at once, not queued").err(),
            Some(IntrospectionFailure::Unavailable),
            "a third call while two are out"
        );
        assert_eq!(
            ep.asked.lock().expect("lock").len(),
            2,
            "the server saw two"
        );
        hold.notify_waiters();
        for c in calls {
            assert!(c.await.expect("test value").is_ok());
        }
        // The slots came back.
        hold.notify_one();
        assert!(x.introspect("t").await.is_ok());
    }
}
