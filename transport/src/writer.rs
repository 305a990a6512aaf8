//! A connection's writer: turns what the [`Outbox`] holds into bytes on the socket.
//!
//! Each wake-up takes the whole pending batch, encodes it ([`crate::wire`])
//! and writes it with vectored writes, so many queued messages cost one
//! syscall. Every batch must be written within the write timeout; a socket
//! that stalls longer ends the connection (`WriteTimeout`).
//!
//! Closing: the hub's close order says why. For a server shutdown or a
//! client's protocol violation (1001, 1009, 1007, 1003, 1002) what is queued
//! is flushed first, so the client sees everything sent before the close.
//! For an evicted slow consumer (1008) and the other heartbeat/write reasons
//! the queue is dropped: the client cannot take it anyway. When the client
//! closed, the close frame fastwebsockets obliges us to echo is written
//! instead of ours; either way exactly one close frame is written. Then the
//! write half is shut down.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use hubbub_core::{centrifuge, CloseReason, Codec, ConnId, Frame, Input};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::hub_task::Event;
use crate::outbox::{Outbox, Work};
use crate::wire::{self, Batch, OpCode};

/// The most slices one `writev` takes on Linux (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Centrifugo messages waiting together are joined into one frame (with
/// `\n` between them) up to this many payload bytes.
pub const MAX_JOINED_FRAME: usize = 64 * 1024;

/// How the writer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// A close frame was written for the hub's close order with this reason.
    Closed(CloseReason),
    /// The writer gave up (stall or socket error) and told the hub this reason.
    Failed(CloseReason),
}

impl WriterEnd {
    #[must_use]
    pub fn reason(self) -> CloseReason {
        match self {
            Self::Closed(r) | Self::Failed(r) => r,
        }
    }
}

/// Whether queued messages are still written before the close frame: the
/// core's rule ([`hubbub_core::outbox::flushes_on_close`]), which the
/// simulation applies too.
#[must_use]
pub fn flushes_queue(reason: CloseReason) -> bool {
    hubbub_core::outbox::flushes_on_close(reason)
}

/// Writes until the connection is closed or the socket fails. With
/// `coalesce`, a writer woken for new work waits that long before taking
/// it, so what arrives meanwhile leaves in the same write (fewer syscalls,
/// that much more latency).
// Not an `async fn` on purpose: its arguments would be stored twice.
#[allow(clippy::manual_async_fn)]
pub fn run<'a, W>(
    mut sink: W,
    conn: ConnId,
    outbox: &'a Outbox,
    write_timeout: Duration,
    coalesce: Option<&'a Duration>,
    hub: &'a mpsc::Sender<Event>,
) -> impl std::future::Future<Output = WriterEnd> + 'a
where
    W: AsyncWrite + Unpin + 'a,
{
    // An `async move` block, not an `async fn`: see `reader::run`.
    async move {
        let mut work = Work::default();
        let mut batch = Batch::new();
        let end = loop {
            if !outbox.take(&mut work) {
                // Going idle: hand the buffers back rather than keep them for
                // a connection that may stay quiet for hours (idle memory is
                // the cost of a chat server; a malloc per burst is not).
                work.data.shrink_to_fit();
                work.pongs.shrink_to_fit();
                batch = Batch::new();
                outbox.wait().await;
                if let Some(delay) = coalesce {
                    // Boxed: an idle writer's state stays small.
                    Box::pin(tokio::time::sleep(*delay)).await;
                }
                continue;
            }
            batch.clear();
            let close = encode(&work, outbox.codec(), &mut batch);
            // In a block of its own, so the pinned write is gone before the
            // `send_to_hub` below: a local alive across two awaits gets a
            // slot of its own in the task's state, idle or not.
            let failure = {
                let write = std::pin::pin!(async {
                    write_batch(&mut sink, &batch).await?;
                    outbox.wrote(batch.len());
                    if close.is_some() {
                        sink.shutdown().await?;
                    }
                    io::Result::Ok(())
                });
                within_write_timeout(write, write_timeout).await
            };
            match (failure, close) {
                (None, None) => {}
                (None, Some(reason)) => break WriterEnd::Closed(reason),
                (Some(failure), close) => {
                    if close.is_none() {
                        // The hub still counts the connection as open.
                        let disconnect = Event::Input(Input::Disconnect {
                            conn,
                            reason: failure,
                        });
                        let _ = crate::reader::send_to_hub(hub, disconnect).await;
                    }
                    break WriterEnd::Failed(close.unwrap_or(failure));
                }
            }
        };
        outbox.finish();
        end
    }
}

/// Runs `write` under the write deadline: `None` when it succeeded,
/// otherwise why the connection ends. Unlike `tokio::time::timeout`, the
/// timer is made (boxed) only when the write has to wait: most writes are
/// done at their first poll, so they neither read the clock nor touch the
/// timer wheel, and the writer's task state, kept for the connection's
/// whole life, does not carry an inline `Sleep` (112 bytes).
fn within_write_timeout<'a, F>(
    mut write: Pin<&'a mut F>,
    limit: Duration,
) -> impl Future<Output = Option<CloseReason>> + 'a
where
    F: Future<Output = io::Result<()>>,
{
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(written) = write.as_mut().poll(cx) {
            // Done, even if the deadline passed meanwhile (as `timeout`).
            return Poll::Ready(written.err().map(|_| CloseReason::PeerClosed));
        }
        let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer
            .as_mut()
            .poll(cx)
            .map(|()| Some(CloseReason::WriteTimeout))
    })
}

