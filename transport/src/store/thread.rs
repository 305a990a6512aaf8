//! The store thread: requests in, one transaction per batch, answers out.
//!
//! Hubs [`StoreHandle::submit`] without waiting. The thread blocks for the
//! first request, takes everything queued behind it (up to [`MAX_BATCH`])
//! as one batch, commits it, and sends each answer to its shard, so every
//! shard gets its answers in the order it asked. While idle, and between
//! batches once [`SWEEP_EVERY`] has passed, it sweeps expired publications
//! one short step at a time, always giving queued requests the way first.

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hubbub_core::{StoreEvent, StoreRequest, Timestamp};
use tokio::sync::mpsc::UnboundedSender;

use super::{SqliteStore, StoreStats};

/// The most requests in one transaction.
pub const MAX_BATCH: usize = 4096;

/// How often expired publications are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A request and the shard it came from.
type Command = (usize, StoreRequest);

/// Submits requests to the store thread. Cheap to clone; the thread ends
/// when [`StoreHandle::close`] is called or every handle is dropped, after
/// it has answered everything submitted before.
#[derive(Clone)]
pub struct StoreHandle {
    /// One sender for all clones: `close` drops it, so a request is either
    /// refused or queued before the thread sees the end of its queue, and
    /// nothing accepted goes unanswered.
    tx: Arc<Mutex<Option<mpsc::Sender<Command>>>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    stats: Arc<StoreStats>,
}

/// The store thread has ended: the request (given back) was not taken.
#[derive(Debug)]
pub struct StoreClosed(pub Box<StoreRequest>);

impl std::fmt::Display for StoreClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the history store has shut down")
    }
}

impl std::error::Error for StoreClosed {}

/// Starts the store thread (`hubbub-store`); answers for shard `i` go to
/// `shards[i]`.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn(
    store: SqliteStore,
    shards: Vec<UnboundedSender<StoreEvent>>,
) -> std::io::Result<StoreHandle> {
    let (tx, rx) = mpsc::channel();
    let stats = store.stats();
    let thread = std::thread::Builder::new()
        .name("hubbub-store".into())
        .spawn(move || run(store, &rx, &shards))?;
    Ok(StoreHandle {
        tx: Arc::new(Mutex::new(Some(tx))),
        thread: Arc::new(Mutex::new(Some(thread))),
        stats,
    })
}

impl StoreHandle {
    /// Queues `request` from `shard`; its answer comes on that shard's
    /// channel.
    ///
    /// # Errors
    /// The thread has ended; the request is given back.
    pub fn submit(&self, shard: usize, request: StoreRequest) -> Result<(), StoreClosed> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref() {
            Some(tx) => tx
                .send((shard, request))
                .map_err(|e| StoreClosed(Box::new(e.0 .1))),
            None => Err(StoreClosed(Box::new(request))),
        }
    }

    /// Asks the thread to end once it has answered everything submitted
    /// before (later submits fail with [`StoreClosed`]).
    pub fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Waits for the thread to end (after [`Self::close`], or once every
    /// other handle is dropped). Returns at once if another caller joined.
    pub fn join(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the history store thread panicked");
            }
        }
    }

    /// The store's counters.
    #[must_use]
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }
}

fn run(
    mut store: SqliteStore,
    rx: &mpsc::Receiver<Command>,
    shards: &[UnboundedSender<StoreEvent>],
) {
    let mut last_sweep = Instant::now();
    let mut batch = Vec::new();
    let mut origins = Vec::new();
    loop {
        // Idle: sweep a step at a time while nothing is queued.
        let first = if store.sweeping() {
            match rx.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => {
                    let _ = store.sweep_step();
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            let wait = SWEEP_EVERY.saturating_sub(last_sweep.elapsed());
            match rx.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    last_sweep = Instant::now();
                    let _ = store.start_sweep(wall_clock());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        let mut next = Some(first);
        while let Some((shard, request)) = next.take() {
            origins.push(shard);
            batch.push(request);
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let events = store.execute(std::mem::take(&mut batch));
            for (shard, event) in origins.drain(..).zip(events) {
                match shards.get(shard) {
                    // A shard that has gone needs no answer.
                    Some(sender) => {
                        let _ = sender.send(event);
                    }
                    None => {
                        tracing::error!(shard, "history store: a request from an unknown shard");
                    }
                }
            }
        }
        // Under load the queue is rarely empty: a step after every batch
        // keeps the sweep moving.
        if store.sweeping() {
            let _ = store.sweep_step();
        }
        // Busy for a minute: start the sweep anyway; its steps run when
        // the queue is empty.
        if !store.sweeping() && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            let _ = store.start_sweep(wall_clock());
        }
    }
    tracing::debug!("history store thread ends");
}

/// Wall-clock milliseconds since the Unix epoch (the hubs' clock).
fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(ms)
}
