//! The text lines' timestamp: the same RFC 3339 text as tracing-subscriber's `SystemTime` timer
//! (`2026-12-04T22:17:16.588789Z`: UTC, microseconds, truncated), with the date and time of day worked out once per
//! second per thread instead of once per line. Every relayed connection writes a line, so at thousands of
//! connections per second the calendar arithmetic and the seven padded integers of the library's timer were a
//! measurable share of the proxy's CPU; within a second only the six digits of microseconds change.
//!
//! Instants the cache does not cover (before 1970, after year 9999, where the library writes a sign or five
//! digits) are handed to the library's timer, so the text stays the library's for every instant.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Length of `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
const TEXT_LEN: usize = 27;

/// Where the six digits of microseconds start in the text.
const MICROS_AT: usize = 20;

/// Seconds since 1970 of 10000-01-01T00:00:00Z: from there on the year has five digits.
const YEAR_10000: u64 = 253_402_300_800;

/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar (years counted from March, so that a
/// leap day is the last day of its year).
const MARCH_0000_TO_EPOCH: u64 = 719_468;

/// Days in 400 Gregorian years.
const DAYS_PER_ERA: u64 = 146_097;

/// The timer of the text lines: tracing-subscriber's `SystemTime` text, its date-time part cached per thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedSystemTime;

thread_local! {
    /// The text of the last second this thread wrote a line in.
    static LAST_SECOND: Cell<SecondText> = const { Cell::new(SecondText::EMPTY) };
}

impl FormatTime for CachedSystemTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since_epoch = std::time::SystemTime::now().duration_since(UNIX_EPOCH).ok();
        let text = since_epoch.and_then(|since| {
            let cached = LAST_SECOND.try_with(|last| {
                let mut cache = last.get();
                let text = cache.text_at(since);
                last.set(cache);
                text
            });
            cached.ok().flatten()
        });
        match text {
            Some(bytes) => w.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?),
            // A clock before 1970 or after 9999 (or a thread past its thread-locals): rare enough to pay for the
            // library's arithmetic.
            None => SystemTime.format_time(w),
        }
    }
}

/// One second's text, `YYYY-MM-DDTHH:MM:SS.000000Z`, and which second it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondText {
    /// Seconds since 1970; `u64::MAX` before the first line.
    second: u64,
    text: [u8; TEXT_LEN],
}

impl SecondText {
    /// Holds no second yet: the first instant fills it.
    pub const EMPTY: SecondText = SecondText { second: u64::MAX, text: [b'0'; TEXT_LEN] };

    /// The text of the instant `since_epoch` after 1970-01-01T00:00:00Z, recomputing the date and time of day only
    /// when its second differs from the last one asked; None from year 10000 on.
    pub fn text_at(&mut self, since_epoch: Duration) -> Option<[u8; TEXT_LEN]> {
        let second = since_epoch.as_secs();
        if second >= YEAR_10000 {
            return None;
        }
        if second != self.second {
            *self = SecondText { second, text: second_text(second) };
        }
        let mut text = self.text;
        if let Some(digits) = text.get_mut(MICROS_AT..MICROS_AT + 6) {
            write_digits(digits, u64::from(since_epoch.subsec_micros()));
        }
        Some(text)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.000000Z` for `second` seconds after 1970 (before year 10000).
fn second_text(second: u64) -> [u8; TEXT_LEN] {
    let (year, month, day) = civil_date(second / 86_400);
    let of_day = second % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    // (start, width, value) of each number in the text.
    let numbers = [
        (0, 4, year),
        (5, 2, month),
        (8, 2, day),
        (11, 2, of_day / 3600),
        (14, 2, of_day / 60 % 60),
        (17, 2, of_day % 60),
    ];
    for (start, width, value) in numbers {
        if let Some(digits) = text.get_mut(start..start + width) {
            write_digits(digits, value);
        }
    }
    text
}

/// Writes `value` in decimal into `digits`, zero-padded on the left to their length (higher digits dropped).
fn write_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01, in the proleptic Gregorian calendar. Counts
/// from 0000-03-01 in 400-year eras (each the same 146,097 days), so that February's length only matters at the
/// end of a counted year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let from_march_0000 = days + MARCH_0000_TO_EPOCH;
    let era = from_march_0000 / DAYS_PER_ERA;
    let day_of_era = from_march_0000 % DAYS_PER_ERA;
    // Years into the era: 365 days a year, less the leap days of every 4th year, plus every 100th's, less the
    // 400th's (the era's last day).
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (DAYS_PER_ERA - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 153 days in every 5 months (31, 30, 31, 30, 31).
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text a reference calendar (the `time` crate) gives for `since_epoch`, in the library's layout.
    fn reference(since_epoch: Duration) -> String {
        let secs = i64::try_from(since_epoch.as_secs()).unwrap();
        let at = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            since_epoch.subsec_micros()
        )
    }

    fn text(cache: &mut SecondText, since_epoch: Duration) -> String {
        String::from_utf8(cache.text_at(since_epoch).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn dates_match_a_reference_calendar_across_boundaries() {
        let day = 86_400;
        // 1970-01-01, 2000-02-29 (a 400th year), 2024-02-28..03-01, 2100-02-28 (no leap day), 2026-12-31 into
        // 2027, the last second before year 10000.
        let seconds = [
            0,
            951_782_400,
            1_709_078_400,
            1_709_078_400 + day,
            4_107_456_000,
            4_107_456_000 + day,
            1_798_761_599,
            YEAR_10000 - 1,
        ];
        let mut cache = SecondText::EMPTY;
        for second in seconds {
            for nanos in [0, 999, 1_000, 588_789_123, 999_999_999] {
                let at = Duration::new(second, nanos);
                assert_eq!(text(&mut cache, at), reference(at), "{second}.{nanos:09}");
            }
            // The next second, day, month or year comes right after the cached one.
            if second + 1 == YEAR_10000 {
                continue;
            }
            let next = Duration::new(second + 1, 0);
            assert_eq!(text(&mut cache, next), reference(next), "after {second}");
        }
        // Every day of four centuries' worth of sampled days, a fresh cache each time.
        for days in (0..146_097 * 2).step_by(7) {
            let at = Duration::new(days * day + 43_210, 5_000);
            assert_eq!(text(&mut { SecondText::EMPTY }, at), reference(at));
        }
        assert_eq!({ SecondText::EMPTY }.text_at(Duration::from_secs(YEAR_10000)), None);
    }

    #[test]
    fn matches_the_library_timer_now() {
        // The library's text for now, then ours, then the library's: ours must share their second (retried in
        // the rare case the second ticked in between) and have the same layout.
        for _ in 0..5 {
            let mut before = String::new();
            SystemTime.format_time(&mut Writer::new(&mut before)).unwrap();
            let mut ours = String::new();
            CachedSystemTime.format_time(&mut Writer::new(&mut ours)).unwrap();
            let mut after = String::new();
            SystemTime.format_time(&mut Writer::new(&mut after)).unwrap();
            if before[..MICROS_AT] != after[..MICROS_AT] {
                continue;
            }
            assert_eq!(ours.len(), before.len(), "{ours} {before}");
            assert_eq!(ours[..MICROS_AT], before[..MICROS_AT], "{ours} {before}");
            assert!(before.as_str() <= ours.as_str() && ours.as_str() <= after.as_str(), "{before} {ours} {after}");
            return;
        }
        panic!("the second ticked during every try");
    }
}
