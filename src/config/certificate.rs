//! Just enough X.509 to read a PEM certificate's validity period, so that an
//! expired client certificate is refused at start-up with its dates instead
//! of the broker closing every connection without saying why.

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};

/// When the first certificate of a PEM file is valid: (not before, not after).
pub fn validity(pem: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let text = std::str::from_utf8(pem).ok()?;
    let body = text.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let (_, cert, _) = element(&der)?; // Certificate ::= SEQUENCE
    let (_, mut tbs, _) = element(cert)?; // tbsCertificate ::= SEQUENCE
    let (tag, _, rest) = element(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // [0] version
    }
    let (_, _, rest) = element(tbs)?; // serialNumber
    let (_, _, rest) = element(rest)?; // signature AlgorithmIdentifier
    let (_, _, rest) = element(rest)?; // issuer
    let (tag, validity, _) = element(rest)?; // validity ::= SEQUENCE { notBefore, notAfter }
    if tag != 0x30 {
        return None;
    }
    let (t1, not_before, rest) = element(validity)?;
    let (t2, not_after, _) = element(rest)?;
    Some((time(t1, not_before)?, time(t2, not_after)?))
}

/// One DER element: (tag, contents, what follows).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, der.get(header..end)?, der.get(end..)?))
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ).
fn time(tag: u8, value: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let full = match tag {
        0x17 => {
            let yy: u32 = s.get(..2)?.parse().ok()?;
            format!("{}{s}", if yy < 50 { "20" } else { "19" })
        }
        0x18 => s.to_string(),
        _ => return None,
    };
    NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S").ok().map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dates_of_a_certificate() {
        let (nb, na) = validity(include_bytes!("testdata-expired-client.pem")).expect("parsed");
        assert_eq!(nb.to_rfc3339(), "2020-01-01T00:00:00+00:00");
        assert_eq!(na.to_rfc3339(), "2020-01-02T00:00:00+00:00");
        assert_eq!(validity(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), None);
        assert_eq!(validity(b"junk"), None);
    }
}
