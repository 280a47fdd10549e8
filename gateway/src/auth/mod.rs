//! Authentication: from a request's credentials to a `Principal`, or a `Rejection`.
//!
//! Routes say which providers may vouch for a request (`RouteAuth`); this module only answers
//! "who is this" and "may they use this route". It never sees the session.

use crate::config::model::RouteAuth;
use crate::proxy::respond::Rejection;
use http::HeaderMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Who a request acts for, as a provider vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    pub provider: Arc<str>,
    pub expires_at: Option<SystemTime>,
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

/// The credential a request carries, borrowed from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    /// `Authorization: <scheme> <value>` with another scheme (API keys).
    Scheme { scheme: &'a str, value: &'a str },
}

pub fn credential(headers: &HeaderMap) -> Option<Credential<'_>> {
    let raw = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, value) = raw.split_once(' ')?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(Credential::Bearer(value))
    } else {
        Some(Credential::Scheme { scheme, value })
    }
}

/// The process-wide authenticator. Token verification arrives with the provider issues; until
/// a provider can vouch for a credential, every protected route refuses it (fail closed).
#[derive(Debug, Default)]
pub struct Authenticator;

impl Authenticator {
    pub async fn authenticate(&self, route: &RouteAuth, headers: &HeaderMap) -> Result<Identity, Rejection> {
        match route {
            RouteAuth::None => Ok(Identity::Anonymous),
            RouteAuth::Optional { .. } if headers.get(http::header::AUTHORIZATION).is_none() => {
                Ok(Identity::Anonymous)
            }
            RouteAuth::Optional { .. } | RouteAuth::Required { .. } => match credential(headers) {
                None if headers.get(http::header::AUTHORIZATION).is_none() => Err(Rejection::MissingToken),
                _ => Err(Rejection::InvalidToken {
                    reason: "no configured provider accepts this credential",
                }),
            },
        }
    }
}
