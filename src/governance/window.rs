//! The windows counters count in: a budget's period (calendar-aligned in UTC, or starting
//! with the first spend) and a rate limit's window (the last `per`, sliding).

use crate::config::{Budget, Period};
use crate::providers::kernel::time::civil_from_days;
use crate::state::counters::Window;
use std::time::Duration;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The window of `budget` at `now` (Unix ms).
pub fn budget_window(budget: &Budget, now: u64) -> Window {
    if !budget.calendar {
        return Window::FromFirstUse {
            length: budget.period.millis(),
        };
    }
    let (start, end) = match budget.period {
        Period::Month => {
            let (year, month, _) = civil_from_days(now / DAY_MS);
            let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            (
                days_from_civil(year, month, 1) * DAY_MS,
                days_from_civil(next_year, next_month, 1) * DAY_MS,
            )
        }
        Period::Millis(ms) if ms == 7 * DAY_MS => {
            // Weeks start on Monday; 1970-01-01 was a Thursday (day 0 = Thursday).
            let day = now / DAY_MS;
            let monday = day - (day + 3) % 7;
            (monday * DAY_MS, (monday + 7) * DAY_MS)
        }
        // An hour or a day: multiples of it since the epoch are UTC-aligned.
        Period::Millis(ms) => {
            let ms = ms.max(1);
            let start = now - now % ms;
            (start, start + ms)
        }
    };
    Window::Fixed { start, end }
}

/// The window of a rate limit of `limit` counted `per` this long: the last `per`, sliding
/// (exact in every window of that length), up to [`SLIDING_MAX`].
pub fn rate_window(per: Duration, limit: u64) -> Window {
    let length = u64::try_from(per.as_millis()).unwrap_or(u64::MAX).max(1);
    if limit <= SLIDING_MAX {
        Window::Sliding { length }
    } else {
        Window::FromFirstUse { length }
    }
}

/// The largest limit counted in a sliding window: a sliding window keeps one entry per take
/// in it and a take sums them, so larger limits count in a window that starts with the first
/// take after the previous one ended (constant cost; up to twice the limit around a
/// boundary).
pub const SLIDING_MAX: u64 = 1_000;

/// `per` as configuration writes it (`1m`, `30s`, `1h`).
pub fn period_text(per: Duration) -> String {
    let s = per.as_secs();
    match s {
        s if s > 0 && s % 604_800 == 0 => format!("{}w", s / 604_800),
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The day count since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of an RFC 3339 time.
    fn at(text: &str) -> u64 {
        let t = humantime::parse_rfc3339(text).unwrap();
        u64::try_from(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
    }

    fn calendar(period: Period) -> Budget {
        Budget {
            max: 1,
            period,
            calendar: true,
            period_text: "x",
        }
    }

    #[test]
    fn calendar_windows_are_utc_aligned() {
        let now = at("2026-12-06T22:41:07Z");
        let cases = [
            (Period::Millis(HOUR_MS), "2026-12-06T22:00:00Z", "2026-12-06T23:00:00Z"),
            (Period::Millis(DAY_MS), "2026-12-06T00:00:00Z", "2026-12-07T00:00:00Z"),
            // 2026-12-06 is a Sunday: its week began on Monday the 30th of November.
            (
                Period::Millis(7 * DAY_MS),
                "2026-11-30T00:00:00Z",
                "2026-12-07T00:00:00Z",
            ),
            (Period::Month, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ];
        for (period, start, end) in cases {
            assert_eq!(
                budget_window(&calendar(period), now),
                Window::Fixed {
                    start: at(start),
                    end: at(end)
                },
                "{period:?}"
            );
        }
        // February of a leap year, and a Monday's week.
        assert_eq!(
            budget_window(&calendar(Period::Month), at("2028-02-29T23:59:59Z")),
            Window::Fixed {
                start: at("2028-02-01T00:00:00Z"),
                end: at("2028-03-01T00:00:00Z")
            }
        );
        assert_eq!(
            budget_window(&calendar(Period::Millis(7 * DAY_MS)), at("2026-11-30T00:00:00Z")),
            Window::Fixed {
                start: at("2026-11-30T00:00:00Z"),
                end: at("2026-12-07T00:00:00Z")
            }
        );
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [0, 59, 60, 365, 10_957, 20_000, 20_793, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn uncalendared_budgets_start_with_first_use_and_rates_slide() {
        let budget = Budget {
            calendar: false,
            ..calendar(Period::Month)
        };
        assert_eq!(budget_window(&budget, 5), Window::FromFirstUse { length: 30 * DAY_MS });
        assert_eq!(
            rate_window(Duration::from_secs(60), 10),
            Window::Sliding { length: 60_000 }
        );
        assert_eq!(
            rate_window(Duration::from_secs(60), SLIDING_MAX),
            Window::Sliding { length: 60_000 }
        );
        assert_eq!(
            rate_window(Duration::from_secs(60), SLIDING_MAX + 1),
            Window::FromFirstUse { length: 60_000 }
        );
        assert_eq!(period_text(Duration::from_secs(60)), "1m");
        assert_eq!(period_text(Duration::from_secs(90)), "90s");
        assert_eq!(period_text(Duration::from_secs(86_400)), "1d");
    }
}
