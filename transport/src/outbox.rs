//! One connection's outbound queue, shared by the hub task and the writer.
//!
//! Why a mutex-and-notify queue rather than a channel: the hub task must
//! never wait for a socket, so it pushes without awaiting and learns at once
//! when the queue is full (it then reports `Input::QueueFull` and the core
//! evicts the connection). The writer takes *everything* pending in one lock
//! and writes it with one vectored write, so a busy connection costs one
//! wake-up and one syscall per batch rather than per message. The lock is
//! only held to push or to swap the pending batch out; never during IO.
//!
//! Besides data frames the outbox holds control frames: the hub's pings, the
//! pongs fastwebsockets' reader is obliged to send, the close echo it is
//! obliged to send, and the hub's close order. Exactly one close frame is
//! ever written per connection (see [`crate::writer`]).
//!
//! Scheduling lag is not slowness: every outbox reports to a shared
//! [`WriterGauge`] whether its writer has been woken for work it has not yet
//! started on. The hub task yields while that count is high (see
//! [`crate::hub_task`]), so a burst it handles in one go cannot fill a
//! healthy client's queue just because that client's writer had not been
//! scheduled yet. A writer blocked on a slow socket is not counted: nothing
//! ever waits for a slow client.
//!
//! Presence conflation: an `online_users` snapshot (`Output::Send` with
//! `presence: Some(room)`) makes an older, still unsent snapshot of the same
//! room obsolete. The older one is dropped and the new one queued at the
//! back, so the queue does not grow and a snapshot always follows the
//! join/leave notices it already reflects. This keeps a client from being
//! evicted because a thousand people joined its room at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hubbub_core::outbox::{Offer, OutQueue, Queued};
use hubbub_core::{CloseReason, Codec, Frame, RoomId};
use tokio::sync::Notify;

use crate::hub_task::BusLoad;
use crate::metrics::OutboxMetrics;

/// Pongs owed to the client and not yet written. RFC 6455 §5.5.3 allows
/// answering only the latest ping; keeping a few answers every ping of a
/// well-behaved client while a ping flood stays bounded.
const MAX_PENDING_PONGS: usize = 16;

/// Shared by every outbox of a server: counts writers that have been woken
/// for work and not yet started on it (read by the hub task), and carries
/// the counters outboxes and writers keep for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterGauge {
    runnable: AtomicUsize,
    /// Queue depth at each push, presence snapshots conflated, bytes written
    /// (one set for the whole server: every shard's gauge shares it).
    pub metrics: Arc<OutboxMetrics>,
    /// The bus between shards, whose load readers consult (reached through
    /// the outbox, so a reader holds no pointer of its own).
    pub bus: Arc<BusLoad>,
}

impl WriterGauge {
    /// A gauge for one shard, counting into the server's `metrics`.
    #[must_use]
    pub fn sharing(metrics: Arc<OutboxMetrics>, bus: Arc<BusLoad>) -> Self {
        Self {
            runnable: AtomicUsize::new(0),
            metrics,
            bus,
        }
    }

    /// Writers woken but not yet running.
    #[must_use]
    pub fn runnable(&self) -> usize {
        self.runnable.load(Ordering::Acquire)
    }

    fn up(&self) {
        self.runnable.fetch_add(1, Ordering::AcqRel);
    }

    fn down(&self) {
        self.runnable.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue holds `send_queue` messages: the frame was not queued.
    Full,
    /// The connection is closing or gone: the frame was discarded.
    Dropped,
}

/// A connection's outbound queue. Shared as `Arc<Outbox>`.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    gauge: Arc<WriterGauge>,
    /// The connection's protocol: how the writer frames pings, data and the close.
    codec: Codec,
    /// Keys this connection's ping payloads (see [`Outbox::ping_payload`]).
    ping_key: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Data frames in order, under the core's outbox policy (bound and
    /// presence conflation).
    queue: OutQueue,
    ping: bool,
    /// Pings handed to the writer so far: the latest one's number.
    pings: u64,
    pongs: VecDeque<Bytes>,
    /// The close frame fastwebsockets' reader obliged us to send (the echo of
    /// the client's close, or a 1002 for a bad close code).
    peer_close: Option<Bytes>,
    /// The hub's order to close, until the writer takes it.
    close: Option<CloseReason>,
    /// The writer took the close order or gave up: nothing more is queued.
    finished: bool,
    /// A wake-up is pending since the writer last took work.
    signalled: bool,
    /// The writer found nothing to do and waits to be woken.
    idle: bool,
    /// Counted in the gauge: woken while idle, not yet taken its work.
    counted: bool,
}

impl State {
    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.ping || !self.pongs.is_empty() || self.close.is_some()
    }
}

