//! The three timestamp formats of Nova's wire protocol, which must not be mixed:
//! object `DateTimeField`s (`2024-04-10T12:38:11Z`, no fraction), the request
//! context (`2024-04-10T12:38:11.123456`, see `rpc::context`), and datetimes
//! inside plain dicts and `serialize_args` remotables (fraction, no zone).

use chrono::{DateTime, Utc};

/// A `DateTimeField` value: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn field(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `field(now)`.
pub fn now_field() -> String {
    field(Utc::now())
}

/// A datetime inside a plain dict or a `serialize_args` argument.
pub fn primitive(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Parses any of Nova's formats (ISO 8601 with or without zone and fraction).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = parse("2024-04-10T12:38:11.123456").unwrap();
        assert_eq!(field(t), "2024-04-10T12:38:11Z");
        assert_eq!(primitive(t), "2024-04-10T12:38:11.123456");
        assert_eq!(parse("2024-04-10T12:38:11Z"), parse("2024-04-10T12:38:11+00:00"));
        assert!(parse("yesterday").is_none());
    }
}
