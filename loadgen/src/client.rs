//! One generator process: its share of the clients, the scenario's phases
//! and what it measured ([`Partial`]).
//!
//! Every client is one tokio task that keeps reading its connection (so the
//! server's pings are answered and a relay server never blocks on us) and,
//! if it is a sender, writes from a second future joined in the same task.
//! Over the Centrifugo protocol that second future also answers the
//! server's application-level pings (`{}`), which the reader only counts:
//! the reader never waits on the socket's write half.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::payload::{self, CfLine, Payload};
use super::procfs;
use super::stats::{self, Partial};
use super::target::{self, Clock, Target, Ws};
use super::{Protocol, Scenario, Settings};

/// The phases of the run on the shared clock (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Senders start (warmup begins).
    pub start_ns: u64,
    /// Messages sent from here on are measured.
    pub window_start_ns: u64,
    /// Senders stop; nothing sent later is measured.
    pub window_end_ns: u64,
}

impl Schedule {
    /// The schedule starting at `start_ns`.
    #[must_use]
    pub fn new(start_ns: u64, warmup_s: f64, duration_s: f64) -> Self {
        let w = start_ns + secs_ns(warmup_s);
        Self {
            start_ns,
            window_start_ns: w,
            window_end_ns: w + secs_ns(duration_s),
        }
    }

    /// Whether a message sent at `t_ns` is measured.
    #[must_use]
    pub fn measures(&self, t_ns: u64) -> bool {
        (self.window_start_ns..self.window_end_ns).contains(&t_ns)
    }
}

/// Seconds to nanoseconds (negative and NaN → 0).
#[must_use]
pub fn secs_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e9) as u64
    } else {
        0
    }
}

/// How a process synchronises with the others (or with nobody).
pub enum Coord {
    /// The only process: it measures the server itself.
    Local(super::ServerProbe),
    /// A child of `--procs`: reports to the parent on stdout, takes orders on stdin.
    Child(tokio::sync::mpsc::UnboundedReceiver<String>),
}

impl Coord {
    /// Clients are connected (or the scenario connects later): returns the
    /// clock time at which the schedule starts.
    async fn ready(&mut self, ctx: &Ctx) -> Result<u64, String> {
        match self {
            Coord::Local(probe) => {
                if ctx.s.scenario == Scenario::Idle {
                    sleep(Duration::from_secs(1)).await;
                    probe.after_connect();
                }
                Ok(ctx.clock.now_ns() + 20_000_000)
            }
            Coord::Child(rx) => {
                child_say(&format!(
                    "@ready {} {}",
                    ctx.connected.load(Relaxed),
                    ctx.failed.load(Relaxed)
                ));
                let line = rx.recv().await.ok_or("parent went away before go")?;
                line.strip_prefix("go ")
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| format!("child: expected `go <ns>`, got {line:?}"))
            }
        }
    }

    fn window_started(&mut self) {
        if let Coord::Local(probe) = self {
            probe.window_start();
        }
    }

    /// Deliveries are done: the parent samples the server before anyone closes.
    async fn settled(&mut self) -> Result<(), String> {
        match self {
            Coord::Local(probe) => {
                probe.settled();
                Ok(())
            }
            Coord::Child(rx) => {
                child_say("@settled");
                match rx.recv().await.as_deref().map(str::trim) {
                    Some("stop") => Ok(()),
                    other => Err(format!("child: expected `stop`, got {other:?}")),
                }
            }
        }
    }
}

/// A line to the parent (children only).
pub fn child_say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// State shared by the tasks of one process.
pub struct Ctx {
    /// Resolved settings.
    pub s: Settings,
    /// The server's nodes (client i connects to node i mod N).
    pub targets: Vec<Target>,
    /// Shared clock.
    pub clock: Clock,
    /// This process's index among `count` (clients with `id % count == index` are ours).
    pub index: u32,
    /// Number of generator processes.
    pub count: u32,
    frames: AtomicU64,
    bytes: AtomicU64,
    other: AtomicU64,
    room_sent: Vec<AtomicU64>,
    sent_total: AtomicU64,
    stalls: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    connected: AtomicU64,
    failed: AtomicU64,
    attempts_done: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    handshakes: AtomicU64,
    handshake_failed: AtomicU64,
    error_replies: AtomicU64,
    pings_answered: AtomicU64,
    sched: watch::Sender<Option<Schedule>>,
    stop: watch::Sender<bool>,
    sem: Semaphore,
}

