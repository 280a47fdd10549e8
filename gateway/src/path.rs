//! Request path normalisation.
//!
//! Routing decides policy by path, so every spelling of a path must reach the same route and
//! the upstream must receive the exact path that was matched. Otherwise `/public/../admin` or
//! `/%61dmin` could be judged under one route's policy and served by another upstream handler.

use serde::Deserialize;
use std::borrow::Cow;

/// `server.encoded_slashes`: what a `%2F` in a path segment does (defined here, not in
/// config, so that path rules depend on nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: a segment that hides a `/` is refused.
    #[default]
    Reject,
    /// Kept encoded, inside its segment.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, or no leading `/`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`: an encoded separator that upstream frameworks may decode into a real one
    /// after routing, so it is refused rather than guessed at.
    EncodedSlash,
    /// A control character (`%00`-`%1F`, `%7F`), raw or encoded: no legitimate path has one.
    ControlChar,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with /",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::EncodedSlash => "encoded slashes (%2F, %5C) are not allowed in the path",
            PathError::ControlChar => "control characters are not allowed in the path",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may appear literally in a path segment (RFC 3986 pchar minus `%`).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether the path is already normal, so the common case allocates nothing.
fn is_normal(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    for i in 1..=raw.len() {
        if i == raw.len() || raw[i] == b'/' {
            let seg = &raw[seg_start..i];
            // An empty segment is only allowed as the trailing one ("/a/").
            if (seg.is_empty() && i != raw.len()) || seg == b"." || seg == b".." {
                return false;
            }
            seg_start = i + 1;
        } else if !is_pchar(raw[i]) {
            return false;
        }
    }
    true
}

/// Normalises an origin-form path: decodes percent-escapes of unreserved characters, writes
/// other escapes in upper case, percent-encodes bytes that may not appear literally, merges
/// duplicate slashes and resolves `.` and `..` segments (never above the root). A trailing
/// slash is kept, since frameworks such as Django route on it.
pub fn normalize_path(raw: &[u8]) -> Result<Cow<'_, str>, PathError> {
    normalize_path_with(raw, EncodedSlashes::Reject)
}

/// [`normalize_path`], with `%2F` and `%5C` either refused or, with `Keep`, left as escapes:
/// ordinary characters of their segment, never separators, forwarded as escapes.
pub fn normalize_path_with(
    raw: &[u8],
    encoded_slashes: EncodedSlashes,
) -> Result<Cow<'_, str>, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw) {
        // is_normal admits only ASCII pchars and '/', so this cannot fail.
        if let Ok(s) = std::str::from_utf8(raw) {
            return Ok(Cow::Borrowed(s));
        }
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for seg in raw[1..].split(|b| *b == b'/') {
        let decoded = decode_segment(seg, encoded_slashes)?;
        match decoded.as_str() {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(decoded);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn decode_segment(seg: &[u8], encoded_slashes: EncodedSlashes) -> Result<String, PathError> {
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                seg.get(i + 1).copied().and_then(hex_val),
                seg.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h << 4 | l;
            if v == b'/' || v == b'\\' {
                if encoded_slashes == EncodedSlashes::Reject {
                    return Err(PathError::EncodedSlash);
                }
                push_escaped(&mut out, v);
                i += 3;
                continue;
            }
            if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlChar);
            }
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                push_escaped(&mut out, v);
            }
            i += 3;
        } else {
            if b == b'\\' {
                return Err(PathError::EncodedSlash);
            }
            if b < 0x20 || b == 0x7f {
                return Err(PathError::ControlChar);
            }
            if is_pchar(b) {
                out.push(b as char);
            } else {
                push_escaped(&mut out, b);
            }
            i += 1;
        }
    }
    Ok(out)
}

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xf) as usize] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, PathError> {
        normalize_path(s.as_bytes()).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/",
            "/api/products/search/",
            "/a;b=c/d",
            "/echo/a+b",
            "/x/~y/",
        ] {
            let out = normalize_path(p.as_bytes()).expect("ok");
            assert!(matches!(out, Cow::Borrowed(_)), "{p}");
            assert_eq!(out, p);
        }
    }

    #[test]
    fn dot_segments_and_duplicate_slashes() {
        let cases = [
            ("//api//users/", "/api/users/"),
            ("/api/./users", "/api/users"),
            ("/api/public/../admin/", "/api/admin/"),
            ("/api/public/..", "/api/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/../../..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/.", "/"),
            ("/..", "/"),
            ("//", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn percent_escapes() {
        let cases = [
            ("/%61dmin/", "/admin/"),
            ("/api/%7Euser", "/api/~user"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E./admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a\"b", "/a%22b"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(n("/caf\u{e9}").as_deref(), Ok("/caf%C3%A9"));
    }

    #[test]
    fn rejected_paths() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2f..%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%00b"), Err(PathError::ControlChar));
        assert_eq!(n("/a%1fb"), Err(PathError::ControlChar));
        assert_eq!(n("/a\u{1}b"), Err(PathError::ControlChar));
        assert_eq!(n("/a%7F"), Err(PathError::ControlChar));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        assert_eq!(n("api"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn encoded_slashes_can_be_kept_as_ordinary_characters() {
        let keep = |s: &str| {
            normalize_path_with(s.as_bytes(), EncodedSlashes::Keep).map(|c| c.into_owned())
        };
        assert_eq!(keep("/files/a%2Fb").as_deref(), Ok("/files/a%2Fb"));
        assert_eq!(keep("/files/a%2fb/").as_deref(), Ok("/files/a%2Fb/"));
        assert_eq!(keep("/files/a%5cb").as_deref(), Ok("/files/a%5Cb"));
        // Still one segment: `..` after it removes the whole "a%2Fb", not half of it.
        assert_eq!(keep("/files/a%2Fb/../c").as_deref(), Ok("/files/c"));
        assert_eq!(keep("/%2e%2e%2Fetc").as_deref(), Ok("/..%2Fetc"));
        // A raw backslash stays refused; other rules are unchanged.
        assert_eq!(keep("/a\\b"), Err(PathError::EncodedSlash));
        assert_eq!(keep("/a%00b"), Err(PathError::ControlChar));
        assert_eq!(n("/files/a%2Fb"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn normalising_is_idempotent() {
        for p in ["//a/./b/../c%2e/%41", "/x/%20/../y//", "/caf%c3%a9/./"] {
            let once = n(p).expect("ok");
            assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }
}
