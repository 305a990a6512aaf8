//! The load generator: real WebSocket clients against a running server
//! (hubbub or a seed peer) on this machine's loopback.
//!
//! `hubbub-load --scenario fanout|rooms|idle|connect|join-burst …` opens
//! the clients (optionally in several processes, `--procs`), runs the
//! scenario for a bounded time and prints a table and then ONE line of JSON
//! with every figure (see [`stats::Report`]). Latencies are in microseconds.
//!
//! With `--procs N` the process re-executes itself N times as children
//! (hidden flags `--child-index/--child-count/--epoch-ns`); the children
//! speak a tiny line protocol with the parent (stdout: `@ready`, `@settled`,
//! `@result <json>`; stdin: `go <ns>`, `stop`) so that all of them measure
//! the same window on one clock.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod client;
mod multi;
pub mod payload;
pub mod procfs;
pub mod stats;
pub mod target;

/// Headroom of file descriptors a generator process needs besides its sockets.
const FD_HEADROOM: u64 = 64;

/// What to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// C clients in R rooms, S of them sending; end-to-end latency and deliveries.
    Fanout,
    /// Many small rooms, every client sending at --rate.
    Rooms,
    /// Hold C connections for --duration; server RSS per connection.
    Idle,
    /// Open, handshake, close, again: handshakes per second.
    Connect,
    /// C clients join one room at once: how many are kept, is online_users complete
    /// (room protocol only).
    JoinBurst,
}

impl Scenario {
    /// Name as on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Idle => "idle",
            Scenario::Connect => "connect",
            Scenario::JoinBurst => "join-burst",
        }
    }
}

/// Which wire protocol the server speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /ws/{room}?username=uN`, JSON frames {"type","content","room","username"}
    /// (hubbub, seed001).
    Room,
    /// `GET /ws`, every frame relayed verbatim to every connection (hubbub, seed000).
    /// No rooms: all clients form one room.
    Relay,
    /// `GET /connection/websocket`, the Centrifugo client protocol (JSON):
    /// `connect` + `subscribe` to channel r{i mod R}, `publish`, `pub` pushes (hubbub).
    Centrifuge,
}

impl Protocol {
    /// Name as on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Room => "room",
            Protocol::Relay => "relay",
            Protocol::Centrifuge => "centrifuge",
        }
    }
}