impl Ctx {
    /// Shared state for process `index` of `count`.
    #[must_use]
    pub fn new(s: Settings, targets: Vec<Target>, clock: Clock, index: u32, count: u32) -> Self {
        let rooms = s.rooms as usize;
        // --concurrency is for the whole run: each process takes its share.
        let permits = s.concurrency.max(1).div_ceil(count.max(1)) as usize;
        Self {
            targets,
            clock,
            index,
            count,
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            other: AtomicU64::new(0),
            room_sent: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            sent_total: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            hist: Mutex::new(stats::new_histogram()),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            attempts_done: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            handshakes: AtomicU64::new(0),
            handshake_failed: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            pings_answered: AtomicU64::new(0),
            sched: watch::channel(None).0,
            stop: watch::channel(false).0,
            sem: Semaphore::new(permits.min(Semaphore::MAX_PERMITS)),
            s,
        }
    }

    fn record_error(&self, e: &str) {
        let mut key: String = e.chars().take(160).collect();
        if key.is_empty() {
            key.push('?');
        }
        let mut m = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(key).or_insert(0) += 1;
    }

    fn record_latencies(&self, buf: &mut Vec<u64>) {
        if buf.is_empty() {
            return;
        }
        let mut h = self
            .hist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &v in buf.iter() {
            h.saturating_record(v);
        }
        buf.clear();
    }

    /// The node client (or connect loop) `id` connects to: round robin.
    fn target(&self, id: u32) -> &Target {
        &self.targets[id as usize % self.targets.len().max(1)]
    }

    fn room_name(&self, room: u32) -> String {
        if self.s.scenario == Scenario::JoinBurst {
            "burst".to_owned()
        } else {
            format!("r{room}")
        }
    }

    fn path(&self, id: u32, room: u32) -> String {
        match self.s.protocol {
            Protocol::Relay => "/ws".to_owned(),
            Protocol::Room => format!(
                "/ws/{}?username={}",
                self.room_name(room),
                payload::username(id)
            ),
            Protocol::Centrifuge => CF_PATH.to_owned(),
        }
    }

    fn read_buffer(&self) -> usize {
        if matches!(self.s.scenario, Scenario::Idle | Scenario::Connect) {
            4096
        } else {
            8 * 1024
        }
    }

    fn sends(&self, id: u32) -> bool {
        match self.s.scenario {
            Scenario::Fanout => id < self.s.senders,
            Scenario::Rooms => true,
            _ => false,
        }
    }

    /// Global ids of this process's clients.
    fn local_ids(&self) -> Vec<u32> {
        (0..self.s.clients)
            .filter(|id| id % self.count == self.index)
            .collect()
    }

    fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }
}

/// What became of one client.
#[derive(Debug, Default)]
struct Outcome {
    id: u32,
    room: u32,
    connected: bool,
    closed_by_server: bool,
    close_reason: Option<String>,
    closed_at_ns: u64,
    delivered: u64,
    last_online: Option<Utf8Bytes>,
}

