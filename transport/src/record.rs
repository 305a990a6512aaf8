//! `--record-inputs FILE`: every input the hub receives, written to a file
//! in the format of `hubbub_core::record`, for `hubbub-sim replay`.
//!
//! The hub task encodes records into a buffer it owns; a full buffer (or
//! an idle hub) hands it to the `hubbub-record` thread over a bounded
//! channel with `try_send`, so the hub never waits for the disk. When the
//! channel is full the buffer's records are dropped and counted: the
//! trailer, written at a clean shutdown, says how many, and a replay of an
//! incomplete recording says so. At `--record-inputs-max-bytes` the
//! thread stops writing (it does not rotate: a replay needs the start),
//! and counts what it did not write as dropped too.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use hubbub_core::record::{self, ApiCall, Engine, Header, OutputHash, Unsupported};
use hubbub_core::{ApiReply, Config, Input, Output, StoreEvent, Timestamp};

/// What `--record-inputs` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordConfig {
    pub path: PathBuf,
    /// The file never grows beyond this (records past it are dropped).
    pub max_bytes: u64,
    /// Message payloads are written as `x` bytes of the same length.
    pub redact: bool,
}

/// Bytes the hub task gathers before handing them to the writer.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the writer at most (4 MiB).
const CHUNKS_IN_FLIGHT: usize = 64;
/// Room kept at the cap for the trailer.
const TRAILER_ROOM: u64 = 32;
/// An idle hub hands over a partial buffer at most this often: each hand-
/// over wakes the writer thread, which a hub idle between every input
/// (1,000 inputs/s) would otherwise do 1,000 times a second.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

enum ToWriter {
    Chunk { bytes: Vec<u8>, records: u64 },
    Finish { dropped: u64, outputs_hash: u64 },
}

/// The hub task's end of a recording.
pub struct Recorder {
    buf: Vec<u8>,
    buf_records: u64,
    redact: bool,
    /// Records the hub task dropped because the writer was behind.
    dropped: u64,
    hash: OutputHash,
    tx: SyncSender<ToWriter>,
    writer: Option<JoinHandle<io::Result<()>>>,
    last_flush: std::time::Instant,
}

impl Recorder {
    /// Creates the file, writes the header and starts the writer thread.
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn start(settings: &RecordConfig, config: &Config, engine: Engine) -> io::Result<Self> {
        let mut file = BufWriter::new(File::create(&settings.path)?);
        let header = Header::new(config, settings.redact, engine).encode();
        file.write_all(&header)?;
        file.flush()?;
        let (tx, rx) = mpsc::sync_channel::<ToWriter>(CHUNKS_IN_FLIGHT);
        let max = settings.max_bytes.max(header.len() as u64 + TRAILER_ROOM);
        let mut written = header.len() as u64;
        let writer = std::thread::Builder::new()
            .name("hubbub-record".to_owned())
            .spawn(move || -> io::Result<()> {
                let (mut records, mut capped) = (0u64, 0u64);
                while let Ok(msg) = rx.recv() {
                    match msg {
                        ToWriter::Chunk { bytes, records: n } => {
                            if capped > 0 || written + bytes.len() as u64 + TRAILER_ROOM > max {
                                capped += n;
                                continue;
                            }
                            file.write_all(&bytes)?;
                            written += bytes.len() as u64;
                            records += n;
                        }
                        ToWriter::Finish {
                            dropped,
                            outputs_hash,
                        } => {
                            let mut trailer = Vec::new();
                            record::encode_trailer(
                                &mut trailer,
                                records,
                                dropped + capped,
                                outputs_hash,
                            );
                            file.write_all(&trailer)?;
                            break;
                        }
                    }
                }
                file.flush()?;
                file.get_ref().sync_all()
            })?;
        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            buf_records: 0,
            redact: settings.redact,
            dropped: 0,
            hash: OutputHash::default(),
            tx,
            writer: Some(writer),
            last_flush: std::time::Instant::now(),
        })
    }

    pub fn input(&mut self, now: Timestamp, input: &Input) {
        record::encode_input(&mut self.buf, now.as_millis(), input, self.redact);
        self.recorded();
    }

    pub fn timeout(&mut self, now: Timestamp) {
        record::encode_timeout(&mut self.buf, now.as_millis());
        self.recorded();
    }

    pub fn store(&mut self, now: Timestamp, event: &StoreEvent) {
        record::encode_store(&mut self.buf, now.as_millis(), event, self.redact);
        self.recorded();
    }

    pub fn api(&mut self, now: Timestamp, call: &ApiCall) {
        record::encode_api(&mut self.buf, now.as_millis(), call, self.redact);
        self.recorded();
    }

    /// One API reply the hub produced, into the running hash.
    pub fn api_reply(&mut self, reply: &ApiReply) {
        self.hash.api_reply(reply);
    }

    pub fn unsupported(&mut self, now: Timestamp, kind: Unsupported) {
        record::encode_unsupported(&mut self.buf, now.as_millis(), kind);
        self.recorded();
    }

    /// One output the hub produced, into the running hash.
    pub fn output(&mut self, out: &Output) {
        self.hash.output(out);
    }

    fn recorded(&mut self) {
        self.buf_records += 1;
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    /// The hub is idle: hands over what is buffered if the last hand-over
    /// is [`IDLE_FLUSH`] old (so a recording lags the hub by about that
    /// much while traffic trickles, and by a buffer at most under load).
    pub fn idle(&mut self) {
        if self.buf_records > 0 && self.last_flush.elapsed() >= IDLE_FLUSH {
            self.flush();
        }
    }

    /// Hands the buffer to the writer without waiting (the buffer is full,
    /// or the hub idle); drops it, counted, when the writer is behind.
    pub fn flush(&mut self) {
        if self.buf_records == 0 {
            return;
        }
        self.last_flush = std::time::Instant::now();
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let records = std::mem::take(&mut self.buf_records);
        match self.tx.try_send(ToWriter::Chunk { bytes, records }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped += records;
            }
        }
    }

    /// At the hub's end: the rest and the trailer, then waits for the file.
    pub fn finish(&mut self) {
        self.flush();
        let finish = ToWriter::Finish {
            dropped: self.dropped,
            outputs_hash: self.hash.finish(),
        };
        // The hub is done: waiting for the writer here costs nobody.
        let _ = self.tx.send(finish);
        if let Some(writer) = self.writer.take() {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "writing the input recording failed"),
                Err(_) => tracing::warn!("the input recording's writer panicked"),
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.finish();
        }
    }
}