/// `hubbub-load`: drive a running chat server over loopback WebSockets.
///
/// Prints a table, then one line of JSON with all figures (latencies in µs).
/// Example: `hubbub-load --url ws://127.0.0.1:8080 --scenario fanout
/// --clients 1000 --senders 10 --rate 100 --duration 5 --server-pid $PID`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Server base URL, ws://HOST:PORT. Only loopback hosts are accepted
    /// (127.0.0.0/8, localhost, [::1]); the path comes from --protocol.
    /// Several nodes of one cluster: repeat it or separate them with commas
    /// (`--urls A,B,C`); client i connects to URL i mod N (round robin), so
    /// with --rooms R a room's members spread over the nodes when R and N
    /// have no common factor (client i is in room i mod R).
    #[arg(
        long = "url",
        visible_alias = "urls",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080"
    )]
    pub url: Vec<String>,

    /// What to measure: fanout (C clients in R rooms, S senders: latency,
    /// deliveries), rooms (many small rooms, every client sends), idle (hold
    /// C connections: server RSS per connection, needs --server-pid),
    /// connect (handshakes per second), join-burst (C clients join one room
    /// at once: clients kept, online_users complete; room protocol only).
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    pub scenario: Scenario,

    /// Wire protocol: room = GET /ws/{room}?username=uN with JSON frames
    /// (hubbub, seed001); relay = GET /ws, raw frames relayed to every
    /// connection (hubbub, seed000), where all clients form one room;
    /// centrifuge = GET /connection/websocket, the Centrifugo client
    /// protocol (JSON, hubbub): each client sends connect + subscribe to
    /// channel r{i mod R} in one frame and waits for both replies before
    /// the run starts, senders publish {"t","s","n"} as the data, every
    /// pub push of the client's channel counts as a delivery, server pings
    /// {} are answered with {}. For connect, a handshake is the WebSocket
    /// upgrade plus the connect and subscribe replies (a fresh channel
    /// each time, like the room protocol's fresh room).
    #[arg(long, value_enum, default_value_t = Protocol::Room)]
    pub protocol: Protocol,

    /// Number of simulated users (WebSocket connections). For connect, see --concurrency.
    #[arg(long, short = 'c', default_value_t = 200)]
    pub clients: u32,

    /// Rooms the clients are spread over (client i joins room r{i mod R}).
    /// Default: fanout 1, rooms 100, idle one room per client. Relay and
    /// join-burst always use one room.
    #[arg(long)]
    pub rooms: Option<u32>,

    /// fanout: number of sending clients (clients 0..S, so with S >= R every
    /// room has a sender). The rooms scenario makes every client a sender.
    #[arg(long, short = 's', default_value_t = 1)]
    pub senders: u32,

    /// Messages per second per sender; 0 = flat out (bounded by --max-inflight).
    #[arg(long, short = 'r', default_value_t = 10.0)]
    pub rate: f64,

    /// Most messages a sender may have in flight (sent but its own copy not
    /// yet received back); a sender at the cap waits. Bounds memory when flat out.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: u64,

    /// Measured seconds (after --warmup). join-burst: the most the burst may take.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of sending before measuring starts (fanout, rooms, connect).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// Most seconds to wait after the window for the last deliveries (ends
    /// as soon as no frame arrived for 300 ms).
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,

    /// Concurrent handshakes while connecting (in total, split over
    /// --procs); for connect, the number of parallel open/handshake/close
    /// loops. Default: 256, but 16 for the room protocol when a room has
    /// more than 256 members (every join sends each member the user list,
    /// and seed001 evicts members whose queue overflows while a big room
    /// fills fast); connect 32; join-burst all clients at once.
    #[arg(long)]
    pub concurrency: Option<u32>,

    /// Most seconds the connect phase may take; clients not connected by
    /// then count as failed.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,

    /// PID of the server: reports its CPU seconds (utime+stime of
    /// /proc/PID/stat) from the window's start until deliveries settled,
    /// peak RSS (VmHWM), deliveries per server CPU-second and, for idle,
    /// RSS per connection ((VmRSS connected − VmRSS before) / connected;
    /// use a freshly started server: heaps rarely shrink).
    /// Several nodes: repeat it or separate the pids with commas; CPU
    /// seconds and RSS are then the sums over them (and the JSON's
    /// `server_pids` lists them).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Worker threads of the generator's tokio runtime, per process (1 or 2:
    /// the server shares the machine).
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,

    /// Run the clients in N processes of this binary (client i in process
    /// i mod N) and aggregate their figures; needed when the clients plus
    /// 64 exceed the per-process open-files limit (/proc/self/limits).
    #[arg(long, default_value_t = 1)]
    pub procs: u32,

    /// Bind client sockets to source addresses 127.0.0.1..=127.0.0.N
    /// (round-robin) for more than ~28k connections to one server port
    /// (ephemeral ports are per source address). IPv4 targets only.
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u32,

    /// Print only the JSON line, no table. Either way the last line on
    /// stdout is one JSON object with every figure (latencies in µs,
    /// RSS in KiB, CPU in seconds; null where not applicable).
    #[arg(long)]
    pub json_only: bool,

    /// (internal) index of this child process among --child-count.
    #[arg(long, hide = true)]
    pub child_index: Option<u32>,

    /// (internal) number of child processes.
    #[arg(long, hide = true)]
    pub child_count: Option<u32>,

    /// (internal) time zero of the run, wall-clock ns since 1970.
    #[arg(long, hide = true)]
    pub epoch_ns: Option<u64>,
}

/// The resolved settings of a run (defaults per scenario applied).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scenario.
    pub scenario: Scenario,
    /// Protocol.
    pub protocol: Protocol,
    /// Server URL(s) as given, comma-separated.
    pub url: String,
    /// Clients.
    pub clients: u32,
    /// Rooms actually used.
    pub rooms: u32,
    /// Sending clients.
    pub senders: u32,
    /// Messages per second per sender (0 = flat out).
    pub rate: f64,
    /// In-flight cap per sender.
    pub max_inflight: u64,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Settle cap, seconds.
    pub settle_s: f64,
    /// Connect phase cap, seconds.
    pub connect_timeout_s: f64,
    /// Processes.
    pub procs: u32,
    /// Tokio workers per process.
    pub threads: usize,
    /// Source addresses.
    pub source_addrs: u32,
    /// Handshake concurrency (connect: parallel loops).
    pub concurrency: u32,
}