/// Runs this process's share of the scenario.
pub async fn run(ctx: Arc<Ctx>, coord: &mut Coord) -> Result<Partial, String> {
    let s = ctx.s.clone();
    let ids = ctx.local_ids();
    let connect_timeout = Duration::from_secs_f64(s.connect_timeout_s);
    let mut handles: Vec<JoinHandle<Outcome>> = Vec::with_capacity(ids.len());
    let spawn_all = |handles: &mut Vec<JoinHandle<Outcome>>| {
        let deadline = Instant::now() + connect_timeout;
        for &id in &ids {
            let ctx = Arc::clone(&ctx);
            handles.push(tokio::spawn(client_task(ctx, id, deadline)));
        }
    };

    if matches!(
        s.scenario,
        Scenario::Fanout | Scenario::Rooms | Scenario::Idle
    ) {
        spawn_all(&mut handles);
        wait_connects(&ctx, ids.len() as u64, Instant::now() + connect_timeout).await;
        if s.protocol == Protocol::Room {
            // Let the join storm (online_users to every member) drain.
            wait_quiet(&ctx, Duration::from_millis(300), Duration::from_secs(30)).await;
        }
    }

    let start_ns = coord.ready(&ctx).await?;
    let sched = Schedule::new(start_ns, s.warmup_s, s.duration_s);
    ctx.sched.send_replace(Some(sched));
    let window_start = Instant::from_std(ctx.clock.instant_at(sched.window_start_ns));
    let window_end = Instant::from_std(ctx.clock.instant_at(sched.window_end_ns));
    let settle = Duration::from_secs_f64(s.settle_s);

    let cpu0;
    match s.scenario {
        Scenario::Fanout | Scenario::Rooms => {
            sleep_until(window_start).await;
            coord.window_started();
            cpu0 = procfs::cpu_seconds(None);
            sleep_until(window_end).await;
            wait_quiet(&ctx, Duration::from_millis(300), settle).await;
        }
        Scenario::Idle => {
            sleep_until(window_start).await;
            coord.window_started();
            cpu0 = procfs::cpu_seconds(None);
            sleep_until(window_end).await;
        }
        Scenario::Connect => {
            let workers: Vec<_> = (0..s.concurrency)
                .filter(|w| w % ctx.count == ctx.index)
                .map(|w| tokio::spawn(connect_worker(Arc::clone(&ctx), w, sched)))
                .collect();
            sleep_until(window_start).await;
            coord.window_started();
            cpu0 = procfs::cpu_seconds(None);
            for w in workers {
                let _ = timeout_at(window_end + Duration::from_secs(10), w).await;
            }
        }
        Scenario::JoinBurst => {
            sleep_until(window_start).await;
            coord.window_started();
            cpu0 = procfs::cpu_seconds(None);
            spawn_all(&mut handles);
            // The burst is over when everything connected and no frame came for a second,
            // or at the end of --duration.
            wait_connects(&ctx, ids.len() as u64, window_end).await;
            let left = window_end.saturating_duration_since(Instant::now());
            wait_quiet(
                &ctx,
                Duration::from_secs(1),
                left.max(Duration::from_secs(1)),
            )
            .await;
        }
    }
    let cpu1 = procfs::cpu_seconds(None);
    coord.settled().await?;

    ctx.stop.send_replace(true);
    let mut outcomes = Vec::with_capacity(handles.len());
    let collect_deadline = Instant::now() + Duration::from_secs(10);
    for h in handles {
        match timeout_at(collect_deadline, h).await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => ctx.record_error(&format!("client task failed: {e}")),
            Err(_) => ctx.record_error("client task did not stop in time"),
        }
    }
    let mut p = partial(&ctx, &outcomes);
    p.gen_cpu_window_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    };
    p.gen_cpu_total_s = procfs::cpu_seconds(None).unwrap_or(0.0);
    Ok(p)
}

/// Waits until `n` connection attempts finished or `deadline`.
async fn wait_connects(ctx: &Ctx, n: u64, deadline: Instant) {
    while ctx.attempts_done.load(Relaxed) < n && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no frame arrived for `quiet`, at most `cap`. Returns whether it got quiet.
async fn wait_quiet(ctx: &Ctx, quiet: Duration, cap: Duration) -> bool {
    let end = Instant::now() + cap;
    let mut last = ctx.frames();
    let mut since = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(since) >= quiet {
            return true;
        }
        if now >= end {
            return false;
        }
        sleep(Duration::from_millis(25).min(quiet)).await;
        let f = ctx.frames();
        if f != last {
            last = f;
            since = Instant::now();
        }
    }
}

fn partial(ctx: &Ctx, outcomes: &[Outcome]) -> Partial {
    let rooms = ctx.s.rooms as usize;
    let mut p = Partial {
        clients: ctx.local_ids().len() as u64,
        connected: ctx.connected.load(Relaxed),
        connect_failed: ctx.failed.load(Relaxed),
        room_sent: ctx.room_sent.iter().map(|a| a.load(Relaxed)).collect(),
        room_members: vec![0; rooms],
        room_live: vec![0; rooms],
        room_delivered: vec![0; rooms],
        room_delivered_live: vec![0; rooms],
        sent_total: ctx.sent_total.load(Relaxed),
        send_stalls: ctx.stalls.load(Relaxed),
        frames: ctx.frames(),
        bytes: ctx.bytes.load(Relaxed),
        other_frames: ctx.other.load(Relaxed),
        handshakes: ctx.handshakes.load(Relaxed),
        handshake_failed: ctx.handshake_failed.load(Relaxed),
        error_replies: ctx.error_replies.load(Relaxed),
        pings_answered: ctx.pings_answered.load(Relaxed),
        open_files_limit: procfs::open_files_limit().map(|(soft, _)| soft),
        ..Partial::default()
    };
    let window_start = ctx.sched.borrow().map(|s| s.window_start_ns);
    let mut finals: HashMap<Vec<String>, u64> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.connected) {
        let r = o.room as usize;
        p.room_members[r] += 1;
        p.room_delivered[r] += o.delivered;
        if o.closed_by_server {
            p.server_closed += 1;
            if window_start.is_none_or(|w| o.closed_at_ns < w) {
                p.server_closed_before_window += 1;
            }
            let why = o.close_reason.clone().unwrap_or_else(|| "?".to_owned());
            *p.close_reasons.entry(why).or_insert(0) += 1;
        } else {
            p.room_live[r] += 1;
            p.room_delivered_live[r] += o.delivered;
            if ctx.s.scenario == Scenario::JoinBurst {
                p.kept.push(payload::username(o.id));
                let list = o.last_online.as_ref().and_then(|f| {
                    payload::parse_room_frame(f.as_str())
                        .map(|fr| payload::online_users_sorted(&fr.content))
                });
                match list {
                    Some(l) => *finals.entry(l).or_insert(0) += 1,
                    None => p.kept_without_online_users += 1,
                }
            }
        }
    }
    p.finals = finals.into_iter().map(|(l, n)| (n, l)).collect();
    p.finals.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    p.latency_us = stats::histogram_to_pairs(
        &ctx.hist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    p.connect_errors = ctx
        .errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    p
}

