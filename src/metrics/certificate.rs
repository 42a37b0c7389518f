//! The end of validity (notAfter) of a serving certificate, for `mqttlb_tls_certificate_expiry_timestamp_seconds`.
//!
//! Only one field of an X.509 certificate is needed, so it is read here with a small DER walk rather than a full
//! X.509 parser and its dozen crates: Certificate -> tbsCertificate -> (skip version, serialNumber, signature,
//! issuer) -> validity -> notAfter, a UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
//! (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows. Any other shape is refused (None), never guessed. The
//! certificate was already accepted by rustls when the listener's TLS configuration was built.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The notAfter of the first (leaf) certificate of a PEM file, as a Unix time.
pub fn leaf_not_after(path: &Path) -> Result<i64, String> {
    let leaf = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: not a valid PEM certificate: {e}", path.display()))?;
    not_after(&leaf).ok_or_else(|| format!("{}: no readable notAfter in the first certificate", path.display()))
}

/// The notAfter of a DER certificate, as a Unix time.
pub fn not_after(der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, absent in v1 certificates.
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.2;
    }
    let (_serial, rest) = expect(rest, 0x02)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (_, _not_before, rest) = tlv(validity)?;
    let (tag, not_after, _) = tlv(rest)?;
    match tag {
        0x17 => parse_time(not_after, 2),
        0x18 => parse_time(not_after, 4),
        _ => None,
    }
}

/// One DER element: (tag, content, what follows). Definite lengths of up to four bytes only.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, after) = rest.split_at_checked(len)?;
    Some((tag, content, after))
}

/// The content of an element with tag `want`, and what follows it.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = tlv(input)?;
    (tag == want).then_some((content, rest))
}

/// `YYMMDDHHMMSSZ` (`year_digits` 2) or `YYYYMMDDHHMMSSZ` (4) in UTC, as a Unix time.
fn parse_time(text: &[u8], year_digits: usize) -> Option<i64> {
    let (digits, zone) = text.split_at_checked(year_digits + 10)?;
    if zone != b"Z" || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |from: usize, len: usize| -> Option<i64> {
        digits.get(from..from + len)?.iter().try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let year = match year_digits {
        // RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, else 20YY.
        2 => number(0, 2).map(|y| if y >= 50 { 1900 + y } else { 2000 + y })?,
        _ => number(0, 4)?,
    };
    let at = year_digits;
    let (month, day) = (number(at, 2)?, number(at + 2, 2)?);
    let (hour, minute, second) = (number(at + 4, 2)?, number(at + 6, 2)?, number(at + 8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until the date plus `seconds`, and that time as a Unix time (from rcgen).
    fn cert_valid_until(year: i32, month: u8, day: u8, seconds: u64) -> (rcgen::Certificate, i64) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day) + std::time::Duration::from_secs(seconds);
        let unix = params.not_after.unix_timestamp();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (params.self_signed(&key).unwrap(), unix)
    }

    #[test]
    fn reads_not_after_of_real_certificates() {
        // UTCTime (before 2050) and GeneralizedTime (2050 on), at midnight and at a time of day.
        let (cert, unix) = cert_valid_until(2031, 5, 17, 0);
        assert_eq!(unix, 1_936_742_400);
        assert_eq!(not_after(cert.der()), Some(1_936_742_400));
        for (y, m, d, s) in [(2051, 2, 28, 13 * 3600 + 7 * 60 + 9), (2028, 2, 29, 59), (2049, 12, 31, 86_399)] {
            let (cert, unix) = cert_valid_until(y, m, d, s);
            assert_eq!(not_after(cert.der()), Some(unix), "{y}-{m}-{d} + {s}s");
        }
    }

    #[test]
    fn reads_the_leaf_of_a_pem_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.pem");
        let (leaf, unix) = cert_valid_until(2030, 1, 2, 0);
        let (other, _) = cert_valid_until(2040, 1, 2, 0);
        std::fs::write(&path, format!("{}{}", leaf.pem(), other.pem())).unwrap();
        assert_eq!(leaf_not_after(&path), Ok(unix));
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(leaf_not_after(&path).unwrap_err().contains("no certificate"));
        assert!(leaf_not_after(&dir.path().join("missing.pem")).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let der = cert_valid_until(2031, 5, 17, 0).0.der().to_vec();
        // Every truncation fails cleanly (the outer length no longer fits).
        for n in 0..der.len() {
            assert_eq!(not_after(der.get(..n).unwrap()), None, "truncated to {n} bytes");
        }
        assert_eq!(not_after(&[0x30, 0x80, 0x00, 0x00]), None, "indefinite length");
        assert_eq!(not_after(&[0x30, 0x85, 1, 1, 1, 1, 1]), None, "length of five bytes");
        assert_eq!(not_after(b"\x02\x01\x00"), None, "not a SEQUENCE");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b"700101000000Z", 2), Some(0));
        assert_eq!(parse_time(b"491231235959Z", 2), Some(2_524_607_999));
        assert_eq!(parse_time(b"500101000000Z", 2), Some(-631_152_000));
        assert_eq!(parse_time(b"20380119031408Z", 4), Some(2_147_483_648));
        assert_eq!(parse_time(b"700101000000", 2), None, "no zone");
        assert_eq!(parse_time(b"700101000000+0100", 2), None, "offset");
        assert_eq!(parse_time(b"701301000000Z", 2), None, "month 13");
        assert_eq!(parse_time(b"70010100000aZ", 2), None, "not a digit");
        assert_eq!(parse_time(b"7001010000Z", 2), None, "no seconds");
    }
}
