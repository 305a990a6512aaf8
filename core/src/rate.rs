//! Rate limits on virtual time: token buckets that refill from the
//! timestamps the driver passes in, so a simulation replays them exactly.

use crate::time::Timestamp;

/// A sustained rate with a burst allowance: `per_second` tokens refill each
/// second, up to `burst` saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    #[must_use]
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// What a bucket says about one more request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allowed,
    /// Over the rate: refuse this one (the client may retry later).
    Refused,
    /// Over the rate for long enough that the sender is flooding: refused
    /// requests cost tokens too, and the debt reached a whole burst.
    Flooding,
}

/// Millitokens, so that slow rates refill smoothly between milliseconds.
const MILLI: i64 = 1_000;

/// A token bucket. Every request costs a token, refused ones included: a
/// client that keeps sending over the rate digs a debt, and one whose debt
/// reaches `burst` is [`Verdict::Flooding`]. A client that bursts and then
/// pauses never gets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Millitokens; negative while in debt.
    balance: i64,
    last: Timestamp,
}

impl Bucket {
    /// A full bucket at `now`.
    #[must_use]
    pub fn full(rate: Rate, now: Timestamp) -> Self {
        Self {
            balance: i64::from(rate.burst) * MILLI,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Timestamp) {
        let elapsed = i64::try_from(now.since(self.last).as_millis()).unwrap_or(i64::MAX);
        if elapsed > 0 {
            // per_second tokens per 1,000 ms = per_second millitokens per ms.
            let refill = elapsed.saturating_mul(i64::from(rate.per_second));
            let cap = i64::from(rate.burst) * MILLI;
            self.balance = self.balance.saturating_add(refill).min(cap);
            self.last = now;
        }
    }

    /// Spends one token if there is one (a refusal costs nothing): for
    /// output the hub itself paces, which has no sender to punish.
    pub fn try_take(&mut self, rate: Rate, now: Timestamp) -> bool {
        self.refill(rate, now);
        let allowed = self.balance >= MILLI;
        if allowed {
            self.balance -= MILLI;
        }
        allowed
    }

    /// When the next token will be there (`now` if one is).
    #[must_use]
    pub fn ready_at(&self, rate: Rate, now: Timestamp) -> Timestamp {
        let mut b = *self;
        b.refill(rate, now);
        if b.balance >= MILLI || rate.per_second == 0 {
            return now;
        }
        let ms = (MILLI - b.balance + i64::from(rate.per_second) - 1) / i64::from(rate.per_second);
        now.saturating_add(std::time::Duration::from_millis(
            u64::try_from(ms).unwrap_or(0),
        ))
    }

    /// Spends one token for a request at `now`.
    pub fn take(&mut self, rate: Rate, now: Timestamp) -> Verdict {
        self.refill(rate, now);
        let allowed = self.balance >= MILLI;
        // The debt stops at one burst: that is where flooding is declared.
        let floor = -(i64::from(rate.burst.max(1)) * MILLI);
        self.balance = (self.balance - MILLI).max(floor);
        if allowed {
            Verdict::Allowed
        } else if self.balance <= floor {
            Verdict::Flooding
        } else {
            Verdict::Refused
        }
    }

    /// Whether the bucket is full again at `now` (so it can be forgotten).
    #[must_use]
    pub fn is_full(&self, rate: Rate, now: Timestamp) -> bool {
        let elapsed = i64::try_from(now.since(self.last).as_millis()).unwrap_or(i64::MAX);
        self.balance
            .saturating_add(elapsed.saturating_mul(i64::from(rate.per_second)))
            >= i64::from(rate.burst) * MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let rate = Rate::new(10, 5);
        let mut b = Bucket::full(rate, at(0));
        for _ in 0..5 {
            assert_eq!(b.take(rate, at(0)), Verdict::Allowed);
        }
        assert_eq!(b.take(rate, at(0)), Verdict::Refused);
        // The refused request cost a token: 100 ms refill one, which pays the debt.
        assert_eq!(b.take(rate, at(100)), Verdict::Refused);
        assert_eq!(b.take(rate, at(300)), Verdict::Allowed);
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let rate = Rate::new(100, 10);
        let mut b = Bucket::full(rate, at(0));
        for i in 0..10_000 {
            assert_eq!(b.take(rate, at(i * 10)), Verdict::Allowed, "request {i}");
        }
    }

    #[test]
    fn persistent_flooding_is_detected_and_a_pause_forgives() {
        let rate = Rate::new(10, 5);
        let mut b = Bucket::full(rate, at(0));
        let mut verdicts = Vec::new();
        for i in 0..100 {
            verdicts.push(b.take(rate, at(i)));
        }
        // 5 allowed, then refusals until the debt reaches one burst.
        assert_eq!(verdicts[..5], [Verdict::Allowed; 5]);
        assert_eq!(verdicts[5], Verdict::Refused);
        assert_eq!(verdicts.last(), Some(&Verdict::Flooding));
        assert!(!b.is_full(rate, at(100)));
        assert!(b.is_full(rate, at(100 + 2_000)));
        let mut b = Bucket::full(rate, at(0));
        for _ in 0..7 {
            b.take(rate, at(0));
        }
        // A pause long enough to pay the debt and refill: allowed again.
        assert_eq!(b.take(rate, at(1_000)), Verdict::Allowed);
    }

    #[test]
    fn try_take_costs_nothing_when_refused_and_says_when_to_retry() {
        let rate = Rate::new(20, 2);
        let mut b = Bucket::full(rate, at(0));
        assert!(b.try_take(rate, at(0)));
        assert!(b.try_take(rate, at(0)));
        assert!(!b.try_take(rate, at(0)));
        assert!(!b.try_take(rate, at(10)));
        assert_eq!(b.ready_at(rate, at(10)), at(50));
        assert!(b.try_take(rate, at(50)));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let rate = Rate::new(10, 2);
        let mut b = Bucket::full(rate, at(1_000));
        assert_eq!(b.take(rate, at(1_000)), Verdict::Allowed);
        assert_eq!(b.take(rate, at(1_000)), Verdict::Allowed);
        assert_eq!(b.take(rate, at(10)), Verdict::Refused);
    }
}