/// Encodes one batch: control frames first (they are small and
/// time-sensitive), then data frames, then the close frame if ordered.
/// Returns the close reason when the batch ends the connection.
fn encode(work: &Work, codec: Codec, batch: &mut Batch) -> Option<CloseReason> {
    for pong in &work.pongs {
        batch.push_small(OpCode::Pong, pong);
    }
    if work.ping {
        match codec {
            // The Centrifugo protocol pings in-band, in a frame of its own.
            Codec::Centrifuge => batch.push_small(OpCode::Text, centrifuge::PING),
            Codec::Relay | Codec::SeedJson => batch.push_small(OpCode::Ping, &work.ping_payload),
        }
    }
    let flush = work.close.is_none_or(flushes_queue);
    if flush {
        let frames = work.data.iter().flatten().map(|q| &q.frame);
        if codec == Codec::Centrifuge {
            push_joined(batch, frames);
        } else {
            for frame in frames {
                batch.push(frame.kind.into(), &frame.payload);
            }
        }
    }
    let reason = work.close?;
    match &work.peer_close {
        Some(echo) => batch.push_small(OpCode::Close, echo),
        None => batch.push_small(
            OpCode::Close,
            &wire::close_payload(reason.code_for(codec), reason.text_for(codec)),
        ),
    }
    Some(reason)
}

/// Centrifugo: consecutive messages share a frame, newline-joined, up to
/// [`MAX_JOINED_FRAME`] bytes; the SDKs dispatch a frame's messages in order.
fn push_joined<'f>(batch: &mut Batch, frames: impl Iterator<Item = &'f Frame>) {
    let mut run: Vec<&bytes::Bytes> = Vec::new();
    let mut run_bytes = 0;
    for frame in frames {
        let len = frame.payload.len();
        if !run.is_empty() && run_bytes + 1 + len > MAX_JOINED_FRAME {
            batch.push_joined(OpCode::Text, &run);
            run.clear();
            run_bytes = 0;
        }
        run_bytes += len + usize::from(!run.is_empty());
        run.push(&frame.payload);
    }
    if !run.is_empty() {
        batch.push_joined(OpCode::Text, &run);
    }
}

/// Writes every byte of `batch`, in as few `writev` calls as the socket allows.
async fn write_batch<W>(sink: &mut W, batch: &Batch) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut slices = batch.slices();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = sink
            .write_vectored(&rest[..rest.len().min(MAX_IOVECS)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hubbub_core::Frame;

    use super::*;

    fn close_frame_payload(reason: CloseReason) -> Bytes {
        Bytes::from(wire::close_payload(reason.code(), reason.text()))
    }

    /// A sink that accepts at most `chunk` bytes per call and records all.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.chunk;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_still_write_everything() {
        let mut batch = Batch::new();
        let big = Bytes::from(vec![b'x'; 3000]);
        for _ in 0..5 {
            batch.push(OpCode::Binary, &big);
            batch.push(OpCode::Text, &Bytes::from_static(b"small"));
        }
        let mut sink = Trickle {
            out: Vec::new(),
            chunk: 777,
            calls: 0,
        };
        write_batch(&mut sink, &batch).await.expect("written");
        assert_eq!(sink.out.len(), batch.len());
        let flat: Vec<u8> = batch.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(sink.out, flat);
    }

    async fn run_to_end(outbox: Arc<Outbox>) -> (Vec<u8>, WriterEnd) {
        let (tx, _rx) = mpsc::channel(4);
        let mut sink = Trickle {
            out: Vec::new(),
            chunk: usize::MAX,
            calls: 0,
        };
        let end = run(
            &mut sink,
            ConnId(1),
            &outbox,
            Duration::from_secs(5),
            None,
            &tx,
        )
        .await;
        (sink.out, end)
    }

    #[tokio::test]
    async fn shutdown_flushes_then_closes_once() {
        let outbox = Arc::new(Outbox::new(8, Arc::default()));
        outbox.push(Frame::text("a"), None);
        outbox.push(Frame::binary(&b"b"[..]), None);
        outbox.close(CloseReason::ServerShutdown);
        let (out, end) = run_to_end(outbox).await;
        assert_eq!(end, WriterEnd::Closed(CloseReason::ServerShutdown));
        let mut want = vec![0x81, 1, b'a', 0x82, 1, b'b', 0x88];
        let close = close_frame_payload(CloseReason::ServerShutdown);
        want.push(u8::try_from(close.len()).expect("short"));
        want.extend_from_slice(&close);
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn slow_consumer_skips_the_queue() {
        let outbox = Arc::new(Outbox::new(8, Arc::default()));
        outbox.push(Frame::text("a"), None);
        outbox.close(CloseReason::SlowConsumer);
        let (out, _) = run_to_end(outbox).await;
        assert_eq!(out[0], 0x88);
        assert_eq!(&out[2..4], &1008u16.to_be_bytes());
    }

    #[tokio::test]
    async fn peer_close_echo_replaces_our_close() {
        let outbox = Arc::new(Outbox::new(8, Arc::default()));
        outbox.push(Frame::text("a"), None);
        outbox.peer_close(Bytes::from_static(&[0x03, 0xe8, b'o', b'k']));
        outbox.close(CloseReason::PeerClosed);
        let (out, end) = run_to_end(outbox).await;
        assert_eq!(end, WriterEnd::Closed(CloseReason::PeerClosed));
        assert_eq!(out, [0x88, 4, 0x03, 0xe8, b'o', b'k']);
    }
}
