//! Value types of the YAML schema that are written as strings: durations, byte sizes, rates.
//!
//! Each parses once, at load time, into a plain number; a bad value is a deserialisation error
//! so it carries the YAML path and position of the offending value.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as `250ms`, `5s`, `10m`, `1h` or `1d` (also combined: `1m30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

/// Strict duration parser: one or more `<integer><unit>` groups, units `ms`, `s`, `m`, `h`, `d`.
/// Written by hand rather than with humantime because the contract's syntax is narrower and a
/// typo such as `5 sec` or `5` should be an error, not silently accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 250ms, 5s, 10m, 1h");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A size in bytes: `512B`, `64KiB`, `10MiB`, `1GiB`, `10KB`/`MB`/`GB` (powers of ten), or a
/// bare integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid size {s:?}: expected e.g. 512B, 64KiB, 10MiB, 1GB");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if split == 0 {
            return Err(bad());
        }
        let n: u64 = t[..split].parse().map_err(|_| bad())?;
        let mult: u64 = match t[split..].trim_start() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 10MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A rate: `N/s`, `N/m`, `N/h` or `N/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Time between two tokens of the bucket (the GCRA emission interval).
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid rate {s:?}: expected N/s, N/m, N/h or N/day");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `x` or `[x, y]` in YAML, as a list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            One(T),
            Many(Vec<T>),
        }
        match Either::deserialize(d) {
            Ok(Either::One(v)) => Ok(OneOrMany(vec![v])),
            Ok(Either::Many(v)) => Ok(OneOrMany(v)),
            Err(_) => Err(de::Error::custom("expected a name or a list of names")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "5 sec",
            "5S",
            "-1s",
            "1.5s",
            "5s ms",
            "99999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("10MiB"), Ok(10 << 20));
        assert_eq!(p("64KiB"), Ok(64 << 10));
        assert_eq!(p("1GB"), Ok(1_000_000_000));
        assert_eq!(p("512B"), Ok(512));
        assert_eq!(p("512"), Ok(512));
        for bad in [
            "",
            "MiB",
            "10mib",
            "10 XB",
            "-5B",
            "1.5MiB",
            "99999999999999GiB",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rates() {
        let r: Rate = "10/s".parse().expect("rate");
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        assert_eq!(r.interval(), Duration::from_millis(100));
        let r: Rate = "100/day".parse().expect("rate");
        assert_eq!(r.per, Duration::from_secs(86_400));
        for bad in [
            "", "10", "10/", "/s", "0/s", "10/sec", "x/s", "-1/s", "10/d",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} should be rejected");
        }
    }
}
