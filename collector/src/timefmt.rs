//! UTC timestamps from Unix nanoseconds, without a calendar dependency.

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC) with `digits` fractional digits (0..=9).
pub fn rfc3339(unix_nanos: i64, digits: u32) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60);
    let digits = digits.min(9);
    if digits > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(&frac[..digits as usize]);
    }
    s.push('Z');
    s
}

/// Milliseconds since the epoch (CEF `rt`).
pub fn unix_millis(unix_nanos: i64) -> i64 {
    unix_nanos.div_euclid(1_000_000)
}

// Howard Hinnant's days-from-civil inverse: proleptic Gregorian, any i64 day count in range.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0, 3), "1970-01-01T00:00:00.000Z");
        // 2026-11-23T18:00:00.123456789Z
        let t = 1_795_456_800_123_456_789_i64;
        assert_eq!(rfc3339(t, 6), "2026-11-23T18:00:00.123456Z");
        assert_eq!(rfc3339(t, 0), "2026-11-23T18:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_000_000, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, 9), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(unix_millis(t), 1_795_456_800_123);
    }
}
