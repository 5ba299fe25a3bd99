//! How durations and moments read, the same in errors, the CLI and files: the largest whole unit
//! (`365d`, `8h`, `90m`, `45s`), as `pim policy set --activation-max 8h` takes them; and how a
//! length people write is read, the same in the CLI, files and the portal.

use std::time::Duration;

/// A duration in its largest whole unit: `365d`, `8h`, `90m`, `45s` (`0s` for none).
pub fn duration(d: Duration) -> String {
    match d.as_secs() {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The units a length is written in, and what each is worth in seconds.
const UNITS: [(char, u64); 4] = [('s', 1), ('m', 60), ('h', 3_600), ('d', 86_400)];

/// A length as people write it: numbers each with its unit, `s`, `m`, `h` or `d` (`30m`, `8h`,
/// `14d`, `1h 30m`, `1d12h`), and nothing else. Lengths of privileged access are typed in a
/// hurry, so nothing is guessed: `1M` (a month, to some readers; a minute, to others), `1y`,
/// `1.5h`, `90` or `90sec` are mistakes to point out, never a length to grant. Else the
/// mistake, for the caller to say with what to write instead.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a length is missing".into());
    }
    let mut seconds: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a length: each part is a whole number and its unit"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too long a length"))?;
        rest = rest[digits..].trim_start();
        let Some(unit) = rest.chars().next() else {
            return Err(format!("{text:?} has a number without its unit (s, m, h or d)"));
        };
        let Some((_, worth)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "{text:?}: {unit:?} is not a unit; write s, m, h or d (a month as 30d, a year as 365d)"
            ));
        };
        rest = rest[unit.len_utf8()..].trim_start();
        if rest.starts_with(|c: char| c.is_alphabetic()) {
            return Err(format!("{text:?}: units are one letter, s, m, h or d"));
        }
        seconds = number
            .checked_mul(*worth)
            .and_then(|s| s.checked_add(seconds))
            .ok_or_else(|| format!("{text:?} is too long a length"))?;
    }
    Ok(Duration::from_secs(seconds))
}

/// A moment someone typed, in milliseconds since the epoch: RFC 3339 with its offset
/// (`2026-12-01T09:00:00Z`, `2026-12-01T10:00:00+01:00`). A time without an offset is refused,
/// not read as UTC: someone elsewhere would get a start hours from the one they meant.
pub fn parse_moment(text: &str) -> Result<i64, String> {
    let text = text.trim();
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(at) => Ok(at.timestamp_millis()),
        Err(_) if chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").is_ok() => Err(format!(
            "{text:?} has no time zone: add Z for UTC (2026-12-01T09:00:00Z) or your offset (2026-12-01T10:00:00+01:00)"
        )),
        Err(e) => Err(format!(
            "{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z or 2026-12-01T10:00:00+01:00 ({e})"
        )),
    }
}

/// A moment (milliseconds since the epoch) as RFC 3339 in UTC to the millisecond:
/// `2026-12-04T19:42:00.364Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    moment(ms, humantime::format_rfc3339_millis)
}

/// A moment as RFC 3339 in UTC to the second: `2026-12-04T19:42:00Z`.
pub fn rfc3339_seconds(ms: i64) -> String {
    moment(ms, humantime::format_rfc3339_seconds)
}

/// A moment before 1970 reads as 1970; one past 9999-12-31 (which humantime cannot write, and
/// panics on) as protobuf's `Timestamp` writes it (`+10000-01-01T00:46:40Z`): whatever a
/// stored time holds, reading it never fails.
fn moment(ms: i64, format: fn(std::time::SystemTime) -> humantime::Rfc3339Timestamp) -> String {
    if ms > crate::db::LATEST_MS {
        return crate::db::rfc3339(ms);
    }
    format(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::{duration, parse_duration, rfc3339_ms};

    #[test]
    fn moments_are_typed_with_their_offset() {
        use super::parse_moment;
        let utc = parse_moment("2026-12-07T05:09:39Z").unwrap();
        assert_eq!(rfc3339_ms(utc), "2026-12-07T05:09:39.000Z");
        assert_eq!(parse_moment("2026-12-07T06:09:39+01:00"), Ok(utc));
        assert_eq!(parse_moment("2026-12-07T00:09:39-05:00"), Ok(utc));
        assert_eq!(parse_moment(" 2026-12-07t05:09:39.000z "), Ok(utc));
        let zoneless = parse_moment("2026-12-07T05:09:39").unwrap_err();
        assert!(zoneless.contains("no time zone"), "{zoneless}");
        let nonsense = parse_moment("tomorrow").unwrap_err();
        assert!(nonsense.contains("not an RFC 3339 time"), "{nonsense}");
    }

    #[test]
    fn moments_read_as_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(1_796_413_320_364), "2026-12-04T19:42:00.364Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        // Past what humantime writes (a time stored before such ends were refused).
        assert_eq!(rfc3339_ms(253_402_303_600_000), "+10000-01-01T00:46:40Z");
        assert_eq!(rfc3339_ms(i64::MAX), crate::db::rfc3339(i64::MAX));
    }

    use std::time::Duration;

    #[test]
    fn durations_read_in_their_largest_whole_unit_and_parse_back() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (5400, "90m"),
            (8 * 3600, "8h"),
            (36 * 3600, "36h"),
            (365 * 86_400, "365d"),
        ] {
            assert_eq!(duration(Duration::from_secs(secs)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
        }
    }

    #[test]
    fn lengths_are_read_in_four_units_and_nothing_is_guessed() {
        for (text, secs) in [
            ("1h 30m", 5_400),
            ("1d12h", 129_600),
            (" 2 h ", 7_200),
            ("0s", 0),
            ("14d", 14 * 86_400),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        // A minute meant, a month read: refused, as is anything but s, m, h and d.
        for text in [
            "1M",
            "1y",
            "2w",
            "1.5h",
            "90",
            "90sec",
            "1 hour",
            "30S",
            "1H",
            "-1h",
            "",
            "h",
            "1h x",
            "99999999999999999999d",
            "9999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
