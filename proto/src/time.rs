//! Protobuf timestamps and the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// `None` for a timestamp before the epoch or with nanos out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<SystemTime> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
}

/// Nanoseconds since the epoch, for ordering and comparing flows cheaply.
pub fn timestamp_nanos(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// Year, month and day of a day since the epoch (Howard Hinnant's
/// algorithm).
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// A timestamp as protojson writes it: RFC 3339 in UTC, with 0, 3, 6 or
/// 9 digits of fraction (as few as keep it exact).
pub fn protojson(t: &Timestamp) -> String {
    let secs = t.seconds;
    let (year, month, day) = civil_date(secs.div_euclid(86400));
    let rem = secs.rem_euclid(86400);
    let frac = match t.nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_nonsense() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        assert_eq!(from_timestamp(&Timestamp { seconds: 1, nanos: -1 }), None);
        assert_eq!(timestamp_nanos(&to_timestamp(t)), 1_700_000_000_000_000_123);
    }

    #[test]
    fn protojson_trims_the_fraction_as_protojson_does() {
        let at = |seconds, nanos| protojson(&Timestamp { seconds, nanos });
        assert_eq!(at(1_796_598_000, 0), "2026-12-06T23:00:00Z");
        assert_eq!(at(1_796_598_000, 120_000_000), "2026-12-06T23:00:00.120Z");
        assert_eq!(at(1_796_598_000, 120_500_000), "2026-12-06T23:00:00.120500Z");
        assert_eq!(at(1_796_598_000, 123_456_789), "2026-12-06T23:00:00.123456789Z");
    }
}