impl Settings {
    /// Validates `a` and applies the per-scenario defaults.
    pub fn resolve(a: &LoadArgs) -> Result<Self, String> {
        let finite_nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a finite number >= 0, got {v}"))
            }
        };
        let rate = finite_nonneg("rate", a.rate)?;
        let duration_s = finite_nonneg("duration", a.duration)?;
        if duration_s <= 0.0 {
            return Err("--duration must be > 0".to_owned());
        }
        let mut warmup_s = finite_nonneg("warmup", a.warmup)?;
        let settle_s = finite_nonneg("settle", a.settle)?;
        let connect_timeout_s = finite_nonneg("connect-timeout", a.connect_timeout)?.max(1.0);
        if a.clients == 0 && a.scenario != Scenario::Connect {
            return Err("--clients must be > 0".to_owned());
        }
        if a.threads == 0 || a.threads > 64 {
            return Err("--threads must be in 1..=64".to_owned());
        }
        if a.procs == 0 || a.procs > 64 {
            return Err("--procs must be in 1..=64".to_owned());
        }
        if a.source_addrs == 0 || a.source_addrs > 254 {
            return Err("--source-addrs must be in 1..=254".to_owned());
        }
        if a.url.is_empty() {
            return Err("--url needs at least one URL".to_owned());
        }
        if a.max_inflight == 0 {
            return Err("--max-inflight must be > 0".to_owned());
        }
        if a.scenario == Scenario::JoinBurst && a.protocol != Protocol::Room {
            return Err(format!(
                "join-burst needs --protocol room ({} has no online_users)",
                a.protocol.name()
            ));
        }
        let rooms = match (a.protocol, a.scenario) {
            (Protocol::Relay, _) => {
                if a.rooms.is_some_and(|r| r > 1) {
                    eprintln!("hubbub-load: note: relay has no rooms; all clients are one room");
                }
                1
            }
            (_, Scenario::JoinBurst) => {
                if a.rooms.is_some_and(|r| r != 1) {
                    return Err("join-burst uses exactly one room".to_owned());
                }
                1
            }
            (Protocol::Room | Protocol::Centrifuge, sc) => match a.rooms {
                Some(0) => return Err("--rooms must be > 0".to_owned()),
                Some(r) => r,
                None => match sc {
                    Scenario::Rooms => 100,
                    Scenario::Idle => a.clients.max(1),
                    _ => 1,
                },
            },
        };
        let rooms = rooms.min(a.clients.max(1));
        let senders = match a.scenario {
            Scenario::Fanout => a.senders.min(a.clients),
            Scenario::Rooms => a.clients,
            _ => 0,
        };
        let concurrency = match a.concurrency {
            Some(0) => return Err("--concurrency must be > 0".to_owned()),
            Some(c) => c,
            None => match a.scenario {
                Scenario::Connect => 32,
                Scenario::JoinBurst => a.clients.max(1),
                // Every join sends each member the user list: joining a big
                // room fast makes seed001 evict members whose queue overflows.
                _ if a.protocol == Protocol::Room && a.clients.div_ceil(rooms) > 256 => 16,
                _ => 256,
            },
        };
        if matches!(a.scenario, Scenario::Idle | Scenario::JoinBurst) {
            warmup_s = 0.0;
        }
        if a.procs > 1 && a.scenario != Scenario::Connect && a.procs > a.clients {
            return Err("--procs must not exceed --clients".to_owned());
        }
        if a.procs > 1 && a.scenario == Scenario::Connect && a.procs > concurrency {
            return Err("--procs must not exceed --concurrency for connect".to_owned());
        }
        Ok(Self {
            scenario: a.scenario,
            protocol: a.protocol,
            url: a.url.join(","),
            clients: if a.scenario == Scenario::Connect {
                0
            } else {
                a.clients
            },
            rooms,
            senders,
            rate,
            max_inflight: a.max_inflight,
            warmup_s,
            duration_s,
            settle_s,
            connect_timeout_s,
            procs: a.procs,
            threads: a.threads,
            source_addrs: a.source_addrs,
            concurrency,
        })
    }

    /// Most seconds a run may take before the watchdog ends it.
    #[must_use]
    pub fn hard_cap_s(&self) -> f64 {
        // connect phase + join-storm drain (30 s) + schedule + settle + closing.
        self.connect_timeout_s + 30.0 + self.warmup_s + self.duration_s + self.settle_s + 30.0
    }

    /// Sockets one process holds at most.
    #[must_use]
    pub fn sockets_per_proc(&self) -> u64 {
        let n = if self.scenario == Scenario::Connect {
            self.concurrency
        } else {
            self.clients
        };
        u64::from(n.div_ceil(self.procs))
    }
}

