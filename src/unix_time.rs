//! Wall-clock time as JWT claims, vendor answers and the flow store count it: seconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now (0 for a clock set before it).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Time from `now` until the Unix time `at` (in seconds), zero once it has passed; `None` when it cannot be a
/// duration (not finite, or a clock before the epoch).
pub(crate) fn until(at: f64, now: SystemTime) -> Option<Duration> {
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Duration::try_from_secs_f64((at - now).max(0.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_is_zero_once_passed_and_none_for_nonsense() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(until(1100.0, now), Some(Duration::from_secs(100)));
        assert_eq!(until(900.0, now), Some(Duration::ZERO));
        assert_eq!(until(f64::INFINITY, now), None);
    }
}
