//! Per-connection log lines under a budget: a handshake storm must not
//! turn into a log storm. Up to [`LINES_PER_SECOND`] connection events a
//! second are logged one by one; the rest are counted, and the next line
//! logged says how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Connection events logged individually per second (the rest summarised).
pub const LINES_PER_SECOND: u64 = 50;

/// A window of one second: its number, the lines logged in it, and the
/// lines left out since the last summary.
#[derive(Debug, Default)]
pub struct LogBudget {
    second: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

/// What to do with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLine {
    /// Log it; `suppressed` lines were left out before it.
    Log { suppressed: u64 },
    /// Leave it out (counted).
    Skip,
}

impl LogBudget {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line at `second` (any monotonic count of seconds) is logged.
    pub fn line_at(&self, second: u64) -> LogLine {
        if self.second.swap(second, Ordering::AcqRel) != second {
            self.logged.store(0, Ordering::Release);
        }
        if self.logged.fetch_add(1, Ordering::AcqRel) < LINES_PER_SECOND {
            LogLine::Log {
                suppressed: self.suppressed.swap(0, Ordering::AcqRel),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            LogLine::Skip
        }
    }

    /// [`LogBudget::line_at`] now.
    pub fn line(&self) -> LogLine {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.line_at(second)
    }
}

/// The budget for connection opened/closed lines.
pub static CONNECTIONS: LogBudget = LogBudget::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_summarised_and_the_next_second_starts_afresh() {
        let b = LogBudget::new();
        let logged = (0..1_000).filter(|_| b.line_at(7) != LogLine::Skip).count();
        assert_eq!(logged as u64, LINES_PER_SECOND);
        // The first line of the next second carries the count left out.
        assert_eq!(
            b.line_at(8),
            LogLine::Log {
                suppressed: 1_000 - LINES_PER_SECOND
            }
        );
        assert_eq!(b.line_at(8), LogLine::Log { suppressed: 0 });
    }
}
