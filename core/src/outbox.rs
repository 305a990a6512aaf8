//! The outbox policy: what may wait to be written to one connection, and
//! what a close does with it. Pure data structure code, run by the server's
//! writer (inside its lock) and by the simulation's network alike, so the
//! simulation tests the policy the server applies, not a copy of it.
//!
//! - **Bounded**: at most `capacity` messages wait; a message that does not
//!   fit is refused ([`Offer::Full`]) and the driver reports
//!   `Input::QueueFull`, which evicts the connection.
//! - **Presence conflation**: a presence snapshot (`online_users`) of a room
//!   makes an unsent older one of the same room obsolete. The older one is
//!   dropped and the new one queued at the back, so it never takes an extra
//!   place and always follows the join/leave notices it already reflects.
//!   A snapshot that replaced an older one always fits.
//! - **Closes**: [`flushes_on_close`] says whether what is queued is still
//!   written before the close frame.

use std::collections::VecDeque;

use crate::close::CloseReason;
use crate::codec::Frame;
use crate::hub::RoomId;

/// A message waiting to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub frame: Frame,
    /// The room whose presence snapshot this is, if it is one.
    pub presence: Option<RoomId>,
}

/// What became of an offered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Queued, after dropping an unsent older snapshot of the same room.
    Conflated,
    /// `capacity` messages wait already: not queued.
    Full,
}

/// One connection's waiting messages.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// In order. `None` marks a snapshot superseded by a newer one; it is
    /// skipped and does not count.
    queue: VecDeque<Option<Queued>>,
    /// `Some` entries.
    live: usize,
    /// `None` entries.
    superseded: usize,
    /// Per room, the index in `queue` of its unsent snapshot.
    presence: Vec<(RoomId, usize)>,
    /// Payload bytes of the live entries.
    bytes: usize,
}

impl OutQueue {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `frame` (a snapshot of room `presence`, if set), with room for
    /// `capacity` messages.
    pub fn offer(&mut self, frame: Frame, presence: Option<RoomId>, capacity: usize) -> Offer {
        let mut conflated = false;
        if let Some(room) = presence {
            if let Some(pos) = self.presence.iter().position(|(r, _)| *r == room) {
                let old = self.presence.swap_remove(pos).1;
                if let Some(old) = self.queue.get_mut(old).and_then(Option::take) {
                    self.live -= 1;
                    self.superseded += 1;
                    self.bytes -= old.frame.payload.len();
                    conflated = true;
                }
            }
        }
        if self.live >= capacity.max(1) {
            return Offer::Full;
        }
        if let Some(room) = presence {
            self.presence.push((room, self.queue.len()));
        }
        self.bytes += frame.payload.len();
        self.queue.push_back(Some(Queued { frame, presence }));
        self.live += 1;
        self.compact(capacity);
        if conflated {
            Offer::Conflated
        } else {
            Offer::Queued
        }
    }

    /// Drops superseded entries once they outnumber the capacity, keeping
    /// the snapshot indices right.
    fn compact(&mut self, capacity: usize) {
        if self.superseded <= capacity {
            return;
        }
        for slot in &mut self.presence {
            let holes = self
                .queue
                .iter()
                .take(slot.1)
                .filter(|q| q.is_none())
                .count();
            slot.1 -= holes;
        }
        self.queue.retain(Option::is_some);
        self.superseded = 0;
    }

    /// The oldest waiting message.
    pub fn pop(&mut self) -> Option<Queued> {
        loop {
            let entry = self.queue.pop_front()?;
            for slot in &mut self.presence {
                slot.1 = slot.1.saturating_sub(1);
            }
            match entry {
                Some(q) => {
                    self.live -= 1;
                    self.bytes -= q.frame.payload.len();
                    if q.presence.is_some() {
                        self.presence.retain(|(r, _)| Some(*r) != q.presence);
                    }
                    return Some(q);
                }
                None => self.superseded -= 1,
            }
        }
    }

    /// Moves everything waiting into `into` (emptied first), in order;
    /// superseded entries may be among them as `None`.
    pub fn take_all(&mut self, into: &mut VecDeque<Option<Queued>>) {
        into.clear();
        std::mem::swap(&mut self.queue, into);
        self.live = 0;
        self.superseded = 0;
        self.bytes = 0;
        self.presence.clear();
    }