/// Everything the writer took from the outbox in one go.
#[derive(Debug, Default)]
pub struct Work {
    /// Data frames in order; `None` entries (superseded snapshots) are skipped.
    pub data: VecDeque<Option<Queued>>,
    pub ping: bool,
    /// The payload of the ping to send, when `ping`.
    pub ping_payload: [u8; 8],
    pub pongs: Vec<Bytes>,
    /// Set once: the hub's close order. The outbox is finished after it.
    pub close: Option<CloseReason>,
    /// With `close`: the obligated close frame payload, if the client closed.
    pub peer_close: Option<Bytes>,
}

impl Work {
    fn clear(&mut self) {
        self.data.clear();
        self.ping = false;
        self.pongs.clear();
        self.close = None;
        self.peer_close = None;
    }
}

impl Outbox {
    /// An empty queue holding at most `capacity` data messages, reporting
    /// its writer's wake-ups to `gauge`.
    #[must_use]
    pub fn new(capacity: usize, gauge: Arc<WriterGauge>) -> Self {
        Self::for_codec(capacity, gauge, Codec::SeedJson)
    }

    /// An outbox for a connection speaking `codec`.
    #[must_use]
    pub fn for_codec(capacity: usize, gauge: Arc<WriterGauge>, codec: Codec) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            gauge,
            codec,
            ping_key: random_key(),
        }
    }

    /// The payload of ping number `n`: keyed, so only a client that read
    /// the ping can answer it.
    fn ping_payload(&self, n: u64) -> [u8; 8] {
        (n ^ self.ping_key)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_be_bytes()
    }

    /// Whether a pong's payload answers one of the last two pings sent
    /// (reader task). Only those count as the client being alive: a client
    /// that never reads cannot keep itself open with unsolicited pongs.
    #[must_use]
    pub fn answers_ping(&self, payload: &[u8]) -> bool {
        let sent = self.lock().pings;
        [sent, sent.saturating_sub(1)]
            .into_iter()
            .filter(|&n| n > 0)
            .any(|n| payload == self.ping_payload(n))
    }

    /// Whether the shards are behind on their messages to each other, so
    /// the reader should leave the client's input in the socket for now.
    #[must_use]
    pub fn bus_congested(&self) -> bool {
        self.gauge.bus.congested()
    }

    /// The protocol the connection speaks.
    #[must_use]
    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug in this module; the state
        // is still consistent enough to shut the connection down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the writer unless a wake-up is already pending. Call after
    /// releasing the lock.
    fn wake(&self, wake: bool) {
        if wake {
            self.notify.notify_one();
        }
    }

    /// Marks that the writer must wake; returns whether to notify.
    fn signal(&self, state: &mut State) -> bool {
        if state.signalled {
            return false;
        }
        state.signalled = true;
        if state.idle && !state.counted {
            state.counted = true;
            self.gauge.up();
        }
        true
    }

    fn uncount(&self, state: &mut State) {
        if std::mem::take(&mut state.counted) {
            self.gauge.down();
        }
    }

    /// Queues a data frame (hub task). Never waits. With `presence`, the
    /// frame is that room's presence snapshot and replaces an unsent older one.
    /// Unless the connection is closing, records how many data messages were
    /// already waiting (`hubbub_queue_depth`; one relaxed `fetch_add`).
    pub fn push(&self, frame: Frame, presence: Option<RoomId>) -> Push {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.finished || s.close.is_some() {
            return Push::Dropped;
        }
        let metrics = &self.gauge.metrics;
        metrics.queue_depth.observe(s.queue.len());
        match s.queue.offer(frame, presence, self.capacity) {
            Offer::Full => return Push::Full,
            Offer::Conflated => metrics.count_conflated(),
            Offer::Queued => {}
        }
        let wake = self.signal(s);
        drop(guard);
        self.wake(wake);
        Push::Queued
    }

    /// Asks the writer to send a ping (hub task). Pings coalesce.
    pub fn ping(&self) {
        let mut s = self.lock();
        if s.finished || s.close.is_some() {
            return;
        }
        s.ping = true;
        let wake = self.signal(&mut s);
        drop(s);
        self.wake(wake);
    }

    /// Orders the connection closed for `reason` (hub task). The first order wins.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.lock();
        if s.finished || s.close.is_some() {
            return;
        }
        s.close = Some(reason);
        let wake = self.signal(&mut s);
        drop(s);
        self.wake(wake);
    }

    /// Queues the pong fastwebsockets' reader must send for a ping (reader task).
    pub fn pong(&self, payload: Bytes) {
        let mut s = self.lock();
        if s.finished {
            return;
        }
        if s.pongs.len() >= MAX_PENDING_PONGS {
            s.pongs.pop_front();
        }
        s.pongs.push_back(payload);
        let wake = self.signal(&mut s);
        drop(s);
        self.wake(wake);
    }

    /// Records the close frame fastwebsockets' reader must send (reader
    /// task). It is written instead of the hub's close frame when the hub's
    /// order comes, so exactly one close frame goes out.
    pub fn peer_close(&self, payload: Bytes) {
        let mut s = self.lock();
        if !s.finished && s.peer_close.is_none() {
            s.peer_close = Some(payload);
        }
    }

    /// Moves all pending work into `work` (writer task), which must have
    /// been fully processed. Returns false when there was nothing to do.
    pub fn take(&self, work: &mut Work) -> bool {
        work.clear();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.signalled = false;
        self.uncount(s);
        s.idle = !s.has_work();
        if s.idle {
            return false;
        }
        s.queue.take_all(&mut work.data);
        work.ping = std::mem::take(&mut s.ping);
        if work.ping {
            s.pings += 1;
            work.ping_payload = self.ping_payload(s.pings);
        }
        work.pongs.extend(s.pongs.drain(..));
        if let Some(reason) = s.close.take() {
            work.close = Some(reason);
            work.peer_close = s.peer_close.take();
            s.finished = true;
        }
        true
    }

    /// Waits until there may be work (writer task); then call [`Outbox::take`].
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// The writer is gone (writer task): drop what is queued and refuse more.
    pub fn finish(&self) {
        let mut guard = self.lock();
        let s = &mut *guard;
        self.uncount(s);
        s.idle = false;
        s.finished = true;
        s.queue.clear();
        s.pongs.clear();
        s.ping = false;
        s.close = None;
    }

    /// Counts `bytes` written to the socket (writer task; `hubbub_bytes_out_total`).
    pub fn wrote(&self, bytes: usize) {
        self.gauge.metrics.count_bytes_out(bytes);
    }

    /// Data messages waiting (for tests and metrics).
    #[must_use]
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if s.counted {
            self.gauge.down();
        }
    }
}

