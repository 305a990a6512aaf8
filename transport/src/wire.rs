//! Server-to-client WebSocket frames, encoded by hand.
//!
//! Why not fastwebsockets' writer: it writes one frame per call (one
//! syscall per message), while a connection's writer wants to put a whole
//! batch of queued messages on the wire at once. Server frames are never
//! masked and never fragmented, so the encoding is a header of 2, 4 or 10
//! bytes in front of the payload (RFC 6455 §5.2).
//!
//! A [`Batch`] gathers frames: headers and small payloads are copied into one
//! contiguous buffer, large payloads stay shared `Bytes` (a broadcast is never
//! copied per recipient). [`Batch::slices`] turns it into `IoSlice`s for one
//! vectored write.

use std::io::IoSlice;

use bytes::Bytes;
use hubbub_core::{CloseCode, MessageKind};

/// Payloads up to this size are copied next to their header: for chat-sized
/// messages a batch becomes a single contiguous buffer.
const INLINE_PAYLOAD_MAX: usize = 1024;

/// A WebSocket opcode the server sends (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl From<MessageKind> for OpCode {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text => Self::Text,
            MessageKind::Binary => Self::Binary,
        }
    }
}

/// Appends the header of a final, unmasked frame with `len` payload bytes.
pub fn put_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        // Fits in the 7-bit length field.
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The payload of a close frame: the code, then the reason, cut to the
/// 123 bytes a control frame leaves for it (on a char boundary).
#[must_use]
pub fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

enum Segment {
    /// `buf[start..end]`.
    Inline {
        start: usize,
        end: usize,
    },
    Shared(Bytes),
}

/// Frames to write in one go. Reused from batch to batch (call [`Batch::clear`]).
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    segments: Vec<Segment>,
    frames: usize,
}

impl Batch {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one complete frame.
    pub fn push(&mut self, opcode: OpCode, payload: &Bytes) {
        let start = self.buf.len();
        put_header(&mut self.buf, opcode, payload.len());
        if payload.len() <= INLINE_PAYLOAD_MAX {
            self.buf.extend_from_slice(payload);
            self.extend_inline(start);
        } else {
            self.extend_inline(start);
            self.segments.push(Segment::Shared(payload.clone()));
        }
        self.frames += 1;
    }

    /// Adds one text frame whose payload is `parts` joined by `\n`, without
    /// copying large parts.
    pub fn push_joined(&mut self, opcode: OpCode, parts: &[&Bytes]) {
        if let [only] = parts {
            self.push(opcode, only);
            return;
        }
        let len = parts.iter().map(|p| p.len()).sum::<usize>() + parts.len().saturating_sub(1);
        let start = self.buf.len();
        put_header(&mut self.buf, opcode, len);
        self.extend_inline(start);
        for (i, part) in parts.iter().enumerate() {
            let start = self.buf.len();
            if i > 0 {
                self.buf.push(b'\n');
            }
            if part.len() <= INLINE_PAYLOAD_MAX {
                self.buf.extend_from_slice(part);
                self.extend_inline(start);
            } else {
                self.extend_inline(start);
                self.segments.push(Segment::Shared((*part).clone()));
            }
        }
        self.frames += 1;
    }

    /// Adds a frame whose payload is a short slice (control frames).
    pub fn push_small(&mut self, opcode: OpCode, payload: &[u8]) {
        let start = self.buf.len();
        put_header(&mut self.buf, opcode, payload.len());
        self.buf.extend_from_slice(payload);
        self.extend_inline(start);
        self.frames += 1;
    }

    /// Records `buf[start..]` as inline bytes, merging with the previous
    /// inline segment when they touch.
    fn extend_inline(&mut self, start: usize) {
        let end = self.buf.len();
        if let Some(Segment::Inline { end: prev_end, .. }) = self.segments.last_mut() {
            if *prev_end == start {
                *prev_end = end;
                return;
            }
        }
        self.segments.push(Segment::Inline { start, end });
    }

    /// Frames added since the last clear.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.frames
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Total bytes to write.
    #[must_use]
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Inline { start, end } => end - start,
                Segment::Shared(b) => b.len(),
            })
            .sum()
    }

    /// The batch as slices for a vectored write, in order.
    #[must_use]
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Inline { start, end } => IoSlice::new(&self.buf[*start..*end]),
                Segment::Shared(b) => IoSlice::new(b),
            })
            .collect()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.segments.clear();
        self.frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: OpCode, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, opcode, len);
        out
    }

    #[test]
    fn header_lengths() {
        assert_eq!(header(OpCode::Text, 0), [0x81, 0]);
        assert_eq!(header(OpCode::Binary, 125), [0x82, 125]);
        assert_eq!(header(OpCode::Text, 126), [0x81, 126, 0, 126]);
        assert_eq!(header(OpCode::Text, 65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(
            header(OpCode::Binary, 65_536),
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(header(OpCode::Close, 2), [0x88, 2]);
        assert_eq!(header(OpCode::Ping, 0), [0x89, 0]);
        assert_eq!(header(OpCode::Pong, 3), [0x8a, 3]);
    }

    #[test]
    fn close_payload_has_code_and_bounded_reason() {
        assert_eq!(
            close_payload(CloseCode::GOING_AWAY, "bye"),
            [0x03, 0xe9, b'b', b'y', b'e']
        );
        let long = "é".repeat(100); // 200 bytes
        let p = close_payload(CloseCode::NORMAL, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    #[test]
    fn batch_merges_small_frames_and_shares_large_ones() {
        let mut b = Batch::new();
        b.push(OpCode::Text, &Bytes::from_static(b"hi"));
        b.push_small(OpCode::Ping, b"");
        let big = Bytes::from(vec![7u8; 5000]);
        b.push(OpCode::Binary, &big);
        b.push(OpCode::Text, &Bytes::from_static(b"yo"));
        assert_eq!(b.frames(), 4);
        let slices = b.slices();
        // [hi + ping + big's header] [big payload] [yo]
        assert_eq!(slices.len(), 3);
        let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(flat.len(), b.len());
        assert_eq!(&flat[..6], &[0x81, 2, b'h', b'i', 0x89, 0]);
        assert_eq!(&flat[6..10], &[0x82, 126, 0x13, 0x88]);
        assert_eq!(&flat[flat.len() - 4..], &[0x81, 2, b'y', b'o']);
        b.clear();
        assert!(b.is_empty());
        let big = Bytes::from(vec![b'x'; 2000]);
        b.push_joined(
            OpCode::Text,
            &[
                &Bytes::from_static(b"{}"),
                &big,
                &Bytes::from_static(b"{\"a\":1}"),
            ],
        );
        let flat: Vec<u8> = b.slices().iter().flat_map(|s| s.iter().copied()).collect();
        let len = 2 + 1 + 2000 + 1 + 7;
        assert_eq!(
            &flat[..4],
            &[0x81, 126, (len >> 8) as u8, (len & 0xff) as u8]
        );
        assert_eq!(&flat[4..7], b"{}\n");
        assert_eq!(&flat[flat.len() - 8..], b"\n{\"a\":1}");
        assert_eq!(flat.len(), 4 + len);
        b.clear();
        assert_eq!(b.len(), 0);
    }
}
