//! Reading without holding a buffer while idle.
//!
//! fastwebsockets' `WebSocketRead` allocates an 8 KiB read buffer when it is
//! made and keeps it for its whole life — for an idle chat connection that
//! is most of its memory. [`FrameBounded`] wraps the socket so that
//! fastwebsockets is never handed more than the rest of the frame it is
//! reading: it parses each frame header itself (reading exactly the header's
//! bytes) and then lets at most the payload's length through. So when
//! `read_frame` returns, fastwebsockets has buffered nothing, and the reader
//! can drop the `WebSocketRead` between messages and wait for the socket to
//! become readable with no buffer at all ([`WaitReadable`]).
//!
//! The price is one or two extra small reads per inbound frame; inbound
//! traffic of a chat server is a trickle beside its fan-out.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// Longest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// A byte source the reader can wait on without a buffer.
pub trait WaitReadable {
    /// Resolves when a read would make progress (data, EOF or an error).
    fn wait_readable(&mut self) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

/// The socket after the upgrade: bytes hyper had read past the handshake,
/// then the TCP read half.
pub struct Source {
    leftover: Bytes,
    socket: OwnedReadHalf,
}

impl Source {
    /// `leftover` is copied when it is not empty: hyper hands it out as a
    /// slice of its own 8 KiB read buffer, which would otherwise stay alive
    /// for the whole connection.
    #[must_use]
    pub fn new(leftover: &Bytes, socket: OwnedReadHalf) -> Self {
        let leftover = if leftover.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(leftover)
        };
        Self { leftover, socket }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.leftover.has_remaining() {
            let n = self.leftover.len().min(buf.remaining());
            buf.put_slice(&self.leftover[..n]);
            self.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl WaitReadable for Source {
    async fn wait_readable(&mut self) -> io::Result<()> {
        if self.leftover.has_remaining() {
            return Ok(());
        }
        // `readable()` may report stale readiness until a read sees
        // WouldBlock; peeking one byte waits for real data (or EOF).
        self.socket.peek(&mut [0u8; 1]).await.map(drop)
    }
}

/// The fallback when hyper's IO cannot be taken back: no laziness.
impl<T: AsyncRead + Send> WaitReadable for tokio::io::ReadHalf<T> {
    async fn wait_readable(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where [`FrameBounded`] is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Collecting a frame header into `header[..len]`; `need` is how many
    /// bytes the header has (2 until the first two bytes are known).
    Header { need: usize },
    /// Handing out the header, then up to `body_left` payload bytes.
    Frame { served: usize, body_left: u64 },
}

/// An `AsyncRead` that yields one WebSocket frame at a time (see the module docs).
pub struct FrameBounded<R> {
    inner: R,
    header: [u8; MAX_HEADER],
    len: usize,
    phase: Phase,
}

impl<R> FrameBounded<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; MAX_HEADER],
            len: 0,
            phase: Phase::Header { need: 2 },
        }
    }

