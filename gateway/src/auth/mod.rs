//! Authentication: from a request's credentials to a `Principal`, or a `Rejection`.
//!
//! Routes say which providers may vouch for a request (`RouteAuth`); this module answers "who
//! is this" and then checks the route's policy (allowed providers, scopes) on every request,
//! so one route's answer never leaks to another. It never sees the session.

pub mod jwks;
pub mod jwt;
pub mod keys;

use crate::config::model::{AuthSettings, ProviderKind, RouteAuth};
use crate::metrics::Metrics;
use crate::proxy::respond::Rejection;
use http::HeaderMap;
use jwks::JwksStore;
use jwt::{is_jwt_shaped, JwtFailure, JwtVerifier};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Who a request acts for, as a provider vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    pub provider: Arc<str>,
    pub expires_at: Option<SystemTime>,
    /// Which configured credential it was (an API key's `id`), for per-key limits.
    pub credential_id: Option<Arc<str>>,
}

/// What authentication decided for one request.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The route is public, or optional auth and no credential was sent.
    Anonymous,
    Authenticated(Arc<Principal>),
}

impl Identity {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Identity::Anonymous => None,
            Identity::Authenticated(p) => Some(p),
        }
    }
}

/// The `outcome` label of `authgate_auth_total`, also logged per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    MissingToken,
    TokenExpired,
    InvalidToken,
    InsufficientScope,
    AuthUnavailable,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::MissingToken,
        Outcome::TokenExpired,
        Outcome::InvalidToken,
        Outcome::InsufficientScope,
        Outcome::AuthUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MissingToken => "missing_token",
            Outcome::TokenExpired => "token_expired",
            Outcome::InvalidToken => "invalid_token",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::AuthUnavailable => "auth_unavailable",
        }
    }
}

/// The result of authentication plus what it is logged and counted as.
pub struct Decision {
    pub result: Result<Identity, Rejection>,
    /// `None` on public routes and for anonymous requests on optional routes.
    pub outcome: Option<Outcome>,
}

/// The credential a request carries, borrowed from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    /// `Authorization: <scheme> <value>` with another scheme (API keys).
    Scheme {
        scheme: &'a str,
        value: &'a str,
    },
}

/// Parses `Authorization`; `Err` when it is present but not of the form `<scheme> <value>`.
pub fn credential(headers: &HeaderMap) -> Option<Result<Credential<'_>, ()>> {
    let raw = headers.get(http::header::AUTHORIZATION)?;
    let Ok(raw) = raw.to_str() else {
        return Some(Err(()));
    };
    let Some((scheme, value)) = raw.trim().split_once(' ') else {
        return Some(Err(()));
    };
    let value = value.trim();
    if value.is_empty() || value.contains(' ') {
        return Some(Err(()));
    }
    Some(Ok(if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer(value)
    } else {
        Credential::Scheme { scheme, value }
    }))
}

enum Provider {
    Jwt(JwtVerifier),
    /// Providers whose verification has not been built yet refuse everything (fail closed).
    Refusing,
}

/// Key stores outlive configuration versions: a reload that keeps a provider's JWKS URL keeps
/// its loaded keys and background refresh.
#[derive(Default)]
pub struct KeyStores {
    stores: Mutex<HashMap<(String, String), Arc<JwksStore>>>,
}

impl KeyStores {
    fn get_or_create(
        &self,
        provider: &str,
        url: &str,
        refresh: Duration,
        metrics: &Metrics,
    ) -> Result<(Arc<JwksStore>, bool), String> {
        let mut map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let key = (provider.to_string(), url.to_string());
        if let Some(s) = map.get(&key) {
            return Ok((s.clone(), false));
        }
        let store = Arc::new(JwksStore::new(
            provider,
            url,
            refresh,
            metrics
                .jwks_refresh_total
                .with_label_values(&[provider, "ok"]),
            metrics
                .jwks_refresh_total
                .with_label_values(&[provider, "error"]),
        )?);
        map.insert(key, store.clone());
        Ok((store, true))
    }

    /// Drops stores no configuration uses any more.
    pub fn retain(&self, in_use: &[Arc<JwksStore>]) {
        let mut map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| in_use.iter().any(|u| Arc::ptr_eq(u, s)));
    }
}

/// The authenticator of one configuration version.
pub struct Authenticator {
    providers: Vec<Provider>,
    names: Vec<Arc<str>>,
    /// `[provider][outcome]`, with one extra row for `provider="none"`.
    counters: Vec<[IntCounter; 6]>,
    /// Stores created for this version, which the caller must load and keep refreshed.
    pub new_stores: Vec<Arc<JwksStore>>,
    pub stores: Vec<Arc<JwksStore>>,
}

impl Authenticator {
    pub fn build(
        settings: &AuthSettings,
        stores: &KeyStores,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let mut providers = Vec::with_capacity(settings.providers.len());
        let mut new_stores = Vec::new();
        let mut all_stores = Vec::new();
        for spec in &settings.providers {
            providers.push(match &spec.kind {
                ProviderKind::Jwt(j) => {
                    let store = match &j.jwks_url {
                        Some(url) => {
                            let (s, new) =
                                stores.get_or_create(&spec.name, url, j.jwks_refresh, metrics)?;
                            if new {
                                new_stores.push(s.clone());
                            }
                            all_stores.push(s.clone());
                            Some(s)
                        }
                        None => None,
                    };
                    Provider::Jwt(JwtVerifier::new(&spec.name, j, store)?)
                }
                ProviderKind::Introspection(_) | ProviderKind::ApiKey(_) => Provider::Refusing,
            });
        }
        let names: Vec<Arc<str>> = settings
            .providers
            .iter()
            .map(|p| Arc::from(p.name.as_str()))
            .collect();
        let counters = names
            .iter()
            .map(|n| &**n)
            .chain(std::iter::once("none"))
            .map(|n| Outcome::ALL.map(|o| metrics.auth_total.with_label_values(&[n, o.as_str()])))
            .collect();
        Ok(Authenticator {
            providers,
            names,
            counters,
            new_stores,
            stores: all_stores,
        })
    }

