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
}
