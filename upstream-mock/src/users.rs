//! The LMS's user accounts and the per-user profile endpoint, which trusts the
//! gateway's `X-Auth-Subject` header exactly like the real LMS is meant to.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{json, Value};

use crate::{app::AppState, respond};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub password: String,
    pub id: u64,
}

/// The configured accounts; usernames and ids are unique.
#[derive(Debug, Clone)]
pub struct Users(Vec<User>);

impl Users {
    pub fn new(users: Vec<User>) -> Result<Self, String> {
        for (i, u) in users.iter().enumerate() {
            if let Some(dup) = users[..i]
                .iter()
                .find(|o| o.username == u.username || o.id == u.id)
            {
                return Err(format!(
                    "users {:?} and {:?} share a username or an id",
                    dup.username, u.username
                ));
            }
        }
        Ok(Self(users))
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.0.iter()
    }

    /// The account matching both credentials. (A mock: no constant-time comparison.)
    pub fn authenticate(&self, username: &str, password: &str) -> Option<&User> {
        self.0
            .iter()
            .find(|u| u.username == username && u.password == password)
    }

    pub fn by_id(&self, id: u64) -> Option<&User> {
        self.0.iter().find(|u| u.id == id)
    }
}

/// `GET /api/users/{id}/profile/`: 200 when `X-Auth-Subject` names this very user,
/// 403 otherwise. Ids with no configured account get a synthesized profile, so that
/// tests can mint tokens for any subject and still reach a 200.
pub async fn profile(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if respond::header_str(&headers, "x-auth-subject") != Some(id.as_str()) {
        return respond::detail(
            StatusCode::FORBIDDEN,
            "You do not have permission to perform this action.",
        );
    }
    let body = match id.parse::<u64>() {
        Ok(n) => match state.users.by_id(n) {
            Some(u) => profile_json(json!(u.id), &u.username),
            None => profile_json(json!(n), &format!("user{n}")),
        },
        // Non-numeric subjects (e.g. "service:ci") keep their string id.
        Err(_) => profile_json(json!(id), &id.replace(':', "-")),
    };
    respond::json(StatusCode::OK, body)
}

fn profile_json(id: Value, username: &str) -> Value {
    json!({ "id": id, "username": username, "email": format!("{username}@example.com") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Users {
        Users::new(vec![
            User {
                username: "alice".into(),
                password: "pw".into(),
                id: 42,
            },
            User {
                username: "bob".into(),
                password: "pw2".into(),
                id: 7,
            },
        ])
        .expect("unique")
    }

    #[test]
    fn authenticate_needs_both_credentials() {
        let users = sample();
        assert_eq!(users.authenticate("alice", "pw").map(|u| u.id), Some(42));
        assert!(users.authenticate("alice", "pw2").is_none());
        assert!(users.authenticate("carol", "pw").is_none());
        assert_eq!(users.by_id(7).map(|u| u.username.as_str()), Some("bob"));
    }
}
