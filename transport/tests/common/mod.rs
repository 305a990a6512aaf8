//! Helpers shared by the end-to-end tests: an in-process server on
//! 127.0.0.1:0, tungstenite clients, a raw WebSocket client for frames
//! tungstenite will not send, and raw HTTP requests.
#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used)]

pub mod process;
pub mod redis;
pub mod sdk;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hubbub::ServerConfig;
use hubbub_core::SeedMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hubbub::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Starts a graceful shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(
                Duration::from_secs(15),
                "serve returns after shutdown",
                task,
            )
            .await
            .expect("serve task")
            .expect("serve ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config for tests: the defaults, with a short write timeout so
/// shutdown waits stay short, and three shards, so that consecutive
/// connections land on different shards and rooms span them: every
/// end-to-end test also checks what crosses shards.
pub fn config() -> ServerConfig {
    ServerConfig {
        write_timeout: Duration::from_secs(5),
        shards: 3,
        ..ServerConfig::default()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(server: &TestServer, path: &str) -> Ws {
    let url = server.url(path);
    let (ws, response) = within(
        STEP,
        "websocket handshake",
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next data or close message (pings and pongs are skipped; reading
/// them makes tungstenite answer pings).
pub async fn next(ws: &mut Ws) -> Message {
    within(STEP, "next message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("read error: {e}"),
                None => panic!("stream ended"),
            }
        }
    })
    .await
}

pub async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

pub async fn next_seed(ws: &mut Ws) -> SeedMessage {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not seed JSON ({e}): {text}"))
}

/// Reads until a close frame; returns its code and reason (data before it is skipped).
pub async fn close_of(ws: &mut Ws) -> (u16, String) {
    within(STEP, "close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (u16::from(code), reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read error before close: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    })
    .await
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    within(STEP, "send", ws.send(Message::text(text)))
        .await
        .unwrap();
}

/// Joins `room` as `user` and consumes the join's own notices.
pub async fn join(server: &TestServer, room: &str, user: &str) -> Ws {
    let mut ws = connect(server, &format!("/ws/{room}?username={user}")).await;
    loop {
        let m = next_seed(&mut ws).await;
        if m.kind == hubbub_core::SeedType::UserJoined && m.username == user {
            return ws;
        }
    }
}

/// Reads seed messages until one matches `pred`; returns it.
pub async fn seed_until(ws: &mut Ws, pred: impl Fn(&SeedMessage) -> bool) -> SeedMessage {
    loop {
        let m = next_seed(ws).await;
        if pred(&m) {
            return m;
        }
    }
}

// ---- raw WebSocket client ---------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A WebSocket client written out by hand: sends any frame, reads frames
/// as they are on the wire, and can stay completely silent.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let stream = within(STEP, "tcp connect", TcpStream::connect(addr))
            .await
            .unwrap();
        Self::handshake(stream, path).await
    }

    /// Connects with a tiny receive buffer, so a client that does not read
    /// stalls the server's writes quickly.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, path: &str) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = within(STEP, "tcp connect", socket.connect(addr))
            .await
            .unwrap();
        Self::handshake(stream, path).await
    }

    /// Connects and sends `early` in the same write as the handshake
    /// request, before the server has answered.
    pub async fn connect_with_early_bytes(addr: SocketAddr, path: &str, early: &[u8]) -> Self {
        let stream = within(STEP, "tcp connect", TcpStream::connect(addr))
            .await
            .unwrap();
        Self::handshake_with(stream, path, early).await
    }

    async fn handshake(stream: TcpStream, path: &str) -> Self {
        Self::handshake_with(stream, path, &[]).await
    }

    async fn handshake_with(mut stream: TcpStream, path: &str, early: &[u8]) -> Self {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(early);
        stream.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let head_end = within(STEP, "handshake response", async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "eof during handshake");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad accept: {head}"
        );
        buf.drain(..head_end);
        Self { stream, buf }
    }

    /// Sends one frame, masked as a client must.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let out = client_frame(fin, opcode, payload);
        within(STEP, "raw send", self.stream.write_all(&out))
            .await
            .unwrap();
    }

    /// Sends a close frame with `code`.
    pub async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(true, OP_CLOSE, &payload).await;
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 65536];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// The next frame from the server, or `None` at end of stream (also when
    /// the stream ends inside a frame, as after a write timeout).
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        within(STEP, "raw frame", async {
            if !self.fill(2).await {
                return None;
            }
            let fin = self.buf[0] & 0x80 != 0;
            let opcode = self.buf[0] & 0x0f;
            assert_eq!(self.buf[1] & 0x80, 0, "server frames must not be masked");
            let (len, head) = match self.buf[1] & 0x7f {
                126 => {
                    if !self.fill(4).await {
                        return None;
                    }
                    (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    )
                }
                127 => {
                    if !self.fill(10).await {
                        return None;
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    (usize::try_from(u64::from_be_bytes(b)).unwrap(), 10)
                }
                n => (usize::from(n), 2),
            };
            if !self.fill(head + len).await {
                return None;
            }
            let payload = self.buf[head..head + len].to_vec();
            self.buf.drain(..head + len);
            Some(RawFrame {
                fin,
                opcode,
                payload,
            })
        })
        .await
    }

    /// Reads frames until a close frame; returns it and the frames before it.
    pub async fn read_until_close(&mut self) -> (RawFrame, Vec<RawFrame>) {
        let mut before = Vec::new();
        loop {
            match self.read_frame().await {
                Some(f) if f.opcode == OP_CLOSE => return (f, before),
                Some(f) => before.push(f),
                None => panic!(
                    "stream ended without a close frame after {} frames",
                    before.len()
                ),
            }
        }
    }

    /// True when the server has closed the TCP stream (after any buffered frames).
    pub async fn at_eof(&mut self) -> bool {
        self.read_frame().await.is_none()
    }
}

/// A masked client frame, as bytes.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

// ---- raw HTTP -----------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("bad json ({e}): {}", self.body))
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_owned()
    }
}

/// Sends a GET for `path` with extra header lines; reads one response.
pub async fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpResponse {
    request(addr, "GET", path, headers).await
}

/// Sends one request with extra header lines (and no body); reads one response.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> HttpResponse {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut stream = within(STEP, "tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    within(STEP, "http response", async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "eof before response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let mut response = HttpResponse {
            status,
            head,
            body: String::new(),
        };
        let len: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "eof in body");
            buf.extend_from_slice(&chunk[..n]);
        }
        response.body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        response
    })
    .await
}

/// The headers of a WebSocket upgrade request.
pub const UPGRADE: &[&str] = &[
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];
