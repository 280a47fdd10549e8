//! Header rules for what reaches the upstream: request id, forwarding headers, identity.

use crate::config::model::TrustedProxies;
use http::HeaderMap;
use std::net::IpAddr;

/// A client's `X-Request-Id` is kept when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub fn request_id(headers: &HeaderMap) -> String {
    match headers.get("x-request-id") {
        Some(v) if valid_request_id(v.as_bytes()) => {
            // valid_request_id admits ASCII only.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The client's IP: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
/// are whatever the client chose to send and are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(&peer) {
        return peer;
    }
    let mut candidate = peer;
    // Later X-Forwarded-For lines were appended later, so walk them right to left too.
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        let Ok(s) = std::str::from_utf8(value) else {
            return candidate;
        };
        for entry in s.rsplit(',') {
            match parse_forwarded_ip(entry.trim()) {
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
pub fn forwarded_for(headers: &HeaderMap, peer: IpAddr) -> String {
    let mut out = String::new();
    for v in headers.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                out.push_str(s);
                out.push_str(", ");
            }
        }
    }
    out.push_str(&peer.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
        assert_eq!(request_id(&hm(&[("x-request-id", "keep-me")])), "keep-me");
        let generated = request_id(&hm(&[("x-request-id", "bad id!")]));
        assert_eq!(generated.len(), 36);
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
    }
}
