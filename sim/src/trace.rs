//! The trace hash: a fingerprint of every hub call and every output.
//!
//! Two runs of one seed must produce the same hash; that proves the run is a
//! function of the seed (no clock, no hash-map iteration order, no thread
//! timing leaked in). FNV-1a 64 over a canonical, length-prefixed encoding is
//! written out here so the value never depends on std's hasher choices.

use bytes::Bytes;
use hubbub_core::{CloseReason, Frame, Input, MessageKind, Output, Route, Timestamp};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64-bit.
#[derive(Clone, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn write_u8(&mut self, v: u8) {
        self.write(&[v]);
    }

    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    /// Length-prefixed, so `("ab","c")` and `("a","bc")` differ.
    pub fn write_field(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    #[must_use]
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a 64 of `bytes`.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::default();
    h.write(bytes);
    h.finish()
}

/// The running hash of one simulation's hub calls and outputs.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    hash: Fnv64,
    records: u64,
    /// The last frame payload hashed and its FNV: a broadcast's outputs come
    /// one after another with one shared buffer, hashed once.
    last_payload: Option<(Bytes, u64)>,
}

impl Trace {
    /// A `handle_input(now, input)` call.
    pub fn input(&mut self, now: Timestamp, input: &Input) {
        self.records += 1;
        let h = &mut self.hash;
        h.write_u8(b'I');
        h.write_u64(now.as_millis());
        match input {
            Input::Open { conn, route } => {
                h.write_u8(0);
                h.write_u64(conn.0);
                match route {
                    Route::Relay => h.write_u8(0),
                    Route::Room { room, username, .. } => {
                        h.write_u8(1);
                        h.write_field(room.as_str().as_bytes());
                        h.write_field(username.as_str().as_bytes());
                    }
                    Route::Centrifuge => h.write_u8(2),
                }
            }
            Input::Message { conn, frame } => {
                h.write_u8(1);
                h.write_u64(conn.0);
                write_frame(h, &mut self.last_payload, frame);
            }
            Input::Pong { conn } => {
                h.write_u8(2);
                h.write_u64(conn.0);
            }
            Input::QueueFull { conn } => {
                h.write_u8(3);
                h.write_u64(conn.0);
            }
            Input::Disconnect { conn, reason } => {
                h.write_u8(4);
                h.write_u64(conn.0);
                write_reason(h, *reason);
            }
            Input::Shutdown => h.write_u8(5),
        }
    }

    /// A `handle_timeout(now)` call.
    pub fn timeout(&mut self, now: Timestamp) {
        self.records += 1;
        self.hash.write_u8(b'T');
        self.hash.write_u64(now.as_millis());
    }

    /// One drained output.
    pub fn output(&mut self, out: &Output) {
        self.records += 1;
        let h = &mut self.hash;
        h.write_u8(b'O');
        match out {
            Output::Send {
                conn,
                frame,
                presence,
            } => {
                h.write_u8(0);
                h.write_u64(conn.0);
                write_frame(h, &mut self.last_payload, frame);
                match presence {
                    None => h.write_u8(0),
                    Some(room) => {
                        h.write_u8(1);
                        h.write_u64(room.0);
                    }
                }
            }
            Output::Ping { conn } => {
                h.write_u8(1);
                h.write_u64(conn.0);
            }
            Output::Close { conn, reason } => {
                h.write_u8(2);
                h.write_u64(conn.0);
                write_reason(h, *reason);
            }
        }
    }

    #[must_use]
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// How many calls and outputs were hashed.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// A frame as its kind, length and the FNV of its payload (the payload's
/// hash is kept for the next frame, which is often the same buffer).
fn write_frame(h: &mut Fnv64, last: &mut Option<(Bytes, u64)>, frame: &Frame) {
    h.write_u8(match frame.kind {
        MessageKind::Text => 0,
        MessageKind::Binary => 1,
    });
    let p = &frame.payload;
    let payload_hash = match last {
        // Holding the buffer, an equal address is the same bytes.
        Some((b, hash)) if b.as_ptr() == p.as_ptr() && b.len() == p.len() => *hash,
        _ => {
            let hash = fnv1a(p);
            *last = Some((p.clone(), hash));
            hash
        }
    };
    h.write_u64(p.len() as u64);
    h.write_u64(payload_hash);
}

fn write_reason(h: &mut Fnv64, reason: CloseReason) {
    h.write_u64(u64::from(reason.code().0));
    h.write_field(reason.name().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
