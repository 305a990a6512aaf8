//! A hand-written Centrifugo client over tokio-tungstenite, for tests that
//! drive the real server: frames split on `\n`, server pings answered,
//! messages not yet asked for kept in order.

use std::collections::VecDeque;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{within, Ws, STEP};

/// A Centrifugo client by hand: frames split on `\n`, pings answered.
pub struct Sdk {
    ws: Ws,
    pub pending: VecDeque<Value>,
    next_id: u64,
}

impl Sdk {
    pub async fn connect(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/connection/websocket");
        let (ws, _) = within(STEP, "connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        let mut sdk = Self {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        };
        let reply = sdk.call(json!({"connect": {"name": "test"}})).await;
        assert!(reply.get("connect").is_some(), "{reply}");
        sdk
    }

    pub async fn send(&mut self, mut command: Value) -> u64 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        within(
            STEP,
            "send",
            self.ws.send(Message::text(command.to_string())),
        )
        .await
        .unwrap();
        self.next_id
    }

    /// As `send`, but `None` when the connection is gone (a killed node).
    pub async fn try_send(&mut self, mut command: Value) -> Option<u64> {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        let sent = within(
            STEP,
            "send",
            self.ws.send(Message::text(command.to_string())),
        )
        .await;
        sent.ok().map(|()| self.next_id)
    }

    pub async fn call(&mut self, command: Value) -> Value {
        let id = self.send(command).await;
        self.until(|m| m["id"] == json!(id)).await
    }

    /// The next message; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            match within(STEP, "next frame", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n') {
                        let m: Value = serde_json::from_str(line).unwrap();
                        if m == json!({}) {
                            let _ = self.ws.send(Message::text("{}")).await;
                        } else {
                            self.pending.push_back(m);
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => return None,
            }
        }
    }

    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let mut skipped = VecDeque::new();
        loop {
            let m = self.next().await.expect("connection ended while waiting");
            if pred(&m) {
                skipped.extend(self.pending.drain(..));
                self.pending = skipped;
                return m;
            }
            skipped.push_back(m);
        }
    }

    /// Subscribes to `channel` (unless it is) and reads every publication in its history,
    /// oldest first, in pages with `since`; and the stream's (top, epoch).
    pub async fn whole_history(&mut self, channel: &str) -> (Vec<(u64, Value)>, u64, String) {
        // History is for subscribers (the default namespace's permissions).
        let reply = self.call(json!({"subscribe": {"channel": channel}})).await;
        let already = reply["error"]["code"] == json!(105);
        assert!(reply.get("error").is_none() || already, "{reply}");
        let first = self
            .call(json!({"history": {"channel": channel, "limit": 0}}))
            .await;
        let epoch = first["history"]["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        let top = first["history"]["offset"].as_u64().unwrap_or(0);
        let mut all = Vec::new();
        let mut since = 0;
        loop {
            let page = self
                .call(json!({"history": {"channel": channel, "limit": 300,
                    "since": {"offset": since, "epoch": epoch}}}))
                .await;
            let publications = page["history"]["publications"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if publications.is_empty() {
                break;
            }
            for p in publications {
                since = p["offset"].as_u64().unwrap();
                all.push((since, p["data"].clone()));
            }
        }
        (all, top, epoch)
    }
}