    /// Every JWKS provider has loaded its keys at least once.
    pub fn keys_loaded(&self) -> Vec<&str> {
        self.stores
            .iter()
            .filter(|s| !s.is_loaded())
            .map(|s| &*s.provider)
            .collect()
    }

    pub async fn authenticate(&self, route: &RouteAuth, headers: &HeaderMap) -> Decision {
        let (allowed, scopes, optional): (&[usize], &[String], bool) = match route {
            RouteAuth::None => {
                return Decision {
                    result: Ok(Identity::Anonymous),
                    outcome: None,
                }
            }
            RouteAuth::Optional { providers } => (providers, &[], true),
            RouteAuth::Required { providers, scopes } => (providers, scopes, false),
        };
        let (provider, result) = match credential(headers) {
            None if optional => {
                return Decision {
                    result: Ok(Identity::Anonymous),
                    outcome: None,
                }
            }
            None => (None, Err(Rejection::MissingToken)),
            Some(Err(())) => (
                None,
                Err(Rejection::InvalidToken {
                    reason: "malformed Authorization header",
                }),
            ),
            Some(Ok(Credential::Bearer(token))) if is_jwt_shaped(token) => {
                self.verify_jwt(allowed, token).await
            }
            Some(Ok(_)) => (
                allowed.first().copied(),
                Err(Rejection::InvalidToken {
                    reason: "no provider of this route accepts this kind of credential",
                }),
            ),
        };
        let result = result.and_then(|p| check_scopes(p, scopes));
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(Rejection::MissingToken) => Outcome::MissingToken,
            Err(Rejection::TokenExpired { .. }) => Outcome::TokenExpired,
            Err(Rejection::InsufficientScope { .. }) => Outcome::InsufficientScope,
            Err(Rejection::AuthUnavailable { .. }) => Outcome::AuthUnavailable,
            Err(_) => Outcome::InvalidToken,
        };
        let row = provider.unwrap_or(self.names.len());
        self.counters[row][outcome as usize].inc();
        Decision {
            result: result.map(Identity::Authenticated),
            outcome: Some(outcome),
        }
    }

    /// The route's JWT providers in order; the first definite answer wins.
    async fn verify_jwt(
        &self,
        allowed: &[usize],
        token: &str,
    ) -> (Option<usize>, Result<Arc<Principal>, Rejection>) {
        let mut first: Option<(usize, &'static str)> = None;
        let mut unavailable = None;
        for &i in allowed {
            let Provider::Jwt(v) = &self.providers[i] else {
                continue;
            };
            match v.verify(token).await {
                Ok(p) => return (Some(i), Ok(Arc::new(p))),
                Err(JwtFailure::Expired(at)) => {
                    return (Some(i), Err(Rejection::TokenExpired { expired_at: at }))
                }
                Err(JwtFailure::Invalid(reason)) => {
                    return (Some(i), Err(Rejection::InvalidToken { reason }))
                }
                Err(JwtFailure::NotMine(reason)) => {
                    first.get_or_insert((i, reason));
                }
                Err(JwtFailure::Unavailable) => {
                    unavailable.get_or_insert(i);
                }
            }
        }
        if let Some(i) = unavailable {
            return (
                Some(i),
                Err(Rejection::AuthUnavailable {
                    retry_after: jwks::MIN_REFETCH,
                }),
            );
        }
        match first {
            Some((i, reason)) => (Some(i), Err(Rejection::InvalidToken { reason })),
            None => (
                allowed.first().copied(),
                Err(Rejection::InvalidToken {
                    reason: "no provider of this route accepts JWTs",
                }),
            ),
        }
    }
}

fn check_scopes(p: Arc<Principal>, required: &[String]) -> Result<Arc<Principal>, Rejection> {
    if required.iter().all(|r| p.scopes.iter().any(|s| s == r)) {
        Ok(p)
    } else {
        Err(Rejection::InsufficientScope {
            required: required.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().expect("value"));
        h
    }

    #[test]
    fn credentials() {
        assert_eq!(credential(&HeaderMap::new()), None);
        let h = hm("Bearer abc.def.ghi");
        assert_eq!(credential(&h), Some(Ok(Credential::Bearer("abc.def.ghi"))));
        let h = hm("bearer   tok ");
        assert_eq!(credential(&h), Some(Ok(Credential::Bearer("tok"))));
        let h = hm("Api-Key k1");
        assert_eq!(
            credential(&h),
            Some(Ok(Credential::Scheme {
                scheme: "Api-Key",
                value: "k1"
            }))
        );
        for bad in ["Bearer", "Bearer ", "justatoken", "Bearer a b"] {
            assert_eq!(credential(&hm(bad)), Some(Err(())), "{bad:?}");
        }
    }

    #[test]
    fn scopes_must_all_be_granted() {
        let p = Arc::new(Principal {
            subject: "s".into(),
            scopes: vec!["read".into(), "write".into()],
            provider: "p".into(),
            expires_at: None,
            credential_id: None,
        });
        assert!(check_scopes(p.clone(), &["read".into()]).is_ok());
        assert!(check_scopes(p.clone(), &[]).is_ok());
        assert_eq!(
            check_scopes(p, &["read".into(), "admin".into()]),
            Err(Rejection::InsufficientScope {
                required: vec!["read".into(), "admin".into()]
            })
        );
    }
}
