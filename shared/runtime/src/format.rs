//! How durations and moments read, the same in errors, the CLI and files: the largest whole unit
//! (`365d`, `8h`, `90m`, `45s`), as `pim policy set --activation-max 8h` takes them.

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
    use super::{duration, rfc3339_ms};

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
            assert_eq!(
                humantime::parse_duration(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
    }
}
