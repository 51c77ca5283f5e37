//! Frame timestamps (seed 000): `2025-01-07T14:30:00.000Z`, RFC 3339 UTC with
//! milliseconds. The auth service reads them for the replay window; both ends
//! write them.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now in the seed's format.
pub fn rfc3339_millis_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Formats Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`; instants
/// chrono cannot represent (beyond ±262,000 years) read as the epoch.
pub fn rfc3339_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Unix milliseconds of an RFC 3339 timestamp such as the seed's
/// `2025-01-07T14:30:00.000Z`: any number of fraction digits (truncated to
/// milliseconds), `Z` or a `±HH:MM` offset. `None` when malformed.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_seed_format() {
        assert_eq!(rfc3339_millis(1_736_260_200_000), "2025-01-07T14:30:00.000Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn timestamps_parse_back_to_the_same_instant() {
        for ms in [0, 1_736_260_200_000, 951_782_400_123, 4_102_444_799_999, -86_400_001] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_millis(ms)), Some(ms), "{ms}");
        }
        let now = Utc::now().timestamp_millis();
        let parsed = parse_rfc3339_ms(&rfc3339_millis_now()).unwrap();
        assert!((parsed - now).abs() < 60_000, "{parsed} vs {now}");
    }

    #[test]
    fn timestamps_accept_rfc3339_variants() {
        let seed = Some(1_736_260_200_000);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00Z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07t14:30:00.000z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00.000999Z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T23:30:00.000+09:00"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:00:00-00:30"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00.5Z"), Some(1_736_260_200_500));
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "",
            "2025-01-07",
            "2025-01-07T14:30:00",
            "2025-13-07T14:30:00Z",
            "2025-02-29T14:30:00Z",
            "2025-01-07T24:30:00Z",
            "2025-01-07T14:30:00.Z",
            "2025-01-07T14:30:00Zjunk",
            "2025-01-07T14:30:00+0900",
            "+025-01-07T14:30:00Z",
            "2025-01-07T14:30:00.000노",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }
}
