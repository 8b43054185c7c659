//! Text forms of the logical types: RFC 3339 timestamps, dates, times of day, UUIDs and
//! decimals, both ways. No float arithmetic anywhere: decimals go digit by digit.

use num_bigint::BigInt;

/// Time unit of a timestamp logical type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    /// Units per second.
    pub(crate) fn per_sec(self) -> i64 {
        match self {
            Unit::Millis => 1_000,
            Unit::Micros => 1_000_000,
            Unit::Nanos => 1_000_000_000,
        }
    }

    /// Fraction digits when rendered.
    pub(crate) fn digits(self) -> usize {
        match self {
            Unit::Millis => 3,
            Unit::Micros => 6,
            Unit::Nanos => 9,
        }
    }

    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Unit::Millis => "millis",
            Unit::Micros => "micros",
            Unit::Nanos => "nanos",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar (Howard Hinnant's days_from_civil / civil_from_days, proleptic Gregorian).

pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 31,
    }
}

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `YYYY-MM-DD` at the start of `b`: days since 1970-01-01.
fn date_prefix(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let y = i64::from(y);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `HH:MM:SS[.fraction]` at the start of `b`: (seconds of the day, nanoseconds, bytes used).
/// Fraction digits past nanoseconds are dropped.
fn time_prefix(b: &[u8]) -> Option<(u32, u32, usize)> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&b[0..2])?, num(&b[3..5])?, num(&b[6..8])?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut i = 8;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    Some((h * 3600 + m * 60 + s, nanos, i))
}

/// An RFC 3339 date-time, as (seconds since the epoch, nanoseconds). The separator may be `T`,
/// `t` or a space; the offset `Z`, `z`, `±HH:MM`, or (leniently) absent, read as UTC.
/// `local` (for local-timestamp-*) takes the wall clock as written and refuses a numeric offset.
pub(crate) fn parse_timestamp(s: &str, local: bool) -> Result<(i64, u32), &'static str> {
    const BAD: &str = "not an RFC 3339 date-time";
    let b = s.as_bytes();
    let days = date_prefix(b).ok_or(BAD)?;
    if b.len() < 11 || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(BAD);
    }
    let (sod, nanos, used) = time_prefix(&b[11..]).ok_or(BAD)?;
    let rest = &b[11 + used..];
    let offset: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            if local {
                return Err("a local timestamp takes no UTC offset");
            }
            let h = num(&[*h1, *h2]).ok_or(BAD)?;
            let m = num(&[*m1, *m2]).ok_or(BAD)?;
            if h > 23 || m > 59 {
                return Err(BAD);
            }
            let o = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(BAD),
    };
    Ok((days * 86_400 + i64::from(sod) - offset, nanos))
}

/// Seconds and nanoseconds to a count of `unit`, floored (finer digits are dropped).
/// In 128 bits first: near the range's low end `secs * per_sec` alone is below `i64::MIN`
/// while the sum is not (1677-09-21T00:12:43.145224201Z in nanos).
pub(crate) fn to_unit(secs: i64, nanos: u32, unit: Unit) -> Option<i64> {
    let sub = i128::from(nanos) / i128::from(1_000_000_000 / unit.per_sec());
    i64::try_from(i128::from(secs) * i128::from(unit.per_sec()) + sub).ok()
}

/// A count of `unit` since the epoch as `YYYY-MM-DDTHH:MM:SS.fff…Z` (no `Z` when `local`);
/// `None` outside years 0000..=9999.
pub(crate) fn render_timestamp(v: i64, unit: Unit, local: bool) -> Option<String> {
    let per = unit.per_sec();
    let (secs, sub) = (v.div_euclid(per), v.rem_euclid(per));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let w = unit.digits();
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{sub:0w$}{}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        if local { "" } else { "Z" }
    ))
}

/// `YYYY-MM-DD` as days since 1970-01-01.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    if s.len() != 10 {
        return None;
    }
    date_prefix(s.as_bytes())
}

pub(crate) fn render_date(days: i64) -> Option<String> {
    let (y, m, d) = civil_from_days(days);
    (0..=9999)
        .contains(&y)
        .then(|| format!("{y:04}-{m:02}-{d:02}"))
}

/// `HH:MM:SS[.fraction]` as a count of `per_sec` units after midnight (finer digits dropped).
pub(crate) fn parse_time(s: &str, per_sec: i64) -> Option<i64> {
    let (sod, nanos, used) = time_prefix(s.as_bytes())?;
    if used != s.len() {
        return None;
    }
    Some(i64::from(sod) * per_sec + i64::from(nanos) / (1_000_000_000 / per_sec))
}

