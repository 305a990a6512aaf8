//! Virtual time and a network faithful to TCP.
//!
//! - [`EventQueue`]: events ordered by (time, insertion), so two events at
//!   one instant always run in the order they were scheduled.
//! - [`Pipe`]: one direction of one connection. Each message has its own
//!   latency, but never overtakes the one before it: TCP reorders nothing and
//!   loses nothing inside a connection.
//! - [`Outbox`]: the transport's bounded per-connection queue between the hub
//!   and the socket writer: the core's outbox policy, the same code the
//!   server's writers run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use hubbub_core::{CloseReason, Frame, RoomId, Route, Timestamp};

/// What a client puts on the wire towards the hub.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// The WebSocket handshake (the transport reports `Input::Open` when it completes).
    Open(Route),
    Data(Frame),
    Pong,
    /// A close frame: the client leaves cleanly.
    Close,
    /// Bytes the WebSocket layer rejects (bad opcode, reserved bits, unmasked
    /// frame): the transport reports `Disconnect { ProtocolError }`.
    Garbled,
}

/// What the server side puts on the wire towards a client.
#[derive(Clone, Debug)]
pub enum Downstream {
    Data {
        frame: Frame,
        presence: Option<RoomId>,
    },
    Ping,
    Close(CloseReason),
}

struct Scheduled<E> {
    at: Timestamp,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Pending events in time order; ties run in scheduling order.
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Timestamp, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled { at, seq, event });
    }

    #[must_use]
    pub fn next_time(&self) -> Option<Timestamp> {
        self.heap.peek().map(|s| s.at)
    }

    pub fn pop(&mut self) -> Option<(Timestamp, E)> {
        self.heap.pop().map(|s| (s.at, s.event))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// One direction of one connection: FIFO with per-message latency.
#[derive(Clone, Debug, Default)]
pub struct Pipe {
    last_arrival: Timestamp,
    sent: u64,
}

impl Pipe {
    /// Numbers the messages sent, so each one's latency can be drawn from
    /// (seed, connection, direction, number) alone: a run where one
    /// connection does something else keeps every other latency, which is
    /// what lets proptest shrink a failing sequence.
    pub fn next_seq(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// When a message sent at `now` with `latency_ms` arrives: never before
    /// the message sent ahead of it.
    pub fn arrival(&mut self, now: Timestamp, latency_ms: u64) -> Timestamp {
        let at = Timestamp::from_millis(now.as_millis() + latency_ms).max(self.last_arrival);
        self.last_arrival = at;
        at
    }
}

/// A frame waiting in the transport's outbox (the core's type).
pub use hubbub_core::outbox::{Offer, Queued};

/// The transport's bounded outbox for one connection (`Config::send_queue`
/// frames): the core's [`hubbub_core::outbox::OutQueue`], the very policy
/// the server's writers apply (bound, presence conflation), with its
/// capacity.
#[derive(Debug)]
pub struct Outbox {
    queue: hubbub_core::outbox::OutQueue,
    capacity: usize,
}

impl Outbox {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: hubbub_core::outbox::OutQueue::new(),
            capacity,
        }
    }

    pub fn offer(&mut self, frame: Frame, presence: Option<RoomId>) -> Offer {
        self.queue.offer(frame, presence, self.capacity)
    }

    pub fn pop(&mut self) -> Option<Queued> {
        self.queue.pop()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Payload bytes waiting.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.queue.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_is_fifo_whatever_the_latencies() {
        let mut pipe = Pipe::default();
        let t0 = Timestamp::from_millis(100);
        assert_eq!(pipe.arrival(t0, 50).as_millis(), 150);
        // A faster later message waits behind the slow one.
        assert_eq!(pipe.arrival(t0, 5).as_millis(), 150);
        assert_eq!(
            pipe.arrival(Timestamp::from_millis(200), 1).as_millis(),
            201
        );
    }

    #[test]
    fn events_run_in_time_then_schedule_order() {
        let mut q = EventQueue::default();
        q.push(Timestamp::from_millis(5), "b");
        q.push(Timestamp::from_millis(1), "a");
        q.push(Timestamp::from_millis(5), "c");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn outbox_bounds_and_conflates_presence_at_the_back() {
        let mut out = Outbox::new(2);
        let room = Some(RoomId(7));
        assert_eq!(out.offer(Frame::text("p1"), room), Offer::Queued);
        assert_eq!(out.offer(Frame::text("joined"), None), Offer::Queued);
        assert_eq!(out.offer(Frame::text("x"), None), Offer::Full);
        // A newer snapshot replaces the unsent one even when the queue is full.
        assert_eq!(out.offer(Frame::text("p2"), room), Offer::Conflated);
        assert_eq!(out.len(), 2);
        assert_eq!(out.pop().map(|q| q.frame.payload), Some("joined".into()));
        assert_eq!(out.pop().map(|q| q.frame.payload), Some("p2".into()));
        // Once sent, the next snapshot takes a slot of its own.
        assert_eq!(out.offer(Frame::text("p3"), room), Offer::Queued);
        assert_eq!(out.offer(Frame::text("p4"), Some(RoomId(8))), Offer::Queued);
        assert_eq!(out.pop().map(|q| q.frame.payload), Some("p3".into()));
        assert_eq!(out.pop().map(|q| q.frame.payload), Some("p4".into()));
        assert!(out.is_empty());
        assert_eq!(out.bytes(), 0);
    }
}
