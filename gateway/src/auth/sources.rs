//! Token sources besides `Authorization` (route `auth.cookie`, `auth.query_param`): browsers
//! cannot set headers on a WebSocket handshake or an `<img>`, but they send cookies and URLs.
//! A token read from either is taken off what the upstream receives, so it does not end up in
//! the upstream's logs, caches or `Referer`s.

use http::{HeaderMap, HeaderValue};
use std::borrow::Cow;

/// The value of cookie `name` (the first, when repeated), from every `Cookie` header.
pub fn from_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            // RFC 6265 4.1.1: a value may be quoted.
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (n.trim() == name && !v.is_empty()).then_some(v)
        })
}

/// The value of query parameter `name` (the first, when repeated), percent-decoded.
pub fn from_query<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// Removes cookie `name` from every `Cookie` header, keeping the others byte for byte; a
/// header left empty is removed.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let named = |pair: &str| {
        pair.trim()
            .split_once('=')
            .is_some_and(|(n, _)| n.trim() == name)
    };
    // The common request has no such cookie: look before copying anything.
    if !headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|v| v.to_str().map_or(true, |s| s.split(';').any(named)))
    {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(http::header::COOKIE);
    for v in values {
        // A header that is not text cannot be checked: dropped rather than forwarded whole.
        let Ok(s) = v.to_str() else { continue };
        let kept: Vec<&str> = s.split(';').filter(|p| !named(p)).map(str::trim).collect();
        let joined = kept.join("; ");
        if joined.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.append(http::header::COOKIE, v);
        }
    }
}

/// The query without parameter `name` (every occurrence, in any percent-encoding of the name),
/// the other parameters byte for byte in their order. `None` when nothing is left.
pub fn strip_query<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let named = |pair: &str| {
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        form_urlencoded::parse(raw.as_bytes())
            .next()
            .is_some_and(|(n, _)| n == name)
    };
    if !query.split('&').any(named) {
        return (!query.is_empty()).then_some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !named(p))
        .collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::COOKIE, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn cookie_values_are_found_in_any_cookie_header() {
        let h = cookies(&["a=1; access_token=abc.def.ghi; b=2", "access_token=second"]);
        assert_eq!(from_cookie(&h, "access_token"), Some("abc.def.ghi"));
        assert_eq!(from_cookie(&cookies(&["x=1", "t=\"q\""]), "t"), Some("q"));
        assert_eq!(
            from_cookie(&cookies(&["my_access_token=x"]), "access_token"),
            None
        );
        assert_eq!(
            from_cookie(&cookies(&["access_token="]), "access_token"),
            None
        );
        assert_eq!(from_cookie(&HeaderMap::new(), "access_token"), None);
    }

    #[test]
    fn a_stripped_cookie_leaves_the_others_alone() {
        let mut h = cookies(&["a=1; access_token=abc; b=2", "access_token=x", "c=3"]);
        strip_cookie(&mut h, "access_token");
        let left: Vec<&str> = h
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        let mut h = cookies(&["access_token=abc"]);
        strip_cookie(&mut h, "access_token");
        assert!(h.get(http::header::COOKIE).is_none());
    }

    #[test]
    fn query_tokens_are_decoded_and_stripped_in_any_spelling() {
        assert_eq!(
            from_query(Some("a=1&access_token=abc%2Edef&b=2"), "access_token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(from_query(Some("access_token="), "access_token"), None);
        assert_eq!(from_query(None, "access_token"), None);
        assert_eq!(
            strip_query("a=1&access_token=x&b=%20&access%5Ftoken=y", "access_token").as_deref(),
            Some("a=1&b=%20")
        );
        assert_eq!(strip_query("access_token=x", "access_token"), None);
        assert!(matches!(
            strip_query("q=yoga&page=2", "access_token"),
            Some(Cow::Borrowed("q=yoga&page=2"))
        ));
    }
}
