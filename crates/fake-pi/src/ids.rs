//! Wall-clock timestamps and generated identifiers: session ids and session-file names in pi's formats.
//!
//! The crate may not depend on `uuid` or `chrono`, so the little of both that pi's output needs lives here.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as pi puts in message `timestamp` fields.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// pi's session-file time stamp: an ISO-8601 UTC time with `:` and `.` replaced by `-`,
/// e.g. `2026-11-26T16-15-01-305Z`.
pub(crate) fn file_stamp(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}-{min:02}-{s:02}-{milli:03}Z")
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A UUIDv7-shaped id like the ones pi generates for sessions (`01a218a3-8cb9-7422-b1b9-ebc101d9bc32`).
pub(crate) fn session_id() -> String {
    let ms = u64::try_from(now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        a & 0xfff,
        0x8000 | ((a >> 12) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Randomness good enough for ids: std's hasher keys are seeded randomly per process, and the counter keeps two calls
/// in the same nanosecond apart.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_match_the_capture_format() {
        // 2026-11-26T16:15:01.305Z, the stamp in ev152-basic.jsonl's sessionFile.
        assert_eq!(file_stamp(1_795_709_701_305), "2026-11-26T16-15-01-305Z");
        assert_eq!(file_stamp(0), "1970-01-01T00-00-00-000Z");
        assert_eq!(file_stamp(951_782_400_000), "2000-02-29T00-00-00-000Z");
    }

    #[test]
    fn session_ids_look_like_uuid_v7_and_differ() {
        let (a, b) = (session_id(), session_id());
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('7'));
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
