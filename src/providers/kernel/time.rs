//! Timestamps from the wall time the gateway passes in (`BuildScope::now`,
//! `ResponseContext::created`): adapters never read the clock themselves, so the same inputs
//! build the same bytes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch at `now` (0 before it): `created` fields, SigV4's
/// `x-amz-date`.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The civil date (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm, proleptic Gregorian): SigV4's dates, calendar-aligned budgets.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_since_the_epoch() {
        assert_eq!(
            unix_seconds(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)),
            1_700_000_000
        );
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
