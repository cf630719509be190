//! Wall-clock time for events stamped with CLOCK_MONOTONIC.
//!
//! A small civil-from-days conversion is all RFC 3339 in UTC needs, so no date crate.

use std::io;

const NS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;

/// Converts CLOCK_MONOTONIC nanoseconds (what `bpf_ktime_get_ns` returns) to wall time.
///
/// Holds the offset wall − monotonic, read once at start. Replays build it from the offset
/// recorded with the stream, so their timestamps match the original run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i64,
}

impl WallClock {
    /// A clock with a known offset (CLOCK_REALTIME − CLOCK_MONOTONIC, nanoseconds).
    pub const fn from_offset_ns(offset_ns: i64) -> Self {
        Self { offset_ns }
    }

    /// Reads the current offset from the system clocks.
    pub fn now() -> io::Result<Self> {
        // Reading the monotonic clock on both sides of the wall clock and taking the midpoint
        // keeps the error to half the (tiny) time between the reads.
        let before = clock_ns(libc::CLOCK_MONOTONIC)?;
        let wall = clock_ns(libc::CLOCK_REALTIME)?;
        let after = clock_ns(libc::CLOCK_MONOTONIC)?;
        let mono = (before + after) / 2;
        let offset = i64::try_from(wall - mono).map_err(io::Error::other)?;
        Ok(Self::from_offset_ns(offset))
    }

    /// The offset wall − monotonic in nanoseconds, to record alongside a stream.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// Nanoseconds since the Unix epoch for a CLOCK_MONOTONIC timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + i128::from(self.offset_ns)
    }

    /// RFC 3339 UTC time with milliseconds, e.g. `2026-11-26T13:04:05.123Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        format_rfc3339(self.unix_ns(mono_ns))
    }
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC with milliseconds (truncated, so
/// a timestamp never rounds up into the next second).
pub fn format_rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(NS_PER_SEC);
    let millis = unix_ns.rem_euclid(NS_PER_SEC) / 1_000_000;
    let days = secs.div_euclid(SECS_PER_DAY);
    let of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: eras of 400 years, years starting in March so leap days come last).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    // Both are bounded by the arithmetic above (1..=31 and 1..=12).
    (year, month as u32, day as u32)
}

fn clock_ns(clock: libc::clockid_t) -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * NS_PER_SEC + i128::from(ts.tv_nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i128, millis: i128) -> String {
        format_rfc3339(secs * NS_PER_SEC + millis * 1_000_000)
    }

    #[test]
    fn known_timestamps() {
        // Reference values from Python's calendar.timegm.
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_698_245, 123), "2026-11-26T13:04:05.123Z");
        assert_eq!(at(1_704_067_199, 999), "2023-12-31T23:59:59.999Z");
        assert_eq!(at(-1, 0), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn leap_years() {
        // 2000 is a leap year (divisible by 400), 1900 and 2100 are not (divisible by 100).
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_210_096, 0), "2024-02-29T12:34:56.000Z");
        assert_eq!(at(-2_203_891_201, 0), "1900-02-28T23:59:59.000Z");
        assert_eq!(at(-2_203_891_200, 0), "1900-03-01T00:00:00.000Z");
        assert_eq!(at(4_107_456_000, 0), "2100-02-28T00:00:00.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn milliseconds_truncate_and_negative_times_floor() {
        assert_eq!(
            format_rfc3339(1_795_698_245_999_999_999),
            "2026-11-26T13:04:05.999Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn offset_applies_to_monotonic_time() {
        let clock = WallClock::from_offset_ns(1_795_698_000_000_000_000);
        assert_eq!(clock.offset_ns(), 1_795_698_000_000_000_000);
        assert_eq!(clock.rfc3339(245_123_456_789), "2026-11-26T13:04:05.123Z");
    }

    #[test]
    fn now_matches_system_time() {
        let clock = WallClock::now().expect("clocks readable");
        let mono = u64::try_from(clock_ns(libc::CLOCK_MONOTONIC).expect("monotonic clock"))
            .expect("monotonic time is positive");
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos();
        let diff = (clock.unix_ns(mono) - i128::try_from(system).expect("fits")).abs();
        assert!(diff < NS_PER_SEC, "wall clock off by {diff} ns");
    }
}
