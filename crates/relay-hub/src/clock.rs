//! [`Clock`]: the time activity is measured in. Hubs stamp client commands, pi's output,
//! connects and disconnects with it, and the idle reaper compares those stamps with it. It is
//! tokio's clock plus an offset that only tests move ([`Clock::advance`]), so a test can let an
//! hour of inactivity pass at once, everywhere the relay looks, without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The relay's activity clock; cheap to clone, clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Nanoseconds added to tokio's clock.
    offset: Arc<AtomicU64>,
}

impl Clock {
    /// The current instant.
    pub fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.offset.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) `by` into the future. For tests: the relay
    /// never calls it.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clones_advance_together_and_follow_tokio_time() {
        let a = Clock::default();
        let b = a.clone();
        let t0 = a.now();
        b.advance(Duration::from_secs(3600));
        assert_eq!(a.now() - t0, Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.now() - t0, Duration::from_secs(3601));
    }
}
