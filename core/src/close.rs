//! Why the hub ends a connection, and the WebSocket close code that says so.

use std::fmt;

use crate::codec::Codec;

/// A WebSocket close code (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const INTERNAL_ERROR: Self = Self(1011);
    pub const TRY_AGAIN_LATER: Self = Self(1013);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Every way a connection can end. One variant per cause, so drivers, tests
/// and metrics can match on it; [`CloseReason::code`] gives the wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseReason {
    /// The peer closed, or its socket ended (EOF, reset, read error).
    PeerClosed,
    /// A message longer than `Config::max_message_bytes`.
    MessageTooBig,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A binary message on a connection whose protocol is JSON text.
    BinaryNotAccepted,
    /// A frame the WebSocket layer rejected (bad opcode, reserved bits, …).
    ProtocolError,
    /// No pong within `Config::pong_timeout`.
    HeartbeatTimeout,
    /// The connection's outbound queue was full: it reads slower than the room talks.
    SlowConsumer,
    /// A write stalled past the transport's write deadline.
    WriteTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// More connections than `Config::max_connections`.
    ServerFull,
    /// Centrifugo protocol: a malformed frame, a command before `connect`, a
    /// second `connect`, an id-less command that is not `send`, a pong with
    /// no ping outstanding (3501).
    BadRequest,
    /// Centrifugo protocol: no `connect` within `Config::connect_timeout` (3502).
    Stale,
    /// Centrifugo protocol: `send` with no handler for it (3508).
    NotAvailable,
    /// A seed client's room could not be opened: its stream's store failed
    /// (1011; the client may reconnect). Centrifugo clients get error 100
    /// for the subscribe instead, and stay connected.
    StoreUnavailable,
    /// The server API's `disconnect` ended the user's connections (1008;
    /// Centrifugo clients get 3503, "force disconnect": no reconnect).
    ForceDisconnect,
    /// Centrifugo protocol: a token that is not valid (bad signature,
    /// algorithm or claims), or a refresh or subscription token for another
    /// user, channel or client (3500, terminal: the SDK stops).
    InvalidToken,
    /// Centrifugo protocol: the connection's token expired and no `refresh`
    /// came within `Config::expired_close_delay`, or a refresh brought an
    /// expired token (3005: the SDK gets a new token and reconnects).
    ConnectionExpired,
    /// The connection kept sending over `Config::command_rate` (Centrifugo
    /// 3013, "too many requests", the SDK reconnects later; seed 1008).
    TooManyRequests,
    /// The user already holds `Config::user_connection_limit` connections
    /// (Centrifugo 3504, terminal; seed 1008).
    ConnectionLimit,
}

impl CloseReason {
    /// All reasons, for metrics tables.
    pub const ALL: [Self; 19] = [
        Self::PeerClosed,
        Self::MessageTooBig,
        Self::InvalidUtf8,
        Self::BinaryNotAccepted,
        Self::ProtocolError,
        Self::HeartbeatTimeout,
        Self::SlowConsumer,
        Self::WriteTimeout,
        Self::ServerShutdown,
        Self::ServerFull,
        Self::BadRequest,
        Self::Stale,
        Self::NotAvailable,
        Self::StoreUnavailable,
        Self::ForceDisconnect,
        Self::InvalidToken,
        Self::ConnectionExpired,
        Self::TooManyRequests,
        Self::ConnectionLimit,
    ];

    #[must_use]
    pub const fn code(self) -> CloseCode {
        match self {
            Self::PeerClosed => CloseCode::NORMAL,
            Self::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::BinaryNotAccepted => CloseCode::UNSUPPORTED_DATA,
            Self::ProtocolError => CloseCode::PROTOCOL_ERROR,
            Self::HeartbeatTimeout | Self::SlowConsumer | Self::WriteTimeout => {
                CloseCode::POLICY_VIOLATION
            }
            Self::ServerShutdown => CloseCode::GOING_AWAY,
            Self::ServerFull => CloseCode::TRY_AGAIN_LATER,
            Self::BadRequest => CloseCode(3501),
            Self::Stale => CloseCode(3502),
            Self::NotAvailable => CloseCode(3508),
            Self::StoreUnavailable => CloseCode::INTERNAL_ERROR,
            Self::ForceDisconnect => CloseCode::POLICY_VIOLATION,
            Self::InvalidToken => CloseCode(3500),
            Self::ConnectionExpired => CloseCode(3005),
            Self::TooManyRequests | Self::ConnectionLimit => CloseCode::POLICY_VIOLATION,
        }
    }