/// One simulated user: connect (bounded by the handshake semaphore), then
/// read (and maybe send) until told to stop or the server ends the connection.
async fn client_task(ctx: Arc<Ctx>, id: u32, deadline: Instant) -> Outcome {
    let room = id % ctx.s.rooms.max(1);
    let mut out = Outcome {
        id,
        room,
        ..Outcome::default()
    };
    let path = ctx.path(id, room);
    let channel = ctx.room_name(room);
    let opened = timeout_at(deadline, async {
        let _permit = ctx.sem.acquire().await.map_err(|e| e.to_string())?;
        let mut ws = target::open(
            ctx.target(id),
            &path,
            target::source_ip(id, ctx.s.source_addrs),
            ctx.read_buffer(),
        )
        .await?;
        if ctx.s.protocol == Protocol::Centrifuge {
            cf_handshake(&ctx, &mut ws, &channel).await?;
        }
        Ok::<_, String>(ws)
    })
    .await;
    let ws = match opened {
        Ok(Ok(ws)) => {
            ctx.connected.fetch_add(1, Relaxed);
            ctx.attempts_done.fetch_add(1, Relaxed);
            ws
        }
        Ok(Err(e)) => {
            ctx.record_error(&e);
            ctx.failed.fetch_add(1, Relaxed);
            ctx.attempts_done.fetch_add(1, Relaxed);
            return out;
        }
        Err(_) => {
            ctx.record_error("connect phase timed out (--connect-timeout)");
            ctx.failed.fetch_add(1, Relaxed);
            ctx.attempts_done.fetch_add(1, Relaxed);
            return out;
        }
    };
    out.connected = true;
    let (mut sink, mut stream) = ws.split();
    let acked = AtomicU64::new(0);
    let reader_done = AtomicBool::new(false);
    let notify = Notify::new();
    let pinger = Pinger::default();
    let sends = ctx.sends(id);
    let cf = ctx.s.protocol == Protocol::Centrifuge;
    let (rd, ()) = tokio::join!(
        read_loop(
            Reader::new(&ctx, id, &channel, &acked, &notify, &pinger),
            &mut stream,
            &reader_done
        ),
        async {
            if sends {
                let w = Writer {
                    ctx: &ctx,
                    me: id,
                    room,
                    channel: &channel,
                    acked: &acked,
                    notify: &notify,
                    pinger: &pinger,
                    reader_done: &reader_done,
                };
                w.run(&mut sink).await;
            }
            if cf {
                pong_loop(&ctx, &mut sink, &pinger).await;
            }
        }
    );
    out.delivered = rd.delivered;
    out.closed_by_server = rd.closed_by_server;
    out.close_reason = rd.close_reason;
    out.closed_at_ns = rd.closed_at_ns;
    out.last_online = rd.last_online;
    if !out.closed_by_server {
        // A clean close: send ours, then read until the server's reply ends the stream.
        let _ = timeout(Duration::from_secs(1), async {
            if sink.send(Message::Close(None)).await.is_ok() {
                while let Some(Ok(_)) = stream.next().await {}
            }
        })
        .await;
    }
    out
}

#[derive(Default)]
struct ReadResult {
    delivered: u64,
    closed_by_server: bool,
    close_reason: Option<String>,
    closed_at_ns: u64,
    last_online: Option<Utf8Bytes>,
}

/// Centrifugo server pings the reader saw and the writer still owes a pong.
#[derive(Default)]
struct Pinger {
    owed: AtomicU64,
    notify: Notify,
}