/// Samples the server process around the window.
#[derive(Debug, Default)]
pub struct ServerProbe {
    figures: stats::ServerFigures,
    cpu_start: Option<f64>,
}

impl ServerProbe {
    /// A probe for `pids` (does nothing without any); records RSS before
    /// connecting. Several pids (the nodes of a cluster): sums.
    #[must_use]
    pub fn new(pids: &[u32]) -> Self {
        let mut p = Self::default();
        p.figures.pid = pids.first().copied();
        p.figures.pids = pids.to_vec();
        p.figures.rss_before_kib = p.sum_kib("VmRSS");
        p
    }

    /// The sum of a `/proc/PID/status` field over the pids (`None` without
    /// pids or when one cannot be read).
    fn sum_kib(&self, key: &str) -> Option<u64> {
        if self.figures.pids.is_empty() {
            return None;
        }
        self.figures
            .pids
            .iter()
            .map(|&pid| procfs::status_kib(pid, key))
            .sum()
    }

    /// CPU seconds of all pids so far.
    fn cpu_now(&self) -> Option<f64> {
        if self.figures.pids.is_empty() {
            return None;
        }
        self.figures
            .pids
            .iter()
            .map(|&pid| procfs::cpu_seconds(Some(pid)))
            .sum()
    }

    /// All clients connected and settled (idle).
    pub fn after_connect(&mut self) {
        self.figures.rss_after_kib = self.sum_kib("VmRSS");
    }

    /// The measured window starts.
    pub fn window_start(&mut self) {
        self.cpu_start = self.cpu_now();
    }

    /// Deliveries settled: CPU used since the window started, peak RSS.
    pub fn settled(&mut self) {
        if let (Some(a), Some(b)) = (self.cpu_start, self.cpu_now()) {
            self.figures.cpu_s = Some((b - a).max(0.0));
        }
        self.figures.peak_rss_kib = self.sum_kib("VmHWM");
    }

    /// What was measured.
    #[must_use]
    pub fn figures(&self) -> stats::ServerFigures {
        self.figures.clone()
    }
}