    /// The close code on a connection speaking `codec`: Centrifugo clients
    /// get Centrifugo's codes, whose ranges tell the SDKs whether to
    /// reconnect (3000–3499) or stop (3500–3999).
    #[must_use]
    pub const fn code_for(self, codec: Codec) -> CloseCode {
        match (codec, self) {
            (Codec::Centrifuge, Self::HeartbeatTimeout) => CloseCode(3012),
            (Codec::Centrifuge, Self::SlowConsumer) => CloseCode(3008),
            (Codec::Centrifuge, Self::WriteTimeout) => CloseCode(3009),
            (Codec::Centrifuge, Self::ServerShutdown) => CloseCode(3001),
            (Codec::Centrifuge, Self::BinaryNotAccepted) => CloseCode(3501),
            (Codec::Centrifuge, Self::ForceDisconnect) => CloseCode(3503),
            (Codec::Centrifuge, Self::TooManyRequests) => CloseCode(3013),
            (Codec::Centrifuge, Self::ConnectionLimit) => CloseCode(3504),
            _ => self.code(),
        }
    }

    /// The reason text on a connection speaking `codec`.
    #[must_use]
    pub const fn text_for(self, codec: Codec) -> &'static str {
        match (codec, self) {
            (Codec::Centrifuge, Self::HeartbeatTimeout) => "no pong",
            (Codec::Centrifuge, Self::SlowConsumer) => "slow",
            (Codec::Centrifuge, Self::WriteTimeout) => "write error",
            (Codec::Centrifuge, Self::ServerShutdown) => "shutdown",
            (Codec::Centrifuge, Self::BinaryNotAccepted) => "bad request",
            _ => self.text(),
        }
    }

    /// The reason text sent in the close frame (short, ASCII, ≤ 123 bytes).
    #[must_use]
    pub const fn text(self) -> &'static str {
        match self {
            Self::PeerClosed => "",
            Self::MessageTooBig => "message too big",
            Self::InvalidUtf8 => "invalid utf-8 in text message",
            Self::BinaryNotAccepted => "binary messages are not accepted on this connection",
            Self::ProtocolError => "websocket protocol error",
            Self::HeartbeatTimeout => "heartbeat timeout: no pong",
            Self::SlowConsumer => "slow consumer: send queue full",
            Self::WriteTimeout => "write timeout",
            Self::ServerShutdown => "server shutting down",
            Self::ServerFull => "server full",
            Self::BadRequest => "bad request",
            Self::Stale => "stale",
            Self::NotAvailable => "not available",
            Self::StoreUnavailable => "history store unavailable, try again",
            Self::ForceDisconnect => "force disconnect",
            Self::InvalidToken => "invalid token",
            Self::ConnectionExpired => "connection expired",
            Self::TooManyRequests => "too many requests",
            Self::ConnectionLimit => "connection limit",
        }
    }

    /// A stable snake_case name for logs and metric labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::MessageTooBig => "message_too_big",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BinaryNotAccepted => "binary_not_accepted",
            Self::ProtocolError => "protocol_error",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::WriteTimeout => "write_timeout",
            Self::ServerShutdown => "server_shutdown",
            Self::ServerFull => "server_full",
            Self::BadRequest => "bad_request",
            Self::Stale => "stale",
            Self::NotAvailable => "not_available",
            Self::StoreUnavailable => "store_unavailable",
            Self::ForceDisconnect => "force_disconnect",
            Self::InvalidToken => "invalid_token",
            Self::ConnectionExpired => "connection_expired",
            Self::TooManyRequests => "too_many_requests",
            Self::ConnectionLimit => "connection_limit",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
