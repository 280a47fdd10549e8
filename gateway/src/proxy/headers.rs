//! Header rules for what reaches the upstream: request id, forwarding headers, identity;
//! and the one way the gateway edits pingora's header blocks.

use crate::config::model::TrustedProxies;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Names the gateway sets, made once instead of parsed on every insert.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
pub const X_AUTH_PROVIDER: HeaderName = HeaderName::from_static("x-auth-provider");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const X_REQUEST_TIMEOUT_MS: HeaderName = crate::deadline::CLIENT_HEADER;

/// Edits a request head through its `http` parts in one pass. pingora's `insert_header`
/// parses the name and updates a second, case-preserving name map on every call; the edited
/// head drops that map, so it is sent with canonical names (Title-Case for standard headers,
/// lowercase for the rest, as Envoy sends them). Header names are case-insensitive (RFC 9110).
/// The parts are moved out and back, not cloned: the head's header map is never copied.
pub fn edit_request<T>(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::request::Parts) -> Result<T>,
) -> Result<T> {
    // A target kept as raw bytes (one the URI cannot hold) must survive the rebuild.
    let raw_target = (Some(req.raw_path())
        != req.uri.path_and_query().map(|p| p.as_str().as_bytes()))
    .then(|| (req.raw_path().to_vec(), req.uri.clone()));
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty_request()));
    let out = edit(&mut parts);
    let uri_unchanged = raw_target
        .as_ref()
        .is_some_and(|(_, uri)| *uri == parts.uri);
    *req = RequestHeader::from(parts);
    if let (Some((raw, _)), true) = (raw_target, uri_unchanged) {
        req.set_raw_path(&raw)?;
    }
    out
}

/// [`edit_request`] for a response head; the reason phrase becomes the canonical one.
pub fn edit_response<T>(resp: &mut ResponseHeader, edit: impl FnOnce(&mut HeaderMap) -> T) -> T {
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty_response()));
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    out
}

/// Heads to hold the place of one being edited; they allocate nothing.
fn empty_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

fn empty_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

/// Whether a client's header is one the gateway owns: `X-Auth-*` in any spelling, and, for
/// names with `_`, any gateway-set or gateway-stripped name read with `_` as `-`. Django under
/// ASGI and older gunicorn fold `X_Auth_Subject` into `X-Auth-Subject`, so an underscore
/// spelling would let a client choose its identity.
pub fn gateway_owned(name: &HeaderName) -> bool {
    let n = name.as_str();
    if n.starts_with("x-auth-") {
        return true;
    }
    if !n.contains('_') {
        return false;
    }
    let dashed = n.replace('_', "-");
    dashed.starts_with("x-auth-")
        || dashed.starts_with("x-forwarded-")
        || matches!(
            dashed.as_str(),
            "forwarded" | "x-real-ip" | "x-request-id" | "x-request-timeout-ms"
        )
}

/// Headers that make an upstream framework rewrite the request (its URL, method or client
/// address) after the gateway judged it: Django middlewares, django-ipware, Symfony and IIS
/// believe them. Only a trusted proxy may send them.
const REWRITES: [HeaderName; 7] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];

/// Removes [`REWRITES`] from a request that did not come through a trusted proxy: a request
/// routed as public `/api/token/` must not run `/admin/` upstream, nor a `GET` become a
/// `DELETE`.
pub fn remove_untrusted_rewrites(h: &mut HeaderMap) {
    // The common request has none: one look over its few names instead of seven lookups.
    if !h.keys().any(|k| REWRITES.contains(k)) {
        return;
    }
    for name in &REWRITES {
        h.remove(name);
    }
}

/// Removes the client's headers that only the gateway may set (see [`gateway_owned`]).
pub fn remove_gateway_owned(h: &mut HeaderMap) {
    // The common request has none: look before allocating the list.
    if !h.keys().any(gateway_owned) {
        return;
    }
    let owned: Vec<HeaderName> = h.keys().filter(|k| gateway_owned(k)).cloned().collect();
    for name in owned {
        h.remove(name);
    }
}

/// Removes `name` and any spelling of it with `_` for `-` (see [`gateway_owned`]): for a
/// gateway-set header whose name the configuration chose.
pub fn remove_any_spelling(h: &mut HeaderMap, name: &HeaderName) {
    h.remove(name);
    if !h.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let n = name.as_str();
    let folded: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.len() == n.len()
                && k.bytes()
                    .zip(n.bytes())
                    .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
        })
        .cloned()
        .collect();
    for k in folded {
        h.remove(k);
    }
}

