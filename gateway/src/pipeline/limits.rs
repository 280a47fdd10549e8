//! Limits on the request itself, judged before anything looks at what it asks for. pingora's
//! parser already refuses malformed heads (obs-fold, control characters in headers,
//! conflicting Content-Length) with a bare 400.

use super::Inbound;
use crate::answer::Rejection;
use crate::config::model::RouteSpec;
use http::HeaderMap;

const MAX_REQUEST_LINE: usize = 8 * 1024;
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Request line and header block sizes, and unambiguous framing.
pub fn framing(req: &Inbound<'_>) -> Result<(), Rejection> {
    let line = req.method.as_str().len() + req.target_len + " HTTP/1.1\r\n".len() + 1;
    if line > MAX_REQUEST_LINE {
        return Err(Rejection::UriTooLong);
    }
    let block: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if block > MAX_HEADER_BLOCK {
        return Err(Rejection::HeadersTooLarge);
    }
    // Both framings at once is the classic request-smuggling shape: refuse, do not pick one.
    if req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && req.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return Err(Rejection::BadRequest(
            "Content-Length and Transfer-Encoding together are not accepted",
        ));
    }
    Ok(())
}

/// `Authorization` (and each API-key header) at most once: the gateway and the upstream must
/// never read different credentials from one request (RFC 9110 singleton fields).
pub fn singletons(headers: &HeaderMap, key_headers: &[http::HeaderName]) -> Result<(), Rejection> {
    let twice = |name: &http::HeaderName| {
        let mut all = headers.get_all(name).iter();
        all.next().is_some() && all.next().is_some()
    };
    if twice(&http::header::AUTHORIZATION) {
        return Err(Rejection::BadRequest(
            "more than one Authorization header is not accepted",
        ));
    }
    if key_headers.iter().any(twice) {
        return Err(Rejection::BadRequest(
            "more than one API key header is not accepted",
        ));
    }
    Ok(())
}

/// The route's own limits: declared body size, query length, page size.
pub fn route(req: &Inbound<'_>, spec: &RouteSpec, max_body: u64) -> Result<(), Rejection> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(Rejection::PayloadTooLarge { limit: max_body });
    }
    if let (Some(max), Some(q)) = (spec.max_query_length, req.query) {
        if q.len() > max {
            return Err(Rejection::BadRequest(
                "the query string is longer than this route allows (max_query_length)",
            ));
        }
    }
    if let (Some(max), Some(q)) = (spec.max_page_size, req.query) {
        let too_big = q
            .split('&')
            .filter_map(|p| p.strip_prefix("page_size="))
            .any(|v| v.parse::<u64>().map_or(v.len() > 20, |n| n > max));
        if too_big {
            return Err(Rejection::BadRequest(
                "page_size is larger than this route allows (max_page_size)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};
    use std::time::Instant;

    fn inbound<'a>(headers: &'a HeaderMap, target_len: usize) -> Inbound<'a> {
        static GET: Method = Method::GET;
        Inbound {
            method: &GET,
            target_len,
            path: b"/x",
            query: None,
            host: None,
            scheme: "http",
            headers,
            client_ip: None,
            arrived: Instant::now(),
        }
    }

    #[test]
    fn long_lines_big_heads_and_double_framing_are_refused() {
        let h = HeaderMap::new();
        assert_eq!(framing(&inbound(&h, 100)), Ok(()));
        assert_eq!(framing(&inbound(&h, 9000)), Err(Rejection::UriTooLong));
        let mut big = HeaderMap::new();
        for i in 0..70 {
            big.insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                HeaderValue::from_str(&"a".repeat(1000)).expect("value"),
            );
        }
        assert_eq!(framing(&inbound(&big, 10)), Err(Rejection::HeadersTooLarge));
        let mut both = HeaderMap::new();
        both.insert("content-length", HeaderValue::from_static("3"));
        both.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert!(matches!(
            framing(&inbound(&both, 10)),
            Err(Rejection::BadRequest(_))
        ));
    }

    #[test]
    fn credentials_appear_at_most_once() {
        let key = http::HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.append("authorization", HeaderValue::from_static("Bearer a"));
        h.append("x-api-key", HeaderValue::from_static("k"));
        assert_eq!(singletons(&h, std::slice::from_ref(&key)), Ok(()));
        h.append("x-api-key", HeaderValue::from_static("k2"));
        assert!(singletons(&h, std::slice::from_ref(&key)).is_err());
        assert_eq!(
            singletons(&h, &[]),
            Ok(()),
            "not a key header without the provider"
        );
        h.append("authorization", HeaderValue::from_static("Bearer b"));
        assert!(singletons(&h, &[]).is_err());
    }
}
