//! Value types of the policy language that parse themselves while the YAML is read.
//!
//! Parse, don't validate: a `Size`, `Dur`, `Cidr`, `MethodName` or `HeaderNameSpec` that exists is
//! valid, and its parse error carries the YAML position (serde reports it with line and column).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Schema, SchemaObject};
use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

fn string_schema(description: &str, pattern: Option<&str>) -> Schema {
    let mut obj = SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        ..Default::default()
    };
    obj.metadata().description = Some(description.to_owned());
    if let Some(p) = pattern {
        obj.string().pattern = Some(p.to_owned());
    }
    Schema::Object(obj)
}

/// Implements `Deserialize` (from a string, through `FromStr`) and `JsonSchema` for a value type.
macro_rules! string_value {
    ($ty:ident, $expecting:literal, $pattern:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(|e: String| E::custom(e))
                    }
                    fn visit_u64<E: de::Error>(self, n: u64) -> Result<$ty, E> {
                        self.visit_str(&n.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> String {
                stringify!($ty).to_owned()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                string_schema($expecting, $pattern)
            }
        }
    };
}

/// A byte size such as `1MiB`, `512KiB`, `10MB` or `4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("expected a size like 1MiB, got `{s}`"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}
string_value!(
    Size,
    "a size like 1MiB, 64KiB or 4096",
    Some(r"^\s*[0-9]+\s*(B|KB|kB|KiB|MB|MiB|GB|GiB)?\s*$")
);

/// A duration such as `15m`, `2s` or `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("expected a duration like 15m or 500ms, got `{s}`: {e}"))
    }
}
string_value!(Dur, "a duration like 15m, 2s or 500ms", None);

/// An IP network (`10.0.0.0/8`) or a single address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        t.parse::<std::net::IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("expected a CIDR like 10.0.0.0/8 or an IP address, got `{s}`"))
    }
}
string_value!(Cidr, "a CIDR like 10.0.0.0/8 or an IP address", None);

/// An HTTP method in upper case (`GET`, `POST`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodName(pub http::Method);

impl FromStr for MethodName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        ];
        if !KNOWN.contains(&s) {
            return Err(format!(
                "unknown HTTP method `{s}` (expected one of {})",
                KNOWN.join(", ")
            ));
        }
        http::Method::from_bytes(s.as_bytes())
            .map(MethodName)
            .map_err(|e| e.to_string())
    }
}
string_value!(
    MethodName,
    "an HTTP method in upper case, like GET or POST",
    Some("^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE|CONNECT)$")
);

/// A valid HTTP header name (stored lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNameSpec(pub http::HeaderName);

impl FromStr for HeaderNameSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        http::HeaderName::from_bytes(s.as_bytes())
            .map(HeaderNameSpec)
            .map_err(|_| format!("`{s}` is not a valid header name"))
    }
}
string_value!(
    HeaderNameSpec,
    "an HTTP header name, like X-Request-Id",
    Some("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
);

impl<'de> Deserialize<'de> for SerdeMapKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<HeaderNameSpec>()
            .map(|h| SerdeMapKey(h.0))
            .map_err(de::Error::custom)
    }
}

/// A header name used as a map key (`set: {X-Frame-Options: DENY}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerdeMapKey(pub http::HeaderName);

impl PartialOrd for SerdeMapKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SerdeMapKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl JsonSchema for SerdeMapKey {
    fn schema_name() -> String {
        "HeaderName".to_owned()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema("an HTTP header name", None)
    }
}

/// A header value: visible ASCII, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueSpec(pub http::HeaderValue);

impl FromStr for HeaderValueSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err("header value contains control characters".to_owned());
        }
        http::HeaderValue::from_str(s)
            .map(HeaderValueSpec)
            .map_err(|_| format!("`{s}` is not a valid header value"))
    }
}
string_value!(HeaderValueSpec, "an HTTP header value", None);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!("1MiB".parse::<Size>().unwrap(), Size(1024 * 1024));
        assert_eq!("64 KiB".parse::<Size>().unwrap(), Size(64 * 1024));
        assert_eq!("10MB".parse::<Size>().unwrap(), Size(10_000_000));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert!("1 potato"
            .parse::<Size>()
            .unwrap_err()
            .contains("unknown size unit"));
        assert!("MiB".parse::<Size>().is_err());
    }

    #[test]
    fn durations_and_cidrs_parse() {
        assert_eq!("15m".parse::<Dur>().unwrap(), Dur(Duration::from_secs(900)));
        assert_eq!(
            "500ms".parse::<Dur>().unwrap(),
            Dur(Duration::from_millis(500))
        );
        assert!("soon".parse::<Dur>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().0.to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn methods_must_be_known_and_upper_case() {
        assert!("GET".parse::<MethodName>().is_ok());
        assert!("get".parse::<MethodName>().is_err());
        assert!("BREW".parse::<MethodName>().is_err());
    }
}