/// Path of the Centrifugo client protocol's WebSocket endpoint.
const CF_PATH: &str = "/connection/websocket";

/// A pong (`{}`), always in a frame of its own.
const CF_PONG: &str = "{}";

/// Centrifugo: sends `connect` and a `subscribe` to `channel` in one frame
/// and reads until both replies came (answering server pings, ignoring
/// anything else). An error reply or a close fails the handshake.
async fn cf_handshake(ctx: &Ctx, ws: &mut Ws, channel: &str) -> Result<(), String> {
    let mut buf = String::with_capacity(128);
    payload::encode_cf_handshake(&mut buf, channel);
    ws.send(Message::text(buf))
        .await
        .map_err(|e| format!("centrifuge connect: send: {e}"))?;
    let (mut connected, mut subscribed) = (false, false);
    while !(connected && subscribed) {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                return Err(match f {
                    Some(f) => format!(
                        "centrifuge connect: close frame {} {}",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "centrifuge connect: close frame without code".to_owned(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("centrifuge connect: {e}")),
            None => return Err("centrifuge connect: connection ended".to_owned()),
        };
        for line in text.as_str().split('\n') {
            match payload::parse_cf_line(line) {
                CfLine::Reply { id } if id == payload::CF_CONNECT_ID => connected = true,
                CfLine::Reply { id } if id == payload::CF_SUBSCRIBE_ID => subscribed = true,
                CfLine::Error { id, code, message } => {
                    let what = if id == payload::CF_CONNECT_ID {
                        "connect"
                    } else {
                        "subscribe"
                    };
                    ctx.error_replies.fetch_add(1, Relaxed);
                    return Err(format!("centrifuge {what} error {code}: {message}"));
                }
                CfLine::Ping => {
                    ws.send(Message::text(CF_PONG))
                        .await
                        .map_err(|e| format!("centrifuge connect: pong: {e}"))?;
                    ctx.pings_answered.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Sends the pongs `pinger` owes; `false` if the connection is gone.
async fn answer_pings(ctx: &Ctx, sink: &mut SplitSink<Ws, Message>, pinger: &Pinger) -> bool {
    let n = pinger.owed.swap(0, Relaxed);
    for _ in 0..n {
        if sink.send(Message::text(CF_PONG)).await.is_err() {
            return false;
        }
    }
    ctx.pings_answered.fetch_add(n, Relaxed);
    true
}

/// Centrifugo: answers server pings until the run stops (or the connection breaks).
async fn pong_loop(ctx: &Ctx, sink: &mut SplitSink<Ws, Message>, pinger: &Pinger) {
    let mut stop_rx = ctx.stop.subscribe();
    let stop = stop_rx.wait_for(|s| *s);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            () = pinger.notify.notified() => {}
        }
        if !answer_pings(ctx, sink, pinger).await {
            return;
        }
    }
}

/// Per-connection read state.
struct Reader<'a> {
    ctx: &'a Ctx,
    me: u32,
    /// The client's room (Centrifugo channel) name.
    channel: &'a str,
    acked: &'a AtomicU64,
    notify: &'a Notify,
    pinger: &'a Pinger,
    sched: Option<Schedule>,
    track_online: bool,
    lat: Vec<u64>,
    res: ReadResult,
    // Counters batched locally and added to the shared ones when the
    // connection has nothing more to read for now (keeps atomics off the
    // per-frame path).
    frames: u64,
    bytes: u64,
    other: u64,
}

impl<'a> Reader<'a> {
    fn new(
        ctx: &'a Ctx,
        me: u32,
        channel: &'a str,
        acked: &'a AtomicU64,
        notify: &'a Notify,
        pinger: &'a Pinger,
    ) -> Self {
        Self {
            ctx,
            me,
            channel,
            acked,
            notify,
            pinger,
            sched: None,
            track_online: ctx.s.scenario == Scenario::JoinBurst,
            lat: Vec::new(),
            res: ReadResult::default(),
            frames: 0,
            bytes: 0,
            other: 0,
        }
    }

    fn closed(&mut self) {
        self.res.closed_by_server = true;
        self.res.closed_at_ns = self.ctx.clock.now_ns();
    }

    fn flush(&mut self) {
        let c = self.ctx;
        if self.frames > 0 {
            c.frames.fetch_add(self.frames, Relaxed);
            c.bytes.fetch_add(self.bytes, Relaxed);
            self.frames = 0;
            self.bytes = 0;
        }
        if self.other > 0 {
            c.other.fetch_add(self.other, Relaxed);
            self.other = 0;
        }
        c.record_latencies(&mut self.lat);
    }

    /// Handles one frame; `false` when the connection is over.
    fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> bool {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(b))) => {
                if let Ok(t) = Utf8Bytes::try_from(b) {
                    t
                } else {
                    self.frames += 1;
                    self.other += 1;
                    return true;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                self.res.close_reason = Some(match frame {
                    Some(f) => format!("close frame {}", u16::from(f.code)),
                    None => "close frame without code".to_owned(),
                });
                self.closed();
                return false;
            }
            Some(Err(e)) => {
                self.res.close_reason = Some(format!("error: {e}"));
                self.closed();
                return false;
            }
            None => {
                self.res.close_reason = Some("connection ended without close frame".to_owned());
                self.closed();
                return false;
            }
            Some(Ok(_)) => {
                // ping/pong: tungstenite queues the pong, sent on the next
                // poll. Not counted: heartbeats must not keep a burst "busy".
                return true;
            }
        };
        let s = text.as_str();
        if self.ctx.s.protocol == Protocol::Centrifuge && s == CF_PONG {
            // A server ping alone in its frame: not counted, like WebSocket pings.
            self.ping();
            return true;
        }
        self.frames += 1;
        self.bytes += text.len() as u64;
        match self.ctx.s.protocol {
            Protocol::Relay => self.on_payload(s),
            Protocol::Centrifuge => {
                for line in s.split('\n') {
                    self.on_cf_line(line);
                }
            }
            // Presence frames (a join storm sends every member the whole user
            // list) are recognised without JSON work; join-burst keeps the
            // last online_users frame (parsed once, at the end).
            Protocol::Room if payload::is_presence_frame(s) => {
                if self.track_online && payload::is_online_users_frame(s) {
                    self.res.last_online = Some(text.clone());
                }
            }
            Protocol::Room => {
                if let Some(c) = payload::fast_chat_content(s) {
                    self.on_payload(c);
                } else {
                    match payload::parse_room_frame(s) {
                        Some(f) if f.kind == "chat" => self.on_payload(&f.content),
                        Some(f) => {
                            if self.track_online && f.kind == "online_users" {
                                self.res.last_online = Some(text.clone());
                            }
                        }
                        // Not JSON: maybe a raw payload, else counted as other.
                        None => self.on_payload(s),
                    }
                }
            }
        }
        if self.lat.len() >= 256 {
            self.ctx.record_latencies(&mut self.lat);
        }
        true
    }

    fn ping(&self) {
        self.pinger.owed.fetch_add(1, Relaxed);
        self.pinger.notify.notify_one();
    }

    /// One message of a Centrifugo frame.
    fn on_cf_line(&mut self, line: &str) {
        match payload::parse_cf_line(line) {
            CfLine::Pub {
                channel,
                payload: Some(p),
            } if channel == self.channel => self.on_parsed(p),
            CfLine::Pub { .. } | CfLine::Garbage => self.other += 1,
            CfLine::Ping => self.ping(),
            // Publish replies (and late handshake replies) need nothing.
            CfLine::Reply { .. } | CfLine::OtherPush { unsubscribe: false } => {}
            CfLine::Error { code, message, .. } => {
                self.ctx.error_replies.fetch_add(1, Relaxed);
                self.ctx
                    .record_error(&format!("centrifuge error reply {code}: {message}"));
            }
            CfLine::OtherPush { unsubscribe: true } => {
                self.ctx.error_replies.fetch_add(1, Relaxed);
                self.ctx.record_error("centrifuge unsubscribe push");
            }
        }
    }

    fn on_payload(&mut self, content: &str) {
        let Some(p) = payload::parse(content) else {
            self.other += 1;
            return;
        };
        self.on_parsed(p);
    }

    fn on_parsed(&mut self, p: Payload) {
        let now = self.ctx.clock.now_ns();
        if p.sender == self.me {
            self.acked.fetch_max(p.seq + 1, Relaxed);
            self.notify.notify_one();
        }
        if self.sched.is_none() {
            self.sched = *self.ctx.sched.borrow();
        }
        if self.sched.is_some_and(|s| s.measures(p.t_ns)) {
            self.res.delivered += 1;
            self.lat.push((now.saturating_sub(p.t_ns) / 1000).max(1));
        }
    }
}

async fn read_loop(
    mut r: Reader<'_>,
    stream: &mut SplitStream<Ws>,
    reader_done: &AtomicBool,
) -> ReadResult {
    let (ctx, notify) = (r.ctx, r.notify);
    let mut stop_rx = ctx.stop.subscribe();
    let stop = stop_rx.wait_for(|s| *s);
    tokio::pin!(stop);
    loop {
        // Take what is already buffered without going through select!; when
        // nothing is ready (or tokio's cooperative budget is used up), publish
        // the counters and wait for data or the stop signal.
        let msg = if let Some(m) = stream.next().now_or_never() {
            m
        } else {
            r.flush();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                m = stream.next() => m,
            }
        };
        if !r.on_message(msg) {
            break;
        }
    }
    r.flush();
    reader_done.store(true, Relaxed);
    notify.notify_one();
    r.res
}

/// Stagger of sender `id`'s first message within one interval, in [0, 1).
fn phase(id: u32) -> f64 {
    f64::from(id.wrapping_mul(2_654_435_761) >> 8) / f64::from(1u32 << 24)
}

/// A sender's write half and what it shares with its reader.
struct Writer<'a> {
    ctx: &'a Ctx,
    me: u32,
    room: u32,
    /// The room (Centrifugo channel) name.
    channel: &'a str,
    acked: &'a AtomicU64,
    notify: &'a Notify,
    pinger: &'a Pinger,
    reader_done: &'a AtomicBool,
}

