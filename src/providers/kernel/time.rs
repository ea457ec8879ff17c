//! Timestamps from the wall time the gateway passes in (`BuildScope::now`,
//! `ResponseContext::created`): adapters never read the clock themselves, so the same inputs
//! build the same bytes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch at `now` (0 before it): `created` fields, SigV4's
/// `x-amz-date`.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