/// A time of day as `HH:MM:SS.fff` (`digits` fraction digits); `None` outside one day.
pub(crate) fn render_time(v: i64, per_sec: i64, digits: usize) -> Option<String> {
    if !(0..86_400 * per_sec).contains(&v) {
        return None;
    }
    let (s, sub) = (v / per_sec, v % per_sec);
    Some(format!(
        "{:02}:{:02}:{:02}.{sub:0digits$}",
        s / 3600,
        s / 60 % 60,
        s % 60
    ))
}

// ---------------------------------------------------------------------------------------------
// UUID

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case) as 16 bytes.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let d = (c as char).to_digit(16)? as u8;
        match hi.take() {
            None => hi = Some(d),
            Some(h) => {
                out[n] = h << 4 | d;
                n += 1;
            }
        }
    }
    Some(out)
}

pub(crate) fn render_uuid(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Decimal

/// An unscaled decimal value: an `i128` when it has at most 38 digits, else a big integer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unscaled {
    Small(i128),
    Big(BigInt),
}

/// Reads a decimal text (`[+-]digits[.digits][e[+-]digits]`) as an unscaled integer for
/// `scale`, exactly: fraction digits beyond the scale are accepted only when they are zeros
/// (nothing is rounded); more than `precision` digits is an error.
pub(crate) fn parse_decimal(s: &str, precision: usize, scale: usize) -> Result<Unscaled, String> {
    let bad = || "not a decimal number".to_string();
    let b = s.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &b[start..i];
    let mut frac: &[u8] = &[];
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let fs = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &b[fs..i];
    }
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let es = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = (exp * 10 + i64::from(b[i] - b'0')).min(1_000_000_000);
            i += 1;
        }
        if es == i {
            return Err(bad());
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(bad());
    }
    let digit = |k: usize| {
        if k < int.len() {
            int[k]
        } else {
            frac[k - int.len()]
        }
    };
    let total = int.len() + frac.len();
    let lead = (0..total).take_while(|&k| digit(k) == b'0').count();
    if lead == total {
        return Ok(Unscaled::Small(0));
    }
    // unscaled = digits × 10^shift
    let shift = exp - frac.len() as i64 + scale as i64;
    let (keep, zeros) = if shift < 0 {
        let drop = usize::try_from(-shift).unwrap_or(usize::MAX);
        let dropped_nonzero =
            drop >= total - lead || (total - drop..total).any(|k| digit(k) != b'0');
        if dropped_nonzero {
            let text_scale = frac.len() as i64 - exp;
            return Err(format!("{text_scale} fraction digits, scale is {scale}"));
        }
        (total - drop, 0usize)
    } else {
        (total, usize::try_from(shift).unwrap_or(usize::MAX))
    };
    let ndigits = (keep - lead).saturating_add(zeros);
    if ndigits > precision {
        return Err(format!("{ndigits} digits, precision is {precision}"));
    }
    let digits = (lead..keep)
        .map(digit)
        .chain(std::iter::repeat_n(b'0', zeros));
    if ndigits <= 38 {
        let n = digits.fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
        Ok(Unscaled::Small(if neg { -n } else { n }))
    } else {
        let text: Vec<u8> = digits.collect();
        let n = BigInt::parse_bytes(&text, 10).ok_or_else(bad)?;
        Ok(Unscaled::Big(if neg { -n } else { n }))
    }
}

/// Calls `f` with the minimal big-endian two's complement bytes of `u` (as Java's
/// `BigInteger.toByteArray`, which is what Avro decimals hold).
pub(crate) fn with_decimal_bytes<R>(u: &Unscaled, f: impl FnOnce(&[u8]) -> R) -> R {
    match u {
        Unscaled::Small(n) => f(minimal(&n.to_be_bytes())),
        Unscaled::Big(n) => f(&n.to_signed_bytes_be()),
    }
}

/// Strips redundant sign bytes from big-endian two's complement.
pub(crate) fn minimal(b: &[u8]) -> &[u8] {
    let mut i = 0;
    while i + 1 < b.len()
        && ((b[i] == 0 && b[i + 1] & 0x80 == 0) || (b[i] == 0xFF && b[i + 1] & 0x80 != 0))
    {
        i += 1;
    }
    &b[i..]
}