impl Writer<'_> {
    async fn run(&self, sink: &mut SplitSink<Ws, Message>) {
        let Writer {
            ctx,
            me,
            room,
            channel,
            acked,
            notify,
            pinger,
            reader_done,
        } = *self;
        let cf = ctx.s.protocol == Protocol::Centrifuge;
        let mut sched_rx = ctx.sched.subscribe();
        let mut stop_rx = ctx.stop.subscribe();
        // Until the schedule comes (every client connected, which can take
        // minutes) and its start, the server's pings are still answered: a
        // Centrifugo server closes a sender that owes it a pong.
        let sched = loop {
            let waited = tokio::select! {
                s = sched_rx.wait_for(Option::is_some) => Some(s.ok().and_then(|s| *s)),
                _ = stop_rx.wait_for(|s| *s) => return,
                () = pinger.notify.notified(), if cf => None,
            };
            match waited {
                Some(Some(s)) => break s,
                Some(None) => return,
                None => {
                    if !answer_pings(ctx, sink, pinger).await {
                        return;
                    }
                }
            }
        };
        let stop = stop_rx.wait_for(|s| *s);
        tokio::pin!(stop);
        let clock = ctx.clock;
        let rate = ctx.s.rate;
        let interval_ns = if rate > 0.0 {
            secs_ns(1.0 / rate).max(1)
        } else {
            0
        };
        let mut next = sched.start_ns + (interval_ns as f64 * phase(me)) as u64;
        let cap = ctx.s.max_inflight.max(1);
        let mut seq: u64 = 0;
        let mut buf = String::with_capacity(payload::MAX_PAYLOAD_LEN);
        let start = Instant::from_std(clock.instant_at(sched.start_ns));
        loop {
            let pinged = tokio::select! {
                biased;
                _ = &mut stop => return,
                () = pinger.notify.notified(), if cf => true,
                () = sleep_until(start) => false,
            };
            if !pinged {
                break;
            }
            if !answer_pings(ctx, sink, pinger).await {
                return;
            }
        }
        loop {
            if interval_ns > 0 {
                if next >= sched.window_end_ns {
                    break;
                }
                let at = Instant::from_std(clock.instant_at(next));
                loop {
                    // (No await inside select!'s arms: the stop branch's
                    // output holds a watch guard that is not Send.)
                    let pinged = tokio::select! {
                        biased;
                        _ = &mut stop => return,
                        () = pinger.notify.notified(), if cf => true,
                        () = sleep_until(at) => false,
                    };
                    if !pinged {
                        break;
                    }
                    if !answer_pings(ctx, sink, pinger).await {
                        return;
                    }
                }
                next += interval_ns;
            }
            if seq.saturating_sub(acked.load(Relaxed)) >= cap {
                ctx.stalls.fetch_add(1, Relaxed);
                loop {
                    let woken = notify.notified();
                    if seq.saturating_sub(acked.load(Relaxed)) < cap
                        || reader_done.load(Relaxed)
                        || clock.now_ns() >= sched.window_end_ns
                    {
                        break;
                    }
                    let pinged = tokio::select! {
                        biased;
                        _ = &mut stop => return,
                        () = pinger.notify.notified(), if cf => true,
                        () = woken => false,
                        () = sleep(Duration::from_millis(100)) => false,
                    };
                    if pinged && !answer_pings(ctx, sink, pinger).await {
                        return;
                    }
                }
            }
            let t = clock.now_ns();
            if reader_done.load(Relaxed) || t >= sched.window_end_ns {
                break;
            }
            let p = Payload {
                t_ns: t,
                sender: me,
                seq,
            };
            if cf {
                payload::encode_cf_publish(
                    &mut buf,
                    channel,
                    p,
                    payload::CF_FIRST_PUBLISH_ID + seq,
                );
            } else {
                payload::encode(&mut buf, p);
            }
            let sent = tokio::select! {
                biased;
                _ = &mut stop => return,
                r = sink.send(Message::text(buf.as_str())) => r.is_ok(),
            };
            if !sent {
                break;
            }
            ctx.sent_total.fetch_add(1, Relaxed);
            if sched.measures(t) {
                if let Some(c) = ctx.room_sent.get(room as usize) {
                    c.fetch_add(1, Relaxed);
                }
            }
            seq += 1;
            if cf && pinger.owed.load(Relaxed) > 0 && !answer_pings(ctx, sink, pinger).await {
                break;
            }
        }
    }
}

