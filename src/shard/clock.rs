//! The shards' logical clock: milliseconds since the shard started, on which sequence activity
//! and idle timeouts are reckoned. The server reads the monotonic clock; unit tests use a manual
//! one, so timeouts are tested by moving time, not by sleeping. (Latency measurements for the
//! metrics read `Instant` directly: they measure, they decide nothing.)

use std::cell::Cell;
use std::time::Instant;

pub enum Clock {
    Monotonic(Instant),
    Manual(Cell<u64>),
}

impl Clock {
    /// The real clock, starting now.
    pub fn monotonic() -> Clock {
        Clock::Monotonic(Instant::now())
    }

    /// A clock that moves only when told to.
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Cell::new(start_ms))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Monotonic(started) => started.elapsed().as_millis() as u64,
            Clock::Manual(now) => now.get(),
        }
    }

    /// Moves a manual clock forward; the real clock moves by itself and ignores this.
    pub fn advance_ms(&self, ms: u64) {
        if let Clock::Manual(now) = self {
            now.set(now.get() + ms);
        }
    }
}