/// Removes from an upstream's answer the headers its `Connection` header names (RFC 9110
/// 7.6.1); `Connection` itself is pingora's to manage. A 101 keeps `Upgrade`.
pub fn remove_connection_nominated(h: &mut HeaderMap, switching_protocols: bool) {
    // One lookup for the usual answer: a single "close" or "keep-alive", naming nothing else.
    let mut values = h.get_all(http::header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(v), None) if matches!(v.as_bytes(), b"close" | b"keep-alive" | b"Keep-Alive") => {
            return
        }
        _ => {}
    }
    let named: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if switching_protocols && name == http::header::UPGRADE {
            continue;
        }
        h.remove(name);
    }
}

/// A client's `X-Request-Id` is kept when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The request's id: the client's `X-Request-Id` when valid, else a new UUID. Held as a header
/// value, so sending it upstream and back costs a reference count, not a copy.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => RequestId(v.clone()),
            _ => {
                let mut buf = uuid::Uuid::encode_buffer();
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
                RequestId(
                    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(id.as_bytes()))
                        .unwrap_or(HeaderValue::from_static("")),
                )
            }
        }
    }

    pub fn as_str(&self) -> &str {
        // Only valid ids (ASCII) and UUIDs are ever held.
        self.0.to_str().unwrap_or_default()
    }

    pub fn value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

/// The client's IP: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
/// are whatever the client chose to send and are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(&peer) {
        return peer;
    }
    let mut candidate = peer;
    // Later X-Forwarded-For lines were appended later, so walk them right to left too.
    let values: Vec<&[u8]> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        let Ok(s) = std::str::from_utf8(value) else {
            return candidate;
        };
        for entry in s.rsplit(',') {
            match parse_forwarded_ip(entry.trim()).map(|ip| ip.to_canonical()) {
                Some(ip) if trusted.contains(&ip) => candidate = ip,
                Some(ip) => return ip,
                // Garbage in the chain: stop at the last address we could vouch for.
                None => return candidate,
            }
        }
    }
    candidate
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // "[::1]:1234" or "1.2.3.4:1234"
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// The `X-Forwarded-For` sent upstream: whatever chain the client sent, plus the TCP peer.
pub fn forwarded_for(headers: &HeaderMap, peer: IpAddr) -> HeaderValue {
    // The longest address text (IPv4-mapped IPv6) is 45 bytes.
    let mut ip_buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut ip_buf[..]);
    push_ip(&mut cursor, peer);
    let ip_len = cursor.position() as usize;
    let ip = &ip_buf[..ip_len];
    // One lookup; the usual client sends no chain, and the value is the address alone.
    let sent = headers.get_all(X_FORWARDED_FOR);
    if sent.iter().next().is_none() {
        return HeaderValue::from_bytes(ip).unwrap_or(HeaderValue::from_static(""));
    }
    let chain = || {
        sent.iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    // Sized exactly, so the buffer becomes the header value without another allocation.
    let len = chain().map(|s| s.len() + 2).sum::<usize>() + ip.len();
    let mut out = Vec::with_capacity(len);
    for s in chain() {
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip);
    // Visible ASCII from valid header values and an address: always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from(out)).unwrap_or(HeaderValue::from_static(""))
}

/// An address in its usual text form; IPv4, nearly every peer, without the formatter.
fn push_ip(out: &mut impl std::io::Write, ip: IpAddr) {
    // Writes into a buffer large enough for any address cannot fail.
    let _ = match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.write_all(&text[..n])
        }
        IpAddr::V6(v6) => write!(out, "{v6}"),
    };
}

