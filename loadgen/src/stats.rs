//! Figures: what one generator process measured ([`Partial`]), how the
//! partials of all processes combine into the final [`Report`], latency
//! percentiles, and the human table.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{Protocol, Scenario, Settings};

/// Highest latency the histograms hold (µs): one hour; larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram (µs, 3 significant figures).
#[must_use]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// The non-empty buckets of `h` as (value, count) pairs, to ship a histogram
/// from a child process to the parent without losing precision.
#[must_use]
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs from [`histogram_to_pairs`] into `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
}

/// Latency percentiles, all in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// Percentiles of `h`; `None` if it is empty.
#[must_use]
pub fn summarize(h: &Histogram<u64>) -> Option<LatencySummary> {
    if h.is_empty() {
        return None;
    }
    Some(LatencySummary {
        count: h.len(),
        min: h.min(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    })
}

/// What one generator process measured. Per-room vectors are indexed by
/// room number; the parent sums them over processes before multiplying
/// (expected deliveries = Σ_rooms messages sent × members).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Partial {
    /// Clients this process was to open.
    pub clients: u64,
    /// Clients whose handshake completed.
    pub connected: u64,
    /// Clients whose connection could not be opened.
    pub connect_failed: u64,
    /// Connect errors by message, with counts.
    pub connect_errors: BTreeMap<String, u64>,
    /// Connections that ended without the generator asking.
    pub server_closed: u64,
    /// Of those, the ones that ended before the measured window.
    pub server_closed_before_window: u64,
    /// How those connections ended, with counts.
    pub close_reasons: BTreeMap<String, u64>,
    /// Measured messages sent into each room.
    pub room_sent: Vec<u64>,
    /// Connected members of each room.
    pub room_members: Vec<u64>,
    /// Members of each room still open at the end.
    pub room_live: Vec<u64>,
    /// Measured deliveries to members of each room.
    pub room_delivered: Vec<u64>,
    /// Measured deliveries to members still open at the end.
    pub room_delivered_live: Vec<u64>,
    /// Messages sent including warmup.
    pub sent_total: u64,
    /// Times a sender waited because --max-inflight was reached.
    pub send_stalls: u64,
    /// Data frames received (pings and pongs not counted).
    pub frames: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Text frames that were neither protocol JSON nor a generator payload.
    pub other_frames: u64,
    /// Latency histogram (end-to-end, or handshake for `connect`), µs, as pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Completed handshakes in the window (`connect`).
    pub handshakes: u64,
    /// Failed handshakes in the window (`connect`).
    pub handshake_failed: u64,
    /// User names of clients the server kept open (`join-burst`).
    pub kept: Vec<String>,
    /// Kept clients that never received an `online_users` (`join-burst`).
    pub kept_without_online_users: u64,
    /// Distinct final `online_users` lists (sorted) of kept clients, with
    /// how many clients ended with each (`join-burst`).
    pub finals: Vec<(u64, Vec<String>)>,
    /// This process's CPU seconds in the measured window.
    pub gen_cpu_window_s: f64,
    /// This process's CPU seconds over its whole life.
    pub gen_cpu_total_s: f64,
    /// This process's soft open-files limit.
    pub open_files_limit: Option<u64>,
    /// Centrifugo error replies (`{"id":N,"error":{…}}`) and unsubscribe
    /// pushes received (`centrifuge` only).
    #[serde(default)]
    pub error_replies: u64,
    /// Centrifugo server pings (`{}`) answered with a pong (`centrifuge` only).
    #[serde(default)]
    pub pings_answered: u64,
}

/// Figures about the server process (all `None` without `--server-pid`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerFigures {
    /// The (first) pid given.
    pub pid: Option<u32>,
    /// Every pid given (the nodes of a cluster); the figures are sums.
    pub pids: Vec<u32>,
    /// CPU seconds spent by the server from the start of the measured window
    /// until the generator had settled.
    pub cpu_s: Option<f64>,
    /// VmHWM at the end, KiB.
    pub peak_rss_kib: Option<u64>,
    /// VmRSS before the generator connected, KiB.
    pub rss_before_kib: Option<u64>,
    /// VmRSS once all clients were connected and settled, KiB (`idle`).
    pub rss_after_kib: Option<u64>,
}

/// The final figures of a run (printed as the table and as one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario run.
    pub scenario: &'static str,
    /// Protocol spoken.
    pub protocol: &'static str,
    /// Server URL.
    pub url: String,
    /// Clients asked for.
    pub clients: u32,
    /// Rooms used (1 for relay).
    pub rooms: u32,
    /// Sending clients.
    pub senders: u32,
    /// Messages per second per sender (0 = flat out; null without senders).
    pub rate_per_sender: Option<f64>,
    /// In-flight cap per sender (null without senders).
    pub max_inflight: Option<u64>,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Generator processes.
    pub procs: u32,
    /// Tokio worker threads per process.
    pub threads: usize,
    /// Source addresses used.
    pub source_addrs: u32,
    /// Handshake concurrency.
    pub concurrency: u32,
    /// Clients connected.
    pub connected: u64,
    /// Clients that failed to connect.
    pub connect_failed: u64,
    /// Connections the server ended without being asked.
    pub server_closed: u64,
    /// Of those, the ones closed before the measured window (e.g. during a join storm).
    pub server_closed_before_window: u64,
    /// How they ended (close code, error), with counts.
    pub server_close_reasons: BTreeMap<String, u64>,
    /// Measured messages sent.
    pub sent: Option<u64>,
    /// Measured messages sent per second.
    pub sent_per_s: Option<f64>,
    /// Expected deliveries (messages sent × members of the room).
    pub expected: Option<u64>,
    /// Measured deliveries.
    pub delivered: Option<u64>,
    /// expected − delivered.
    pub lost: Option<i64>,
    /// lost / expected, percent.
    pub loss_pct: Option<f64>,
    /// Expected deliveries to clients still open at the end.
    pub expected_live: Option<u64>,
    /// Deliveries to clients still open at the end.
    pub delivered_live: Option<u64>,
    /// expected_live − delivered_live: what the open clients could have read but did not get.
    pub lost_live: Option<i64>,
    /// Deliveries per second of the measured window.
    pub deliveries_per_s: Option<f64>,
    /// Times a sender hit the in-flight cap.
    pub send_stalls: Option<u64>,
    /// Unit of the latency figures.
    pub latency_unit: &'static str,
    /// What the latency measures: `end_to_end`, `handshake` or `none`.
    pub latency_of: &'static str,
    /// Latency percentiles.
    pub latency: Option<LatencySummary>,
    /// Handshakes completed in the window (`connect`).
    pub handshakes: Option<u64>,
    /// Handshakes failed in the window (`connect`).
    pub handshake_failed: Option<u64>,
    /// Handshakes per second (`connect`).
    pub handshakes_per_s: Option<f64>,
    /// Clients the server kept open (`join-burst`).
    pub join_kept: Option<u64>,
    /// Kept clients whose last `online_users` lists exactly the kept clients.
    pub join_complete_clients: Option<u64>,
    /// Whether every kept client ended with the complete `online_users`.
    pub join_online_users_complete: Option<bool>,
    /// Server pid (the first, with several).
    pub server_pid: Option<u32>,
    /// Every server pid given; CPU and RSS figures are their sums.
    pub server_pids: Vec<u32>,
    /// Server CPU seconds (window + settle).
    pub server_cpu_s: Option<f64>,
    /// Server peak RSS (VmHWM), KiB.
    pub server_peak_rss_kib: Option<u64>,
    /// Server RSS before connecting, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with all clients connected (`idle`), KiB.
    pub server_rss_after_kib: Option<u64>,
    /// (after − before) / connected, bytes (`idle`).
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Deliveries per server CPU-second.
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// Handshakes per server CPU-second (`connect`).
    pub handshakes_per_server_cpu_s: Option<f64>,
    /// Generator CPU seconds in the measured window (all processes).
    pub gen_cpu_s: f64,
    /// Generator CPU seconds over the whole run (all processes).
    pub gen_cpu_total_s: f64,
    /// Smallest soft open-files limit among the generator processes.
    pub open_files_limit: Option<u64>,
    /// Data frames received by the generator.
    pub frames_received: u64,
    /// Payload bytes received by the generator.
    pub bytes_received: u64,
    /// Text frames that could not be understood.
    pub other_frames: u64,
    /// Connect errors by message.
    pub connect_errors: BTreeMap<String, u64>,
    /// Centrifugo error replies and unsubscribe pushes (their messages are
    /// counted in `connect_errors`); absent for the other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_replies: Option<u64>,
    /// Centrifugo server pings answered; absent for the other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pings_answered: Option<u64>,
    /// Wall-clock seconds of the whole run.
    pub wall_s: f64,
}

fn add_vec(acc: &mut Vec<u64>, v: &[u64]) {
    if acc.len() < v.len() {
        acc.resize(v.len(), 0);
    }
    for (a, b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

fn dot(a: &[u64], b: &[u64]) -> u64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn diff(expected: u64, got: u64) -> i64 {
    i64::try_from(i128::from(expected) - i128::from(got)).unwrap_or(i64::MAX)
}

fn per(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| n / d)
}

/// Combines the partials of all processes and the server figures.
#[must_use]
pub fn build_report(
    s: &Settings,
    parts: &[Partial],
    server: &ServerFigures,
    wall_s: f64,
) -> Report {
    let mut hist = new_histogram();
    let (mut sent, mut members, mut live, mut deliv, mut deliv_live) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut errors = BTreeMap::new();
    let mut closes = BTreeMap::new();
    let mut kept = BTreeSet::new();
    for p in parts {
        add_pairs(&mut hist, &p.latency_us);
        add_vec(&mut sent, &p.room_sent);
        add_vec(&mut members, &p.room_members);
        add_vec(&mut live, &p.room_live);
        add_vec(&mut deliv, &p.room_delivered);
        add_vec(&mut deliv_live, &p.room_delivered_live);
        for (e, n) in &p.connect_errors {
            *errors.entry(e.clone()).or_insert(0) += n;
        }
        for (e, n) in &p.close_reasons {
            *closes.entry(e.clone()).or_insert(0) += n;
        }
        kept.extend(p.kept.iter().cloned());
    }
    let sum = |f: fn(&Partial) -> u64| parts.iter().map(f).sum::<u64>();
    let connected = sum(|p| p.connected);
    let dur = s.duration_s;
    let traffic = matches!(s.scenario, Scenario::Fanout | Scenario::Rooms);
    let sent_n: u64 = sent.iter().sum();
    let expected = dot(&sent, &members);
    let delivered: u64 = deliv.iter().sum();
    let expected_live = dot(&sent, &live);
    let delivered_live: u64 = deliv_live.iter().sum();
    let server_cpu = server.cpu_s.filter(|&c| c > 0.0);

    let (join_kept, join_complete, join_ok) = if s.scenario == Scenario::JoinBurst {
        let kept_sorted: Vec<String> = kept.iter().cloned().collect();
        let complete: u64 = parts
            .iter()
            .flat_map(|p| p.finals.iter())
            .filter(|(_, names)| *names == kept_sorted)
            .map(|(n, _)| n)
            .sum();
        let k = kept.len() as u64;
        (Some(k), Some(complete), Some(k > 0 && complete == k))
    } else {
        (None, None, None)
    };
    let handshakes = sum(|p| p.handshakes);
    let is_connect = s.scenario == Scenario::Connect;
    let centrifuge = s.protocol == Protocol::Centrifuge;
    let rss_per_conn = match (server.rss_before_kib, server.rss_after_kib) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };

    Report {
        scenario: s.scenario.name(),
        protocol: s.protocol.name(),
        url: s.url.clone(),
        clients: s.clients,
        rooms: s.rooms,
        senders: s.senders,
        rate_per_sender: (s.senders > 0).then_some(s.rate),
        max_inflight: (s.senders > 0).then_some(s.max_inflight),
        warmup_s: s.warmup_s,
        duration_s: dur,
        procs: s.procs,
        threads: s.threads,
        source_addrs: s.source_addrs,
        concurrency: s.concurrency,
        connected,
        connect_failed: sum(|p| p.connect_failed),
        server_closed: sum(|p| p.server_closed),
        server_closed_before_window: sum(|p| p.server_closed_before_window),
        server_close_reasons: closes,
        sent: traffic.then_some(sent_n),
        sent_per_s: if traffic {
            per(sent_n as f64, dur)
        } else {
            None
        },
        expected: traffic.then_some(expected),
        delivered: traffic.then_some(delivered),
        lost: traffic.then(|| diff(expected, delivered)),
        loss_pct: if traffic {
            per(diff(expected, delivered) as f64 * 100.0, expected as f64)
        } else {
            None
        },
        expected_live: traffic.then_some(expected_live),
        delivered_live: traffic.then_some(delivered_live),
        lost_live: traffic.then(|| diff(expected_live, delivered_live)),
        deliveries_per_s: if traffic {
            per(delivered as f64, dur)
        } else {
            None
        },
        send_stalls: traffic.then(|| sum(|p| p.send_stalls)),
        latency_unit: "us",
        latency_of: match s.scenario {
            Scenario::Fanout | Scenario::Rooms => "end_to_end",
            Scenario::Connect => "handshake",
            Scenario::Idle | Scenario::JoinBurst => "none",
        },
        latency: summarize(&hist),
        handshakes: is_connect.then_some(handshakes),
        handshake_failed: is_connect.then(|| sum(|p| p.handshake_failed)),
        handshakes_per_s: if is_connect {
            per(handshakes as f64, dur)
        } else {
            None
        },
        join_kept,
        join_complete_clients: join_complete,
        join_online_users_complete: join_ok,
        server_pid: server.pid,
        server_pids: server.pids.clone(),
        server_cpu_s: server.cpu_s,
        server_peak_rss_kib: server.peak_rss_kib,
        server_rss_before_kib: server.rss_before_kib,
        server_rss_after_kib: server.rss_after_kib,
        server_rss_per_conn_bytes: rss_per_conn,
        deliveries_per_server_cpu_s: if traffic {
            server_cpu.and_then(|c| per(delivered as f64, c))
        } else {
            None
        },
        handshakes_per_server_cpu_s: if is_connect {
            server_cpu.and_then(|c| per(handshakes as f64, c))
        } else {
            None
        },
        gen_cpu_s: parts.iter().map(|p| p.gen_cpu_window_s).sum(),
        gen_cpu_total_s: parts.iter().map(|p| p.gen_cpu_total_s).sum(),
        open_files_limit: parts.iter().filter_map(|p| p.open_files_limit).min(),
        frames_received: sum(|p| p.frames),
        bytes_received: sum(|p| p.bytes),
        other_frames: sum(|p| p.other_frames),
        connect_errors: errors,
        error_replies: centrifuge.then(|| sum(|p| p.error_replies)),
        pings_answered: centrifuge.then(|| sum(|p| p.pings_answered)),
        wall_s,
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

fn f1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
}

fn f0(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
}

/// The human-readable table of a report.
#[must_use]
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<26} {v}");
    };
    row(
        "scenario",
        format!("{} over {} protocol at {}", r.scenario, r.protocol, r.url),
    );
    let load = match r.scenario {
        "fanout" | "rooms" => format!(
            "{} clients in {} room(s), {} sender(s) × {}, in-flight cap {}",
            r.clients,
            r.rooms,
            r.senders,
            match r.rate_per_sender {
                Some(rate) if rate > 0.0 => format!("{rate} msg/s"),
                _ => "flat out".to_owned(),
            },
            opt(r.max_inflight)
        ),
        "connect" => format!("{} parallel connect/close loops", r.concurrency),
        _ => format!("{} clients in {} room(s)", r.clients, r.rooms),
    };
    row("load", load);
    row(
        "timing",
        format!(
            "warmup {:.1} s, measured {:.1} s, wall {:.1} s; {} proc(s) × {} thread(s), {} source addr(s)",
            r.warmup_s, r.duration_s, r.wall_s, r.procs, r.threads, r.source_addrs
        ),
    );
    if r.scenario != "connect" {
        row(
            "connections",
            format!(
                "{} connected, {} failed, {} closed by server ({} before the window)",
                r.connected, r.connect_failed, r.server_closed, r.server_closed_before_window
            ),
        );
    }
    if r.delivered.is_some() {
        row(
            "messages sent",
            format!("{} ({} msg/s)", opt(r.sent), f0(r.sent_per_s)),
        );
        row(
            "delivered / expected",
            format!(
                "{} / {}  (lost {}, {:.3}%)",
                opt(r.delivered),
                opt(r.expected),
                opt(r.lost),
                r.loss_pct.unwrap_or(0.0)
            ),
        );
        row(
            "  to clients still open",
            format!(
                "{} / {}  (lost {})",
                opt(r.delivered_live),
                opt(r.expected_live),
                opt(r.lost_live)
            ),
        );
        row("deliveries/s", f0(r.deliveries_per_s));
        row("sender in-flight stalls", opt(r.send_stalls));
    }
    if let Some(h) = r.handshakes {
        row(
            "handshakes",
            format!(
                "{} ok, {} failed, {}/s",
                h,
                opt(r.handshake_failed),
                f0(r.handshakes_per_s)
            ),
        );
    }
    if let Some(l) = r.latency {
        let what = if r.latency_of == "handshake" {
            "handshake latency µs"
        } else {
            "end-to-end latency µs"
        };
        row(
            what,
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0}, n {})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            ),
        );
    }
    if let Some(k) = r.join_kept {
        row(
            "join burst",
            format!(
                "{} of {} kept; {} ended with the complete online_users → {}",
                k,
                r.clients,
                opt(r.join_complete_clients),
                if r.join_online_users_complete == Some(true) {
                    "COMPLETE"
                } else {
                    "INCOMPLETE"
                }
            ),
        );
    }
    if let Some(pid) = r.server_pid {
        let pid = if r.server_pids.len() > 1 {
            let pids: Vec<String> = r.server_pids.iter().map(u32::to_string).collect();
            format!("{} (sums)", pids.join("+"))
        } else {
            pid.to_string()
        };
        row(
            "server",
            format!(
                "pid {pid}: cpu {} s, peak RSS {} KiB",
                r.server_cpu_s
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
                opt(r.server_peak_rss_kib)
            ),
        );
        if r.server_rss_after_kib.is_some() {
            row(
                "server RSS",
                format!(
                    "{} KiB before, {} KiB connected → {} bytes/connection",
                    opt(r.server_rss_before_kib),
                    opt(r.server_rss_after_kib),
                    f0(r.server_rss_per_conn_bytes)
                ),
            );
        }
        if r.deliveries_per_server_cpu_s.is_some() {
            row(
                "deliveries / server CPU-s",
                f0(r.deliveries_per_server_cpu_s),
            );
        }
        if r.handshakes_per_server_cpu_s.is_some() {
            row(
                "handshakes / server CPU-s",
                f1(r.handshakes_per_server_cpu_s),
            );
        }
    }
    if let (Some(e), Some(p)) = (r.error_replies, r.pings_answered) {
        row(
            "centrifugo",
            format!("{e} error replies/unsubscribes, {p} server pings answered"),
        );
    }
    row(
        "generator cpu",
        format!(
            "{:.2} s in window, {:.2} s total; open-files limit {}",
            r.gen_cpu_s,
            r.gen_cpu_total_s,
            opt(r.open_files_limit)
        ),
    );
    for (e, n) in &r.connect_errors {
        row("connect error", format!("{n} × {e}"));
    }
    for (e, n) in &r.server_close_reasons {
        row("closed by server", format!("{n} × {e}"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::super::Protocol;
    use super::*;

    fn settings(scenario: Scenario) -> Settings {
        Settings {
            scenario,
            protocol: Protocol::Room,
            url: "ws://127.0.0.1:1".to_owned(),
            clients: 6,
            rooms: 2,
            senders: 2,
            rate: 10.0,
            max_inflight: 8,
            warmup_s: 0.0,
            duration_s: 2.0,
            settle_s: 1.0,
            connect_timeout_s: 10.0,
            procs: 2,
            threads: 1,
            source_addrs: 1,
            concurrency: 4,
        }
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).expect("in range");
        }
        let s = summarize(&h).expect("non-empty");
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, 1);
        assert_eq!(s.max, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert!((s.mean - 500.5).abs() < 0.5, "{}", s.mean);
        assert!(summarize(&new_histogram()).is_none());
    }

    #[test]
    fn histogram_pairs_roundtrip_keeps_percentiles() {
        let mut h = new_histogram();
        for v in [3, 3, 70, 1500, 1501, 250_000, 9_999_999] {
            h.record(v).expect("in range");
        }
        h.saturating_record(u64::MAX);
        let pairs = histogram_to_pairs(&h);
        let mut back = new_histogram();
        add_pairs(&mut back, &pairs);
        add_pairs(&mut back, &pairs);
        assert_eq!(back.len(), 2 * h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
    }

    #[test]
    fn expected_deliveries_sum_over_processes_per_room() {
        // Room 0: 2 members in process A + 1 in B, 10 messages sent (A).
        // Room 1: 1 member in A + 2 in B (one of them closed), 5 messages (B).
        let a = Partial {
            connected: 3,
            room_sent: vec![10, 0],
            room_members: vec![2, 1],
            room_live: vec![2, 1],
            room_delivered: vec![20, 5],
            room_delivered_live: vec![20, 5],
            latency_us: vec![(100, 25)],
            gen_cpu_window_s: 0.5,
            ..Partial::default()
        };
        let b = Partial {
            connected: 3,
            server_closed: 1,
            room_sent: vec![0, 5],
            room_members: vec![1, 2],
            room_live: vec![1, 1],
            room_delivered: vec![9, 7],
            room_delivered_live: vec![9, 5],
            latency_us: vec![(200, 16)],
            gen_cpu_window_s: 0.25,
            ..Partial::default()
        };
        let server = ServerFigures {
            pid: Some(1),
            cpu_s: Some(0.5),
            ..ServerFigures::default()
        };
        let r = build_report(&settings(Scenario::Fanout), &[a, b], &server, 3.0);
        assert_eq!(r.sent, Some(15));
        assert_eq!(r.expected, Some(10 * 3 + 5 * 3));
        assert_eq!(r.delivered, Some(41));
        assert_eq!(r.lost, Some(4));
        assert_eq!(r.expected_live, Some(10 * 3 + 5 * 2));
        assert_eq!(r.delivered_live, Some(39));
        assert_eq!(r.lost_live, Some(1));
        assert_eq!(r.deliveries_per_s, Some(20.5));
        assert_eq!(r.deliveries_per_server_cpu_s, Some(82.0));
        assert_eq!(r.server_closed, 1);
        assert_eq!(r.connected, 6);
        assert!((r.gen_cpu_s - 0.75).abs() < 1e-9);
        assert_eq!(r.latency.map(|l| l.count), Some(41));
        assert!(r.handshakes.is_none() && r.join_kept.is_none());
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(!json.contains('\n'));
        assert!(table(&r).contains("deliveries/s"));
    }

    #[test]
    fn join_burst_completeness() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let a = Partial {
            connected: 2,
            kept: names(&["u0", "u2"]),
            finals: vec![(2, names(&["u0", "u1", "u2"]))],
            ..Partial::default()
        };
        let b = Partial {
            connected: 1,
            kept: names(&["u1"]),
            finals: vec![(1, names(&["u0", "u1", "u2"]))],
            ..Partial::default()
        };
        let s = settings(Scenario::JoinBurst);
        let r = build_report(&s, &[a.clone(), b], &ServerFigures::default(), 1.0);
        assert_eq!(r.join_kept, Some(3));
        assert_eq!(r.join_complete_clients, Some(3));
        assert_eq!(r.join_online_users_complete, Some(true));
        // Without b, u1 is not kept but still listed: incomplete.
        let r = build_report(&s, &[a], &ServerFigures::default(), 1.0);
        assert_eq!(r.join_kept, Some(2));
        assert_eq!(r.join_complete_clients, Some(0));
        assert_eq!(r.join_online_users_complete, Some(false));
        assert!(r.delivered.is_none());
    }

    #[test]
    fn idle_rss_per_connection() {
        let p = Partial {
            connected: 1000,
            ..Partial::default()
        };
        let server = ServerFigures {
            pid: Some(9),
            rss_before_kib: Some(10_000),
            rss_after_kib: Some(30_000),
            ..ServerFigures::default()
        };
        let r = build_report(&settings(Scenario::Idle), &[p], &server, 1.0);
        assert_eq!(r.server_rss_per_conn_bytes, Some(20_480.0));
        assert!(table(&r).contains("bytes/connection"));
    }
}
