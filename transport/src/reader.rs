//! A connection's reader: frames from the socket become hub inputs.
//!
//! fastwebsockets parses frames, unmasks them, checks single-frame text for
//! UTF-8, enforces the per-frame size limit and obliges us to send pongs
//! and the close echo (handed to the [`Outbox`]). What it does not do, done
//! here: reassemble fragmented messages with the size limit applied to the
//! running total (0.10 does not cap reassembled messages), validate UTF-8
//! across fragments as they arrive (fail fast, not at the end), and reject
//! continuation frames without a start or a new message inside a fragmented
//! one.
//!
//! `read_frame` is not cancel-safe, so it is never raced in a `select!`:
//! the reader loops until the client closes, the socket ends, or a frame is
//! refused. After refusing a frame it keeps draining the socket (discarding)
//! so that closing our end does not reset the connection before the client
//! has read our close frame; the connection task bounds that with a linger.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{OpCode, Payload, Role, WebSocketError};
use hubbub_core::{CloseReason, ConnId, Frame, Input, MessageKind};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::bounded::{FrameBounded, WaitReadable};
use crate::hub_task::Event;

/// How long a reader waits before looking at the bus's load again.
const CONGESTION_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
use crate::outbox::Outbox;

/// Reads until the connection ends, then tells the hub why.
///
/// An `async move` block rather than an `async fn`, with the stream
/// wrapped before it: an `async fn` keeps each argument and the local it
/// is moved into side by side for the connection's whole life, and this
/// future is allocated once per connection (see ARCHITECTURE.md, memory).
pub fn run<R>(
    stream: R,
    conn: ConnId,
    max_message_bytes: usize,
    outbox: Arc<Outbox>,
    hub: mpsc::Sender<Event>,
) -> impl std::future::Future<Output = ()>
where
    R: AsyncRead + WaitReadable + Unpin,
{
    let mut stream = FrameBounded::new(stream);
    async move {
        let Some(reason) = read_messages(&mut stream, conn, max_message_bytes, &outbox, &hub).await
        else {
            return; // the hub is gone
        };
        let _ = send_to_hub(&hub, Event::Input(Input::Disconnect { conn, reason })).await;
        if reason != CloseReason::PeerClosed {
            drain(&mut stream).await;
        }
    }
}

/// A fragmented message being reassembled.
struct Partial {
    kind: MessageKind,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

impl Partial {
    /// Checks the UTF-8 of text received so far; an incomplete character at
    /// the end is fine until the final fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), CloseReason> {
        if self.kind != MessageKind::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => {
                self.checked = self.buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(CloseReason::InvalidUtf8),
        }
    }
}

