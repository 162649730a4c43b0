//! Minimal levelled logging to stderr. The level is set once at start-up; a disabled message
//! costs one relaxed load of a value no thread writes after start-up.

use crate::config::LogLevel;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::$level) {
            eprintln!("seqcore [{}] {}", stringify!($level), format_args!($($arg)*));
        }
    };
}

/// A message logged at most once per `period`, counting the occurrences in between: for
/// conditions that can repeat thousands of times a second (a listener out of descriptors).
pub struct Throttle {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(period: std::time::Duration) -> Throttle {
        Throttle { period, last: None, suppressed: 0 }
    }

    /// One occurrence at `now`: `Some(n)` when it should be logged, `n` being the occurrences
    /// not logged since the last one that was; `None` when it falls within the period.
    pub fn hit(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// `hit`, as the end of the message to log: `Some("")` when none was held back since the
    /// last one logged, `Some(" (n more since the last)")` when n were; `None` within the period.
    pub fn note(&mut self, now: std::time::Instant) -> Option<String> {
        self.hit(now).map(|n| if n == 0 { String::new() } else { format!(" ({n} more since the last)") })
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[test]
    fn a_throttle_logs_once_per_period_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(0));
        assert_eq!(t.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_throttles_note_counts_what_it_held_back() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.note(t0).as_deref(), Some(""));
        assert_eq!(t.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.note(t0 + Duration::from_secs(10)).as_deref(), Some(" (1 more since the last)"));
    }
}