/// A per-connection key from the standard library's randomly seeded hasher
/// (fresh keys for every `RandomState`).
fn random_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7069_6e67);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_counts_idle_writers_woken_for_work() {
        let gauge = Arc::new(WriterGauge::default());
        let ob = Outbox::new(8, gauge.clone());
        let mut w = Work::default();
        // Before the writer first looks, a push is not counted.
        ob.push(Frame::text("a"), None);
        assert_eq!(gauge.runnable(), 0);
        assert!(ob.take(&mut w));
        // Busy writer (took work, writing): not counted either.
        ob.push(Frame::text("b"), None);
        assert_eq!(gauge.runnable(), 0);
        assert!(ob.take(&mut w));
        // Idle writer woken: counted once, until it takes the work.
        assert!(!ob.take(&mut w));
        ob.push(Frame::text("c"), None);
        ob.push(Frame::text("d"), None);
        ob.ping();
        assert_eq!(gauge.runnable(), 1);
        assert!(ob.take(&mut w));
        assert_eq!(gauge.runnable(), 0);
        // Finishing or dropping releases the count.
        assert!(!ob.take(&mut w));
        ob.push(Frame::text("e"), None);
        assert_eq!(gauge.runnable(), 1);
        ob.finish();
        assert_eq!(gauge.runnable(), 0);
        let other = Outbox::new(8, gauge.clone());
        assert!(!other.take(&mut w));
        other.push(Frame::text("f"), None);
        assert_eq!(gauge.runnable(), 1);
        drop(other);
        assert_eq!(gauge.runnable(), 0);
    }

    fn texts(work: &Work) -> Vec<String> {
        work.data
            .iter()
            .flatten()
            .map(|q| String::from_utf8_lossy(&q.frame.payload).into_owned())
            .collect()
    }

    #[test]
    fn bounded_by_capacity() {
        let ob = Outbox::new(2, Arc::default());
        assert_eq!(ob.push(Frame::text("a"), None), Push::Queued);
        assert_eq!(ob.push(Frame::text("b"), None), Push::Queued);
        assert_eq!(ob.push(Frame::text("c"), None), Push::Full);
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert_eq!(texts(&w), ["a", "b"]);
        assert_eq!(ob.push(Frame::text("c"), None), Push::Queued);
        assert!(ob.take(&mut w));
        assert_eq!(texts(&w), ["c"]);
        assert!(!ob.take(&mut w));
    }

    #[test]
    fn presence_snapshots_conflate_per_room() {
        let ob = Outbox::new(3, Arc::default());
        let (r1, r2) = (RoomId(1), RoomId(2));
        assert_eq!(ob.push(Frame::text("p1:a"), Some(r1)), Push::Queued);
        assert_eq!(ob.push(Frame::text("a joined"), None), Push::Queued);
        assert_eq!(ob.push(Frame::text("q1"), Some(r2)), Push::Queued);
        // Full for ordinary messages, but newer snapshots replace older ones.
        assert_eq!(ob.push(Frame::text("x"), None), Push::Full);
        assert_eq!(ob.push(Frame::text("p1:ab"), Some(r1)), Push::Queued);
        assert_eq!(ob.push(Frame::text("p1:abc"), Some(r1)), Push::Queued);
        assert_eq!(ob.queued(), 3);
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert_eq!(texts(&w), ["a joined", "q1", "p1:abc"]);
    }

    #[test]
    fn pushes_record_the_depth_they_found_and_conflations() {
        let gauge = Arc::new(WriterGauge::default());
        let ob = Outbox::new(2, gauge.clone());
        let room = RoomId(1);
        ob.push(Frame::text("a"), None); // found 0 waiting
        ob.push(Frame::text("p1"), Some(room)); // 1
        ob.push(Frame::text("x"), None); // 2: full, still observed
        ob.push(Frame::text("p2"), Some(room)); // 2: replaces p1
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        ob.push(Frame::text("b"), None); // 0
        ob.close(CloseReason::ServerShutdown);
        ob.push(Frame::text("late"), None); // dropped: not observed
        let m = &gauge.metrics;
        let depth = m.queue_depth.snapshot();
        assert_eq!(depth.count, 5);
        assert_eq!(depth.sum, 1 + 2 + 2);
        assert_eq!(&depth.buckets[..3], &[2, 3, 5]);
        assert_eq!(m.presence_conflated(), 1);
        ob.wrote(10);
        ob.wrote(5);
        assert_eq!(m.bytes_out(), 15);
    }

    #[test]
    fn first_snapshot_needs_room() {
        let ob = Outbox::new(1, Arc::default());
        assert_eq!(ob.push(Frame::text("m"), None), Push::Queued);
        assert_eq!(ob.push(Frame::text("p"), Some(RoomId(0))), Push::Full);
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert_eq!(ob.push(Frame::text("p"), Some(RoomId(0))), Push::Queued);
        assert_eq!(ob.push(Frame::text("p2"), Some(RoomId(0))), Push::Queued);
        assert!(ob.take(&mut w));
        assert_eq!(texts(&w), ["p2"]);
    }

    #[test]
    fn superseded_entries_are_compacted() {
        let ob = Outbox::new(4, Arc::default());
        let room = RoomId(7);
        for i in 0..100 {
            assert_eq!(
                ob.push(Frame::text(format!("p{i}")), Some(room)),
                Push::Queued
            );
            if i % 10 == 0 && ob.queued() < 4 {
                assert_eq!(ob.push(Frame::text(format!("m{i}")), None), Push::Queued);
            }
        }
        {
            let s = ob.lock();
            assert!(s.queue.slots() <= 2 * 4 + 1, "{}", s.queue.slots());
        }
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert_eq!(texts(&w), ["m0", "m10", "m20", "p99"]);
    }

    #[test]
    fn close_finishes_and_carries_the_peer_echo() {
        let ob = Outbox::new(4, Arc::default());
        ob.push(Frame::text("a"), None);
        ob.peer_close(Bytes::from_static(b"\x03\xe8"));
        ob.peer_close(Bytes::from_static(b"ignored"));
        ob.close(CloseReason::PeerClosed);
        ob.close(CloseReason::SlowConsumer);
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert_eq!(w.close, Some(CloseReason::PeerClosed));
        assert_eq!(w.peer_close.as_deref(), Some(&b"\x03\xe8"[..]));
        assert_eq!(texts(&w), ["a"]);
        assert_eq!(ob.push(Frame::text("late"), None), Push::Dropped);
        assert!(!ob.take(&mut w));
    }

    #[test]
    fn pongs_are_bounded_and_pings_coalesce() {
        let ob = Outbox::new(4, Arc::default());
        for i in 0..40u8 {
            ob.pong(Bytes::from(vec![i]));
        }
        ob.ping();
        ob.ping();
        let mut w = Work::default();
        assert!(ob.take(&mut w));
        assert!(w.ping);
        assert_eq!(w.pongs.len(), MAX_PENDING_PONGS);
        assert_eq!(w.pongs.last().map(|b| b[0]), Some(39));
    }

    #[tokio::test]
    async fn wakes_the_writer_once_per_batch() {
        let ob = Arc::new(Outbox::new(8, Arc::default()));
        let writer = {
            let ob = ob.clone();
            tokio::spawn(async move {
                let mut w = Work::default();
                let mut seen = Vec::new();
                while seen.len() < 3 {
                    if ob.take(&mut w) {
                        seen.extend(texts(&w));
                    } else {
                        ob.wait().await;
                    }
                }
                seen
            })
        };
        ob.push(Frame::text("1"), None);
        tokio::task::yield_now().await;
        ob.push(Frame::text("2"), None);
        ob.push(Frame::text("3"), None);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("writer woke")
            .expect("writer ran");
        assert_eq!(seen, ["1", "2", "3"]);
    }
}