/// `connect`: open a connection, complete the handshake, close it; again
/// until the end of the window. Worker `w` (global) uses user name `u<w>`.
async fn connect_worker(ctx: Arc<Ctx>, w: u32, sched: Schedule) {
    let mut stop_rx = ctx.stop.subscribe();
    let stop = stop_rx.wait_for(|s| *s);
    tokio::pin!(stop);
    let clock = ctx.clock;
    let mut lat = Vec::new();
    let mut n: u32 = 0;
    sleep_until(Instant::from_std(clock.instant_at(sched.start_ns))).await;
    loop {
        let t0 = clock.now_ns();
        if t0 >= sched.window_end_ns {
            break;
        }
        let path = match ctx.s.protocol {
            Protocol::Relay => "/ws".to_owned(),
            Protocol::Room => format!("/ws/c{w}x{n}?username={}", payload::username(w)),
            Protocol::Centrifuge => CF_PATH.to_owned(),
        };
        let source = target::source_ip(w.wrapping_add(n), ctx.s.source_addrs);
        // Centrifugo: a handshake includes connect + subscribe to a fresh
        // channel, as the room protocol's handshake joins a fresh room.
        let handshake = async {
            let mut ws = target::open(
                ctx.target(w.wrapping_add(n)),
                &path,
                source,
                ctx.read_buffer(),
            )
            .await?;
            if ctx.s.protocol == Protocol::Centrifuge {
                cf_handshake(&ctx, &mut ws, &format!("c{w}x{n}")).await?;
            }
            Ok::<_, String>(ws)
        };
        let opened = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = timeout(Duration::from_secs(5), handshake) => r,
        };
        let measured = sched.measures(t0);
        match opened {
            Ok(Ok(mut ws)) => {
                let t1 = clock.now_ns();
                if measured {
                    ctx.handshakes.fetch_add(1, Relaxed);
                    lat.push((t1.saturating_sub(t0) / 1000).max(1));
                }
                let _ = timeout(Duration::from_secs(1), async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Ok(Err(e)) => {
                if measured {
                    ctx.handshake_failed.fetch_add(1, Relaxed);
                }
                ctx.record_error(&e);
                sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                if measured {
                    ctx.handshake_failed.fetch_add(1, Relaxed);
                }
                ctx.record_error("handshake timed out (5 s)");
            }
        }
        if lat.len() >= 256 {
            ctx.record_latencies(&mut lat);
        }
        n = n.wrapping_add(1);
    }
    ctx.record_latencies(&mut lat);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_window() {
        let s = Schedule::new(1_000, 1.0, 2.0);
        assert_eq!(s.window_start_ns, 1_000 + 1_000_000_000);
        assert_eq!(s.window_end_ns, 1_000 + 3_000_000_000);
        assert!(!s.measures(1_000));
        assert!(s.measures(s.window_start_ns));
        assert!(!s.measures(s.window_end_ns));
        assert_eq!(secs_ns(-1.0), 0);
        assert_eq!(secs_ns(f64::NAN), 0);
        assert_eq!(secs_ns(0.5), 500_000_000);
    }

    #[test]
    fn phases_spread_in_unit_interval() {
        let v: Vec<f64> = (0..100).map(phase).collect();
        assert!(v.iter().all(|p| (0.0..1.0).contains(p)));
        let mut buckets = [0u32; 4];
        for p in &v {
            buckets[(p * 4.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 10), "{buckets:?}");
    }
}