/// Big-endian two's complement bytes with `scale` as decimal text, e.g. `-12.30`.
pub(crate) fn render_decimal(b: &[u8], scale: usize) -> String {
    let (neg, mut digits) = if b.len() <= 16 {
        let fill = if b.first().is_some_and(|x| x & 0x80 != 0) {
            0xFF
        } else {
            0
        };
        let mut buf = [fill; 16];
        buf[16 - b.len()..].copy_from_slice(b);
        let n = i128::from_be_bytes(buf);
        (n < 0, n.unsigned_abs().to_string())
    } else {
        let n = BigInt::from_signed_bytes_be(b);
        let s = n.to_string();
        match s.strip_prefix('-') {
            Some(d) => (true, d.to_owned()),
            None => (false, s),
        }
    };
    if scale > 0 {
        if digits.len() <= scale {
            digits.insert_str(0, &"0".repeat(scale + 1 - digits.len()));
        }
        digits.insert(digits.len() - scale, '.');
    }
    if neg {
        digits.insert(0, '-');
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(render_date(19_782).unwrap(), "2024-02-29");
    }

    #[test]
    fn timestamps() {
        let (s, n) = parse_timestamp("2025-06-01T12:34:56.789Z", false).unwrap();
        assert_eq!(to_unit(s, n, Unit::Millis), Some(1_748_781_296_789));
        let (s2, n2) = parse_timestamp("2025-06-01T14:34:56.789+02:00", false).unwrap();
        assert_eq!((s, n), (s2, n2));
        assert_eq!(
            render_timestamp(1_748_781_296_789, Unit::Millis, false).unwrap(),
            "2025-06-01T12:34:56.789Z"
        );
        // Before the epoch the fraction still counts forward from the second.
        let (s, n) = parse_timestamp("1969-12-31T23:59:59.5Z", false).unwrap();
        assert_eq!(to_unit(s, n, Unit::Millis), Some(-500));
        assert_eq!(
            render_timestamp(-500, Unit::Millis, false).unwrap(),
            "1969-12-31T23:59:59.500Z"
        );
        assert!(parse_timestamp("2025-06-01", false).is_err());
        assert!(parse_timestamp("2025-06-01T25:00:00Z", false).is_err());
        assert!(parse_timestamp("2025-06-01T12:00:00+02:00", true).is_err());
        assert_eq!(parse_time("12:34:56.5", 1000), Some(45_296_500));
        assert_eq!(render_time(45_296_500, 1000, 3).unwrap(), "12:34:56.500");
        // Every timestamp kgate renders parses back to itself, the range's ends included
        // (fuzzing found the low end: its seconds alone overflow nanos).
        for v in [i64::MIN + 9, i64::MIN, i64::MAX, -1, 0] {
            for unit in [Unit::Millis, Unit::Micros, Unit::Nanos] {
                let Some(text) = render_timestamp(v, unit, false) else {
                    continue;
                };
                let (s, n) = parse_timestamp(&text, false).unwrap();
                assert_eq!(to_unit(s, n, unit), Some(v), "{text} in {unit:?}");
            }
        }
    }

    #[test]
    fn decimals_are_exact() {
        let p = |s, p, sc| parse_decimal(s, p, sc);
        assert_eq!(p("12.30", 10, 2), Ok(Unscaled::Small(1230)));
        assert_eq!(p("-12.3", 10, 2), Ok(Unscaled::Small(-1230)));
        assert_eq!(p("1.500", 10, 2), Ok(Unscaled::Small(150)));
        assert_eq!(p("1.5e2", 10, 2), Ok(Unscaled::Small(15000)));
        assert_eq!(p("0", 1, 0), Ok(Unscaled::Small(0)));
        assert_eq!(
            p("1.234", 10, 2).unwrap_err(),
            "3 fraction digits, scale is 2"
        );
        assert_eq!(p("123456", 5, 0).unwrap_err(), "6 digits, precision is 5");
        assert!(p("1e999999999999", 10, 0).is_err());
        assert!(p("1.2.3", 10, 2).is_err() && p("", 10, 2).is_err() && p("-", 10, 2).is_err());
        let big = p("-1234567890123456789012345678901234567890.5", 60, 1).unwrap();
        assert!(matches!(big, Unscaled::Big(_)));
        assert_eq!(
            with_decimal_bytes(&big, |b| render_decimal(b, 1)),
            "-1234567890123456789012345678901234567890.5"
        );
        assert_eq!(render_decimal(&[0x04, 0xCE], 2), "12.30");
        assert_eq!(render_decimal(&[0xFB, 0x32], 2), "-12.30");
        assert_eq!(render_decimal(&[0x01], 2), "0.01");
        assert_eq!(minimal(&[0, 0, 0x7F]), &[0x7F]);
        assert_eq!(minimal(&[0xFF, 0xFF, 0x80]), &[0x80]);
        assert_eq!(minimal(&[0, 0x80]), &[0, 0x80]);
    }

    #[test]
    fn uuids() {
        let u = "123e4567-e89b-12d3-a456-426614174000";
        let b = parse_uuid(u).unwrap();
        assert_eq!(render_uuid(&b), u);
        assert_eq!(parse_uuid(&u.to_uppercase()), Some(b));
        assert!(parse_uuid("123e4567e89b12d3a456426614174000").is_none());
        assert!(parse_uuid("123e4567-e89b-12d3-a456-42661417400g").is_none());
    }
}
