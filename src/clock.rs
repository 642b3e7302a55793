//! The time a request is decided at, read from the host only when the decision depends
//! on it.
//!
//! Reading the host's clock is a host call, the largest single cost of a cached request
//! after the header reads (README, Performance). The host always knows a window that
//! holds the present without asking: its last reading (at least the tick's, once a
//! second) and how late that can be. A check that is monotonic in time (a token's
//! `exp` and `nbf`, a cache entry's expiry) gives the same answer everywhere in the
//! window when it gives the same answer at both ends; only a token within the window of
//! its limits makes the clock be read. So every worker decides exactly as with the exact
//! time: a token is never accepted by one worker and refused by another around its `exp`.

use std::cell::Cell;

/// A window that holds the present, and the exact time once something needed it.
pub struct Clock<'a> {
    /// Milliseconds since the epoch: the present is in `earliest..=latest`.
    earliest_ms: u64,
    latest_ms: u64,
    exact_ms: Cell<Option<u64>>,
    read: &'a dyn Fn() -> u64,
}

impl Clock<'static> {
    /// A clock that knows the time exactly (tests, and callers that have just read it).
    pub fn exact(now_ms: u64) -> Clock<'static> {
        Clock {
            earliest_ms: now_ms,
            latest_ms: now_ms,
            exact_ms: Cell::new(Some(now_ms)),
            read: &|| 0,
        }
    }

    /// [`Clock::exact`] at a whole second.
    pub fn at_secs(now: u64) -> Clock<'static> {
        Clock::exact(now.saturating_mul(1000))
    }
}

impl<'a> Clock<'a> {
    /// The present is known to be in `earliest_ms..=latest_ms`; `read` gives it exactly.
    pub fn within(earliest_ms: u64, latest_ms: u64, read: &'a dyn Fn() -> u64) -> Clock<'a> {
        Clock {
            earliest_ms,
            latest_ms: latest_ms.max(earliest_ms),
            exact_ms: Cell::new(None),
            read,
        }
    }

    /// The exact time in milliseconds since the epoch, read at most once.
    pub fn now_ms(&self) -> u64 {
        if let Some(now) = self.exact_ms.get() {
            return now;
        }
        let now = (self.read)().max(self.earliest_ms);
        self.exact_ms.set(Some(now));
        now
    }

    /// The exact time in seconds since the epoch.
    pub fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// A lower bound of the present, never read from the host: for what tolerates a
    /// second's staleness (flushing counters).
    pub fn earliest_ms(&self) -> u64 {
        self.exact_ms.get().unwrap_or(self.earliest_ms)
    }

    /// `check` at the present, in seconds. `check` must be monotonic in time (once its
    /// answer changes, it stays changed): then an answer that is the same at both ends
    /// of the window is the answer throughout, and the clock is not read.
    pub fn judge<T: PartialEq>(&self, check: impl Fn(u64) -> T) -> T {
        if self.exact_ms.get().is_none() {
            let early = check(self.earliest_ms / 1000);
            if early == check(self.latest_ms / 1000) {
                return early;
            }
        }
        check(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(exp: u64) -> impl Fn(u64) -> bool {
        move |now| now >= exp
    }

    #[test]
    fn a_check_settled_across_the_window_does_not_read_the_clock() {
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            5_000
        };
        let clock = Clock::within(1_000, 4_000, &read);
        assert!(!clock.judge(expired(10)));
        assert!(clock.judge(expired(1)));
        assert_eq!(reads.get(), 0);
        assert_eq!(clock.earliest_ms(), 1_000, "no exact time was taken");
    }

    #[test]
    fn a_limit_inside_the_window_is_judged_at_the_exact_time_read_once() {
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            2_500
        };
        let clock = Clock::within(1_000, 4_000, &read);
        assert!(clock.judge(expired(2)));
        assert!(!clock.judge(expired(3)));
        assert_eq!(clock.now(), 2);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_reading_behind_the_window_is_taken_as_its_start() {
        let read = || 500;
        let clock = Clock::within(1_000, 4_000, &read);
        assert_eq!(clock.now_ms(), 1_000);
    }

    #[test]
    fn an_exact_clock_never_reads() {
        let clock = Clock::at_secs(7);
        assert_eq!(clock.now_ms(), 7_000);
        assert!(clock.judge(expired(7)));
        assert!(!clock.judge(expired(8)));
        assert_eq!(clock.earliest_ms(), 7_000);
    }
}
