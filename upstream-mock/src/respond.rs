//! Response and request helpers shared by every handler.
//!
//! Django REST framework answers errors as `{"detail": "..."}` and field errors as
//! `{"field": ["..."]}`; the helpers here keep the mock's bodies in those shapes so
//! that the gateway is tested against what the real LMS sends.

use axum::{
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};

/// A JSON response with the given status.
pub fn json(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// DRF's generic error body: `{"detail": msg}`.
pub fn detail(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "detail": msg }))
}

/// An error answer: a status and a JSON body. Small enough to travel in `Result`s (a
/// whole `Response` is not), and turned into a response at the handler boundary, so
/// handlers can return `Result<Response, ApiError>` and use `?`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }

    /// `{"detail": msg}` with `status`.
    pub fn detail(status: StatusCode, msg: impl Into<String>) -> Self {
        Self::new(status, json!({ "detail": msg.into() }))
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::detail(StatusCode::BAD_REQUEST, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(self.status, self.body)
    }
}

/// DRF's answer to an unknown URL (Django's 404 rendered by DRF's exception handler).
pub fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

/// Parses a request body that must be a JSON object, answering like DRF's JSONParser
/// (400 "JSON parse error - ...") otherwise. An empty body counts as `{}` so that
/// missing fields are reported field by field, as DRF does for an empty form.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            json!({"non_field_errors": ["Invalid data. Expected a dictionary."]}),
        )),
        Err(e) => Err(ApiError::bad_request(format!("JSON parse error - {e}"))),
    }
}

/// Collects required string fields the way a DRF serializer does: every missing or
/// blank field is reported at once, `{"username": ["This field is required."], ...}`.
pub fn required_strings<'a, const N: usize>(
    map: &'a Map<String, Value>,
    fields: [&str; N],
) -> Result<[&'a str; N], ApiError> {
    let mut errors = Map::new();
    let mut values = [""; N];
    for (slot, field) in values.iter_mut().zip(fields) {
        match map.get(field) {
            None | Some(Value::Null) => {
                errors.insert(field.to_owned(), json!(["This field is required."]));
            }
            Some(Value::String(s)) if s.is_empty() => {
                errors.insert(field.to_owned(), json!(["This field may not be blank."]));
            }
            Some(Value::String(s)) => *slot = s.as_str(),
            Some(_) => {
                errors.insert(field.to_owned(), json!(["Not a valid string."]));
            }
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Value::Object(errors),
        ))
    }
}

/// The raw `key=value` pairs of a query string or an `application/x-www-form-urlencoded`
/// body, decoded (`+` is a space, `%XX` an escaped byte). Invalid escapes are kept as
/// they are rather than rejected: DRF is lenient here too.
pub fn form_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// The first value of `name` in a query string, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_pairs(query?)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Request headers as `[name, value]` pairs in the order the map yields them (the order
/// of first appearance; repeated names are grouped), values as lossy UTF-8.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The value of a header as a string, if present and visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The credential of an `Authorization: <scheme> <credential>` header, when the scheme
/// is one of `schemes` (compared case-insensitively, as RFC 7235 says).
pub fn authorization<'a>(headers: &'a HeaderMap, schemes: &[&str]) -> Option<&'a str> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn form_pairs_decode_plus_and_percent() {
        assert_eq!(
            form_pairs("q=yoga+mat&x=%2Fa%2fb&empty=&flag&bad=%zz&tail=%4"),
            vec![
                ("q".into(), "yoga mat".into()),
                ("x".into(), "/a/b".into()),
                ("empty".into(), "".into()),
                ("flag".into(), "".into()),
                ("bad".into(), "%zz".into()),
                ("tail".into(), "%4".into()),
            ]
        );
        assert_eq!(query_param(Some("a=1&b=2&a=3"), "a").as_deref(), Some("1"));
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn required_strings_reports_every_field() {
        let map = json_object(br#"{"username": "", "other": 1}"#).expect("object");
        let err = required_strings(&map, ["username", "password"]).expect_err("missing");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.body["password"][0], "This field is required.");
        assert_eq!(err.body["username"][0], "This field may not be blank.");
        let ok = json_object(br#"{"username":"a","password":"b"}"#).expect("object");
        assert_eq!(
            required_strings(&ok, ["username", "password"]).expect("present"),
            ["a", "b"]
        );
        assert!(json_object(b"[1]").is_err());
        assert!(json_object(b"{nope").is_err());
        assert!(json_object(b"  ").expect("empty is {}").is_empty());
    }

    #[test]
    fn authorization_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("token abc"));
        assert_eq!(authorization(&h, &["Token", "Bearer"]), Some("abc"));
        assert_eq!(authorization(&h, &["Bearer"]), None);
    }
}