/// A header map from name/value pairs, repeats kept in order (unit-test fixture).
#[cfg(test)]
pub(crate) fn test_header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::test_header_map as hm;
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn a_configured_name_is_removed_in_any_spelling() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-pomerium-jwt-assertion", "a"),
            ("x_pomerium_jwt_assertion", "b"),
            ("x-pomerium_jwt-assertion", "c"),
            ("x_pomerium_jwt_assertions", "keep"),
            ("x_other", "keep"),
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("test value"),
                v.parse().expect("test value"),
            );
        }
        remove_any_spelling(&mut h, &HeaderName::from_static("x-pomerium-jwt-assertion"));
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x_other", "x_pomerium_jwt_assertions"]);
    }

    #[test]
    fn owned_names_in_any_spelling() {
        for owned in [
            "x-auth-subject",
            "x_auth_subject",
            "x-auth_scopes",
            "x_forwarded_for",
            "x_forwarded_proto",
            "x_request_id",
            "x_request_timeout_ms",
            "x_real_ip",
            "x_auth_anything",
        ] {
            let n = HeaderName::from_bytes(owned.as_bytes()).expect("name");
            assert!(gateway_owned(&n), "{owned}");
        }
        for other in [
            "x-request-id",
            "x-forwarded-for",
            "authorization",
            "x_custom_thing",
            "x-authorization",
            "forwarded",
        ] {
            let n = HeaderName::from_bytes(other.as_bytes()).expect("name");
            assert!(!gateway_owned(&n), "{other}");
        }
        let mut h = HeaderMap::new();
        h.insert("x_auth_subject", HeaderValue::from_static("1"));
        h.insert("x-auth-subject", HeaderValue::from_static("1"));
        h.insert("x_forwarded_for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_gateway_owned(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-for"]);
    }

    #[test]
    fn rewrite_headers_are_removed() {
        let mut h = HeaderMap::new();
        for n in [
            "forwarded",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-method-override",
            "x-http-method",
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_untrusted_rewrites(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn each_rewrite_header_alone_is_removed() {
        // The removal first looks whether any is there; one alone must be seen.
        for name in &REWRITES {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.append(name.clone(), HeaderValue::from_static("x"));
            remove_untrusted_rewrites(&mut h);
            assert!(!h.contains_key(name), "{name} kept");
            assert!(h.contains_key("accept"));
        }
    }

    #[test]
    fn connection_nominated_response_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("X-Internal, close"));
        h.append("connection", HeaderValue::from_static("x-debug"));
        h.insert("x-internal", HeaderValue::from_static("secret"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        remove_connection_nominated(&mut h, false);
        assert!(!h.contains_key("x-internal"));
        assert!(!h.contains_key("x-debug"));
        assert!(h.contains_key("content-type"));
        let mut up = HeaderMap::new();
        up.insert("connection", HeaderValue::from_static("upgrade"));
        up.insert("upgrade", HeaderValue::from_static("websocket"));
        remove_connection_nominated(&mut up, true);
        assert!(up.contains_key("upgrade"), "a 101 keeps Upgrade");
        // The usual single value is passed over; a second line after it is still read.
        let mut two = HeaderMap::new();
        two.insert("connection", HeaderValue::from_static("keep-alive"));
        two.insert("x-debug", HeaderValue::from_static("1"));
        remove_connection_nominated(&mut two, false);
        assert!(two.contains_key("x-debug"));
        two.append("connection", HeaderValue::from_static("x-debug"));
        remove_connection_nominated(&mut two, false);
        assert!(
            !two.contains_key("x-debug"),
            "the second Connection line was not read"
        );
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
        assert_eq!(
            RequestId::of(&hm(&[("x-request-id", "keep-me")])).as_str(),
            "keep-me"
        );
        let generated = RequestId::of(&hm(&[("x-request-id", "bad id!")]));
        assert_eq!(generated.as_str().len(), 36);
        assert!(uuid::Uuid::parse_str(generated.as_str()).is_ok());
        assert_ne!(
            RequestId::of(&HeaderMap::new()).as_str(),
            generated.as_str()
        );
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        let h = hm(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(peer, &h, &trusted(&[])), peer);
        assert_eq!(client_ip(peer, &h, &trusted(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_entry() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1/32"]);
        let peer: IpAddr = "10.0.0.5".parse().expect("ip");
        let h = hm(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer, &h, &t),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.8"),
        ]);
        assert_eq!(
            client_ip(peer, &h, &t),
            "198.51.100.8".parse::<IpAddr>().expect("ip")
        );
        let h = hm(&[("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &h, &t),
            "10.2.2.2".parse::<IpAddr>().expect("ip")
        );
        let h = hm(&[("x-forwarded-for", "garbage, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &h, &t),
            "10.2.2.2".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &t), peer);
    }

    #[test]
    fn forwarded_for_appends_peer() {
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(forwarded_for(&HeaderMap::new(), peer), "127.0.0.1");
        let h = hm(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        assert_eq!(
            forwarded_for(&h, peer),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"
        );
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
            .parse()
            .expect("ip");
        assert_eq!(
            forwarded_for(&h, v6),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        );
    }

    #[test]
    fn addresses_are_written_as_the_standard_library_writes_them() {
        let mut v4 = vec![];
        for a in [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255] {
            v4.push(std::net::Ipv4Addr::new(a, 255 - a, a / 2, 7));
        }
        let ips = v4
            .into_iter()
            .map(IpAddr::V4)
            .chain(["::1", "2001:db8::7", "::ffff:1.2.3.4"].map(|s| s.parse().expect("ip")));
        for ip in ips {
            let mut out = vec![];
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("ascii"), ip.to_string());
        }
    }
}