/// The frame loop. Returns why the connection ended, or `None` when the hub
/// is gone and nobody needs to know.
async fn read_messages<R>(
    stream: &mut FrameBounded<R>,
    conn: ConnId,
    max_message_bytes: usize,
    outbox: &Outbox,
    hub: &mpsc::Sender<Event>,
) -> Option<CloseReason>
where
    R: AsyncRead + WaitReadable + Unpin,
{
    let mut obligated = |frame: fastwebsockets::Frame<'_>| {
        match frame.opcode {
            OpCode::Pong => outbox.pong(Bytes::copy_from_slice(&frame.payload)),
            OpCode::Close => outbox.peer_close(Bytes::copy_from_slice(&frame.payload)),
            _ => {}
        }
        std::future::ready(Ok::<(), Infallible>(()))
    };
    let mut partial: Option<Partial> = None;
    loop {
        // The shards are behind on their messages to each other: leave the
        // client's input in its socket (TCP pushes back) until they catch up.
        while outbox.bus_congested() {
            // Boxed: an idle reader's state stays small.
            Box::pin(tokio::time::sleep(CONGESTION_WAIT)).await;
        }
        // Idle: wait for the next frame holding no read buffer.
        if stream.get_mut().wait_readable().await.is_err() {
            return Some(CloseReason::PeerClosed);
        }
        // A WebSocketRead per frame: `FrameBounded` hands it exactly one
        // frame, so dropping it afterwards loses nothing and frees its
        // 8 KiB buffer. Only the read half is used; our frames go out
        // through the outbox.
        let (mut ws, _) =
            fastwebsockets::after_handshake_split(&mut *stream, tokio::io::sink(), Role::Server);
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
        // fastwebsockets refuses frames with `len >= max`.
        ws.set_max_message_size(max_message_bytes.saturating_add(1));
        let frame = match ws.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => {
                debug!(conn = conn.0, error = %e, "read ended");
                return Some(reason_for(&e));
            }
        };
        let fin = frame.fin;
        let message = match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                if partial.is_some() {
                    debug!(conn = conn.0, "new message inside a fragmented one");
                    return Some(CloseReason::ProtocolError);
                }
                let kind = if frame.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                let payload = into_bytes(frame.payload);
                if fin {
                    Some(Frame { kind, payload })
                } else {
                    let mut p = Partial {
                        kind,
                        buf: BytesMut::from(payload),
                        checked: 0,
                    };
                    if let Err(reason) = p.check_utf8(false) {
                        return Some(reason);
                    }
                    partial = Some(p);
                    None
                }
            }
            OpCode::Continuation => {
                let Some(p) = partial.as_mut() else {
                    debug!(conn = conn.0, "continuation without a message");
                    return Some(CloseReason::ProtocolError);
                };
                if p.buf.len().saturating_add(frame.payload.len()) > max_message_bytes {
                    return Some(CloseReason::MessageTooBig);
                }
                p.buf.extend_from_slice(&frame.payload);
                if let Err(reason) = p.check_utf8(fin) {
                    return Some(reason);
                }
                match partial.take() {
                    Some(p) if fin => Some(Frame {
                        kind: p.kind,
                        payload: p.buf.freeze(),
                    }),
                    unfinished => {
                        partial = unfinished;
                        None
                    }
                }
            }
            // The echo was handed to the outbox by `obligated`.
            OpCode::Close => return Some(CloseReason::PeerClosed),
            // Only a pong that answers our ping says the client is alive
            // (unsolicited ones are allowed, and ignored).
            OpCode::Pong if outbox.answers_ping(&frame.payload) => {
                if send_to_hub(hub, Event::Input(Input::Pong { conn }))
                    .await
                    .is_err()
                {
                    return None;
                }
                None
            }
            OpCode::Pong => None,
            // Answered by fastwebsockets (auto_pong); never returned.
            OpCode::Ping => None,
        };
        if let Some(frame) = message {
            if send_to_hub(hub, Event::Input(Input::Message { conn, frame }))
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// Sends `event` to the hub task, waiting only while its channel is full.
///
/// The event is offered at once, when this is called; the future only
/// waits for room when the channel is full, and that wait is boxed. So
/// what every reader and writer task keeps in its state for this call is
/// a few words, not the event and an inline `Sender::send` future (a few
/// hundred bytes per connection, idle or not).
///
/// # Errors
/// The hub task is gone (the server is stopping).
pub fn send_to_hub(
    hub: &mpsc::Sender<Event>,
    event: Event,
) -> impl std::future::Future<Output = Result<(), HubGone>> + '_ {
    let waiting = match hub.try_send(event) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(HubGone),
        Err(mpsc::error::TrySendError::Full(event)) => Ok(Some(Box::pin(hub.send(event)))),
    };
    async move {
        match waiting {
            Ok(None) => Ok(()),
            Ok(Some(send)) => send.await.map_err(|_| HubGone),
            Err(gone) => Err(gone),
        }
    }
}

/// The hub task has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubGone;

fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

/// The close reason for a frame fastwebsockets refused.
fn reason_for(e: &WebSocketError) -> CloseReason {
    match e {
        WebSocketError::FrameTooLarge => CloseReason::MessageTooBig,
        WebSocketError::InvalidUTF8 => CloseReason::InvalidUtf8,
        WebSocketError::IoError(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<crate::bounded::ProtocolViolation>()) =>
        {
            CloseReason::ProtocolError
        }
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => CloseReason::PeerClosed,
        _ => CloseReason::ProtocolError,
    }
}

/// Reads and discards until the client closes its end (or the task is
/// aborted after the linger).
async fn drain<R>(stream: &mut R)
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(bytes: &[u8]) -> Partial {
        Partial {
            kind: MessageKind::Text,
            buf: BytesMut::from(bytes),
            checked: 0,
        }
    }

    #[test]
    fn utf8_split_across_fragments_is_fine() {
        let e_acute = "é".as_bytes();
        let mut p = partial(&e_acute[..1]);
        assert_eq!(p.check_utf8(false), Ok(()));
        p.buf.extend_from_slice(&e_acute[1..]);
        assert_eq!(p.check_utf8(true), Ok(()));
        assert_eq!(p.checked, 2);
    }

    #[test]
    fn invalid_utf8_fails_before_the_end() {
        let mut p = partial(b"ok\xff");
        assert_eq!(p.check_utf8(false), Err(CloseReason::InvalidUtf8));
        // An unfinished character in the final fragment is invalid.
        let mut p = partial(&"é".as_bytes()[..1]);
        assert_eq!(p.check_utf8(true), Err(CloseReason::InvalidUtf8));
        // Binary is never checked.
        let mut p = partial(b"\xff");
        p.kind = MessageKind::Binary;
        assert_eq!(p.check_utf8(true), Ok(()));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            reason_for(&WebSocketError::FrameTooLarge),
            CloseReason::MessageTooBig
        );
        assert_eq!(
            reason_for(&WebSocketError::InvalidUTF8),
            CloseReason::InvalidUtf8
        );
        assert_eq!(
            reason_for(&WebSocketError::UnexpectedEOF),
            CloseReason::PeerClosed
        );
        assert_eq!(
            reason_for(&WebSocketError::ReservedBitsNotZero),
            CloseReason::ProtocolError
        );
        assert_eq!(
            reason_for(&WebSocketError::InvalidCloseCode),
            CloseReason::ProtocolError
        );
    }
}