/// Entry point of `hubbub-load`.
// By value: this is the signature `src/main.rs` dispatches to.
#[allow(clippy::needless_pass_by_value)]
#[must_use]
pub fn main(args: LoadArgs) -> ExitCode {
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hubbub-load: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the process if the run outlives its bound (everything is bounded in
/// time even if a server stops answering).
fn start_watchdog(cap_s: f64, who: &'static str) {
    let cap = Duration::from_secs_f64(cap_s);
    std::thread::spawn(move || {
        std::thread::sleep(cap);
        eprintln!("hubbub-load ({who}): hard time cap of {cap_s:.0} s reached, exiting");
        std::process::exit(3);
    });
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Refuses runs that would hit the open-files or ephemeral-port limits
/// (`targets`: the server addresses the clients are spread over).
fn check_limits(s: &Settings, targets: usize) -> Result<(), String> {
    let need = s.sockets_per_proc() + FD_HEADROOM;
    if let Some((soft, hard)) = procfs::open_files_limit() {
        if need > soft {
            let per = soft.saturating_sub(FD_HEADROOM).max(1);
            let total = if s.scenario == Scenario::Connect {
                u64::from(s.concurrency)
            } else {
                u64::from(s.clients)
            };
            let procs = total.div_ceil(per);
            let raise = if hard > soft {
                format!(" or raise the soft limit (ulimit -n {hard}) first")
            } else {
                String::new()
            };
            return Err(format!(
                "open-files limit hit: each generator process would hold {} sockets + {FD_HEADROOM} \
                 other files = {need} > soft limit {soft} (hard {hard}) of /proc/self/limits; \
                 use --procs {procs} (or more){raise}",
                s.sockets_per_proc()
            ));
        }
    }
    if s.scenario != Scenario::Connect {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(|x| x.parse::<u64>().ok());
                Some((it.next()??, it.next()??))
            });
        if let Some((lo, hi)) = range {
            let ports = hi.saturating_sub(lo) + 1;
            // Without a bound source address the kernel picks an ephemeral
            // port per (source, destination) pair: each node has the range.
            let spread = if s.source_addrs > 1 {
                u64::from(s.source_addrs)
            } else {
                targets.max(1) as u64
            };
            let per_addr = u64::from(s.clients).div_ceil(spread);
            if per_addr > ports {
                return Err(format!(
                    "ephemeral ports: {per_addr} connections per source address > {ports} ports \
                     ({lo}-{hi}); use --source-addrs {}",
                    u64::from(s.clients).div_ceil(ports)
                ));
            }
        }
    }
    Ok(())
}

fn run(a: &LoadArgs) -> Result<ExitCode, String> {
    let targets = a
        .url
        .iter()
        .map(|u| target::parse_url(u))
        .collect::<Result<Vec<_>, _>>()?;
    let s = Settings::resolve(a)?;
    if s.source_addrs > 1 && targets.iter().any(|t| t.addr.is_ipv6()) {
        return Err("--source-addrs needs an IPv4 (127.x.y.z) server address".to_owned());
    }
    if let Some(index) = a.child_index {
        let count = a.child_count.ok_or("--child-index needs --child-count")?;
        if index >= count {
            return Err("--child-index must be < --child-count".to_owned());
        }
        return child_main(s, targets, a.epoch_ns, index, count);
    }
    for &pid in &a.server_pid {
        if !procfs::pid_exists(pid) {
            return Err(format!("--server-pid {pid}: no such process"));
        }
    }
    check_limits(&s, targets.len())?;
    start_watchdog(s.hard_cap_s() + 15.0, "parent");
    let wall = Instant::now();
    let (parts, server) = if s.procs > 1 {
        multi::run_parent(&s, &a.server_pid)?
    } else {
        let probe = ServerProbe::new(&a.server_pid);
        let clock = target::Clock::new(None);
        let rt = runtime(s.threads)?;
        let ctx = Arc::new(client::Ctx::new(s.clone(), targets, clock, 0, 1));
        let coord = client::Coord::Local(probe);
        let (part, coord) = rt.block_on(async move {
            let mut coord = coord;
            let r = client::run(ctx, &mut coord).await;
            (r, coord)
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        let server = match coord {
            client::Coord::Local(p) => p.figures(),
            client::Coord::Child(_) => stats::ServerFigures::default(),
        };
        (vec![part?], server)
    };
    let report = stats::build_report(&s, &parts, &server, wall.elapsed().as_secs_f64());
    if !a.json_only {
        println!("hubbub-load");
        print!("{}", stats::table(&report));
    }
    let json = serde_json::to_string(&report).map_err(|e| format!("json: {e}"))?;
    println!("{json}");
    let nothing = if s.scenario == Scenario::Connect {
        report.handshakes == Some(0)
    } else {
        report.connected == 0
    };
    if nothing {
        eprintln!("hubbub-load: error: no client could connect to {}", s.url);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn child_main(
    s: Settings,
    targets: Vec<target::Target>,
    epoch_ns: Option<u64>,
    index: u32,
    count: u32,
) -> Result<ExitCode, String> {
    start_watchdog(s.hard_cap_s(), "child");
    let clock = target::Clock::new(epoch_ns);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        // stdin closed: the parent is gone; the receiver sees None.
    });
    let rt = runtime(s.threads)?;
    let ctx = Arc::new(client::Ctx::new(s, targets, clock, index, count));
    let mut coord = client::Coord::Child(rx);
    let part = rt.block_on(client::run(ctx, &mut coord))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let json = serde_json::to_string(&part).map_err(|e| format!("json: {e}"))?;
    client::child_say(&format!("@result {json}"));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::resolve(&cli.load)
    }

    #[test]
    fn per_scenario_defaults() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!((s.scenario, s.protocol), (Scenario::Fanout, Protocol::Room));
        assert_eq!(
            (s.clients, s.rooms, s.senders, s.concurrency),
            (200, 1, 1, 256)
        );
        let s = settings(&["--scenario", "rooms", "--clients", "2000"]).expect("valid");
        assert_eq!((s.rooms, s.senders), (100, 2000));
        let s = settings(&["--scenario", "idle", "--clients", "50"]).expect("valid");
        assert_eq!((s.rooms, s.senders, s.warmup_s), (50, 0, 0.0));
        let s = settings(&["--scenario", "connect"]).expect("valid");
        assert_eq!((s.clients, s.concurrency), (0, 32));
        let s = settings(&["--scenario", "join-burst", "-c", "1000"]).expect("valid");
        assert_eq!((s.rooms, s.concurrency), (1, 1000));
        // Big rooms over the room protocol connect gently.
        let s = settings(&["-c", "1000", "-s", "10"]).expect("valid");
        assert_eq!((s.senders, s.concurrency), (10, 16));
        let s = settings(&["-c", "1000", "--protocol", "relay"]).expect("valid");
        assert_eq!((s.rooms, s.concurrency), (1, 256));
        let s = settings(&["-c", "1000", "--concurrency", "100"]).expect("valid");
        assert_eq!(s.concurrency, 100);
        let s = settings(&["-c", "3", "-s", "10", "--rooms", "9"]).expect("valid");
        assert_eq!((s.senders, s.rooms), (3, 3));
        // Centrifugo: rooms as for the room protocol, no join storm to pace.
        let s = settings(&["-c", "1000", "-s", "10", "--protocol", "centrifuge"]).expect("valid");
        assert_eq!(
            (s.protocol, s.rooms, s.concurrency),
            (Protocol::Centrifuge, 1, 256)
        );
        let s = settings(&[
            "--scenario",
            "rooms",
            "--protocol",
            "centrifuge",
            "-c",
            "2000",
        ])
        .expect("valid");
        assert_eq!((s.rooms, s.senders), (100, 2000));
        let s = settings(&["--scenario", "idle", "--protocol", "centrifuge", "-c", "50"])
            .expect("valid");
        assert_eq!(s.rooms, 50);
    }

    #[test]
    fn several_urls_and_pids() {
        let cli = Cli::try_parse_from([
            "load",
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--url",
            "ws://127.0.0.1:3",
            "--server-pid",
            "10,11",
        ])
        .expect("valid");
        assert_eq!(cli.load.url.len(), 3);
        assert_eq!(cli.load.server_pid, vec![10, 11]);
        let s = Settings::resolve(&cli.load).expect("valid");
        assert_eq!(s.url, "ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3");
        let cli = Cli::try_parse_from(["load", "--urls", "ws://127.0.0.1:1,ws://127.0.0.1:2"])
            .expect("the alias");
        assert_eq!(cli.load.url.len(), 2);
        // Each node has the ephemeral port range: 95,000 clients over 5 nodes fit.
        let s = settings(&["-c", "95000", "--procs", "5"]).expect("valid");
        if procfs::open_files_limit().is_some_and(|(soft, _)| soft >= 19_064) {
            assert!(check_limits(&s, 5).is_ok());
        }
    }

    #[test]
    fn invalid_combinations() {
        for bad in [
            &["--scenario", "join-burst", "--protocol", "relay"][..],
            &["--scenario", "join-burst", "--protocol", "centrifuge"],
            &["--scenario", "join-burst", "--rooms", "2"],
            &["--rate", "-1"],
            &["--duration", "0"],
            &["--clients", "0"],
            &["--threads", "0"],
            &["--procs", "0"],
            &["--procs", "3", "--clients", "2"],
            &["--source-addrs", "255"],
            &["--max-inflight", "0"],
            &["--rooms", "0"],
            &["--concurrency", "0"],
            &["--scenario", "nope"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_fit_this_machine_for_small_runs() {
        let s = settings(&["-c", "100"]).expect("valid");
        assert_eq!(s.sockets_per_proc(), 100);
        assert!(check_limits(&s, 1).is_ok());
        let s = settings(&["-c", "19000", "--procs", "2"]).expect("valid");
        assert_eq!(s.sockets_per_proc(), 9500);
        let s = settings(&["-c", "1000000", "--procs", "2"]).expect("valid");
        let err = check_limits(&s, 1).expect_err("500k sockets per process cannot fit");
        if procfs::open_files_limit().is_some_and(|(soft, _)| soft < 500_064) {
            assert!(err.contains("open-files limit"), "{err}");
        }
    }
}