    /// Drops everything waiting, and gives the memory back.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Messages waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Payload bytes waiting.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held, superseded ones included (for bounds checks).
    #[must_use]
    pub fn slots(&self) -> usize {
        self.queue.len()
    }
}

/// Whether what is queued is still written before the close frame: yes when
/// the peer is there and reading (a server shutdown, or the client's own
/// protocol violation: it sees everything sent before its close); no when
/// the peer is gone, dead or too slow to wait for, or was never admitted.
#[must_use]
pub const fn flushes_on_close(reason: CloseReason) -> bool {
    match reason {
        CloseReason::ServerShutdown
        | CloseReason::MessageTooBig
        | CloseReason::InvalidUtf8
        | CloseReason::BinaryNotAccepted
        | CloseReason::ProtocolError
        | CloseReason::BadRequest
        | CloseReason::Stale
        | CloseReason::NotAvailable
        | CloseReason::StoreUnavailable
        | CloseReason::ForceDisconnect
        | CloseReason::InvalidToken
        | CloseReason::ConnectionExpired
        | CloseReason::TooManyRequests
        | CloseReason::ConnectionLimit => true,
        CloseReason::PeerClosed
        | CloseReason::HeartbeatTimeout
        | CloseReason::SlowConsumer
        | CloseReason::WriteTimeout
        | CloseReason::ServerFull => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(q: &mut OutQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|q| String::from_utf8_lossy(&q.frame.payload).into_owned())
            .collect()
    }

    #[test]
    fn bounded_and_conflating_at_the_back() {
        let mut q = OutQueue::new();
        let room = Some(RoomId(7));
        assert_eq!(q.offer(Frame::text("p1"), room, 2), Offer::Queued);
        assert_eq!(q.offer(Frame::text("joined"), None, 2), Offer::Queued);
        assert_eq!(q.offer(Frame::text("x"), None, 2), Offer::Full);
        // A newer snapshot replaces the unsent one even when the queue is full.
        assert_eq!(q.offer(Frame::text("p2"), room, 2), Offer::Conflated);
        assert_eq!((q.len(), q.bytes()), (2, 8));
        assert_eq!(texts(&mut q), ["joined", "p2"]);
        // Once sent, the next snapshot takes a place of its own.
        assert_eq!(q.offer(Frame::text("p3"), room, 2), Offer::Queued);
        assert_eq!(
            q.offer(Frame::text("p4"), Some(RoomId(8)), 2),
            Offer::Queued
        );
        assert_eq!(texts(&mut q), ["p3", "p4"]);
        assert!(q.is_empty() && q.bytes() == 0);
    }

    #[test]
    fn superseded_entries_are_compacted_and_indices_stay_right() {
        let mut q = OutQueue::new();
        let room = Some(RoomId(1));
        for i in 0..100 {
            q.offer(Frame::text(format!("p{i}")), room, 4);
            if i % 10 == 0 && q.len() < 4 {
                q.offer(Frame::text(format!("m{i}")), None, 4);
            }
        }
        assert!(q.slots() <= 2 * 4 + 1, "{}", q.slots());
        // After a pop, conflation still finds the right entry.
        assert_eq!(q.pop().map(|e| e.frame.payload), Some("m0".into()));
        q.offer(Frame::text("p-last"), room, 4);
        assert_eq!(texts(&mut q), ["m10", "m20", "p-last"]);
    }

    #[test]
    fn take_all_empties_it() {
        let mut q = OutQueue::new();
        q.offer(Frame::text("a"), None, 4);
        q.offer(Frame::text("s"), Some(RoomId(1)), 4);
        q.offer(Frame::text("s2"), Some(RoomId(1)), 4);
        let mut into = VecDeque::new();
        q.take_all(&mut into);
        let live: Vec<_> = into
            .iter()
            .flatten()
            .map(|e| e.frame.payload.clone())
            .collect();
        assert_eq!(live, ["a", "s2"]);
        assert!(q.is_empty() && q.slots() == 0);
        assert!(flushes_on_close(CloseReason::ServerShutdown));
        assert!(!flushes_on_close(CloseReason::SlowConsumer));
    }
}