    /// True between frames: a reader dropped now loses no bytes.
    #[must_use]
    pub fn at_frame_boundary(&self) -> bool {
        match self.phase {
            Phase::Header { need } => need == 2 && self.len == 0,
            Phase::Frame { served, body_left } => served == self.len && body_left == 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// A frame header RFC 6455 forbids a client to send (section 5.1: client
/// frames are masked; 5.5: control frames are unfragmented and carry at
/// most 125 bytes). The reader closes the connection with 1002.
#[derive(Debug)]
pub struct ProtocolViolation(pub &'static str);

impl std::fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ProtocolViolation {}

fn check_client_header(b0: u8, b1: u8) -> Result<(), &'static str> {
    let control = b0 & 0x08 != 0;
    if b1 & 0x80 == 0 {
        Err("an unmasked client frame")
    } else if control && b0 & 0x80 == 0 {
        Err("a fragmented control frame")
    } else if control && b1 & 0x7f > 125 {
        Err("a control frame over 125 bytes")
    } else {
        Ok(())
    }
}

/// Header length implied by a frame's first two bytes.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Payload length from a complete header.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameBounded<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Header { need } => {
                    if this.len == need {
                        if need == 2 {
                            if let Err(why) = check_client_header(this.header[0], this.header[1]) {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    ProtocolViolation(why),
                                )));
                            }
                            let full = header_len(this.header[1]);
                            if full > 2 {
                                this.phase = Phase::Header { need: full };
                                continue;
                            }
                        }
                        this.phase = Phase::Frame {
                            served: 0,
                            body_left: payload_len(&this.header[..need]),
                        };
                        continue;
                    }
                    let mut into = ReadBuf::new(&mut this.header[this.len..need]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
                    let n = into.filled().len();
                    if n == 0 {
                        // EOF inside a header: pass on what there is, then EOF.
                        let partial = this.len;
                        this.len = 0;
                        this.phase = Phase::Header { need: 2 };
                        buf.put_slice(&this.header[..partial.min(buf.remaining())]);
                        return Poll::Ready(Ok(()));
                    }
                    this.len += n;
                }
                Phase::Frame { served, body_left } => {
                    if served < this.len {
                        let n = (this.len - served).min(buf.remaining());
                        buf.put_slice(&this.header[served..served + n]);
                        this.phase = Phase::Frame {
                            served: served + n,
                            body_left,
                        };
                        return Poll::Ready(Ok(()));
                    }
                    if body_left == 0 {
                        this.len = 0;
                        this.phase = Phase::Header { need: 2 };
                        if buf.remaining() == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let limit = usize::try_from(body_left)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    // Safe code cannot lend uninitialized memory to a read
                    // with a shorter limit, so zero the part we offer (once:
                    // ReadBuf remembers what it initialized).
                    let window = buf.initialize_unfilled_to(limit);
                    let mut limited = ReadBuf::new(window);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                    let n = limited.filled().len();
                    buf.advance(n);
                    this.phase = Phase::Frame {
                        served,
                        body_left: body_left - n as u64,
                    };
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client frame: masked, with `len` payload bytes.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload unchanged
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn yields_one_frame_at_a_time_and_no_more() {
        let a = frame(1, b"hello");
        let b = frame(2, &vec![7u8; 300]);
        let c = frame(1, &vec![b'x'; 70_000]);
        let stream: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
        let mut r = FrameBounded::new(&stream[..]);
        for expected in [&a, &b, &c] {
            assert!(r.at_frame_boundary());
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 100_000]; // bigger than any frame
            while got.len() < expected.len() {
                let n = r.read(&mut chunk).await.expect("read");
                assert!(n > 0, "stream ended early");
                got.extend_from_slice(&chunk[..n]);
                assert!(got.len() <= expected.len(), "read past the frame's end");
            }
            assert_eq!(&got, expected);
        }
        assert!(r.at_frame_boundary());
        assert_eq!(r.read(&mut [0u8; 16]).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn passes_a_truncated_header_on_then_eof() {
        let stream = [0x81u8, 0xfe, 0x01];
        let mut r = FrameBounded::new(&stream[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, stream);
    }

    #[tokio::test]
    async fn works_through_fastwebsockets() {
        let mut stream = frame(1, b"one");
        stream.extend(frame(9, b"ping"));
        stream.extend(frame(1, b"two"));
        let mut r = FrameBounded::new(&stream[..]);
        let mut pongs = 0;
        for expected in [&b"one"[..], b"two"] {
            // A fresh WebSocketRead per message, as the reader does.
            let (mut ws, _) = fastwebsockets::after_handshake_split(
                &mut r,
                tokio::io::sink(),
                fastwebsockets::Role::Server,
            );
            let f = ws
                .read_frame(&mut |_f: fastwebsockets::Frame<'_>| {
                    pongs += 1;
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .await
                .expect("frame");
            assert_eq!(&f.payload[..], expected);
            drop(ws);
            assert!(r.at_frame_boundary());
        }
        assert_eq!(pongs, 1);
    }
}

#[cfg(test)]
mod violations {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn first_error(bytes: &[u8]) -> Option<String> {
        let mut r = FrameBounded::new(bytes);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.err().map(|e| e.to_string())
    }

    #[tokio::test]
    async fn frames_a_client_must_not_send_are_refused() {
        // Unmasked text frame "hi".
        assert_eq!(
            first_error(&[0x81, 0x02, b'h', b'i']).await.as_deref(),
            Some("an unmasked client frame")
        );
        // A masked ping of 126 bytes (extended length).
        let mut ping = vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0];
        ping.extend(vec![0u8; 126]);
        assert_eq!(
            first_error(&ping).await.as_deref(),
            Some("a control frame over 125 bytes")
        );
        // A close frame without FIN.
        assert_eq!(
            first_error(&[0x08, 0x80, 0, 0, 0, 0]).await.as_deref(),
            Some("a fragmented control frame")
        );
        // A masked 125-byte pong is fine.
        let mut pong = vec![0x8a, 0x80 | 125, 0, 0, 0, 0];
        pong.extend(vec![0u8; 125]);
        assert_eq!(first_error(&pong).await, None);
    }
}
