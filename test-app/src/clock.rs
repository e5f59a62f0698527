//! The test-app's clock, injected so that tests move time forward instead of
//! sleeping: token expiry (RFC 9068 §4 `exp`, with [`crate::tokens::LEEWAY_SECS`])
//! is judged by [`Clock::now`] in the resource server and by the client when
//! it decides that a 401 means "expired, refresh".

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

/// A source of the current unix time.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;
}

/// The shared clock of one app.
pub type SharedClock = Arc<dyn Clock>;

/// The system's time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// The system's time plus an offset a test moves forward.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset: AtomicI64,
}

impl ManualClock {
    /// A clock that starts at the system's time.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock `secs` seconds forward.
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        SystemClock.now() + self.offset.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_forward() {
        let clock = ManualClock::new();
        let before = clock.now();
        clock.advance(600);
        let after = clock.now();
        assert!(
            (600..=601).contains(&(after - before)),
            "{before} -> {after}"
        );
    }
}
