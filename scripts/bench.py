#!/usr/bin/env python3
"""Side-by-side benchmark of hubbub against the seed Go servers.

    scripts/bench.py [--reps 3] [--only T1,T5] [--out bench-results.json]
                     [--servers hubbub] [--shards 1,2]
                     [--stores sqlite,memory,off]

Builds hubbub and the load generator (release), builds the seed peers with
../shared/peers/build.sh if /tmp/peers is missing, then for every target of
issue 4 runs each server in turn (alternating, a fresh process per run, so
RSS and CPU figures are the run's own), `--reps` times, with the same
`hubbub-load` invocation. Prints a Markdown table of medians and ratios
and writes every raw JSON line to --out.

hubbub runs on its defaults: history in the SQLite store, in a fresh
temporary --data-dir per run. `--stores` runs hubbub once per store instead:
sqlite (the default), full (sqlite with --history-sync full), memory
(--store memory), off (--history-size 0: no history at all), and memory1 /
record (one shard, in memory, without / with --record-inputs).

Loopback only; every run is bounded by the load generator's own limits.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("PEERS_OUT", "/tmp/peers")
HUBBUB = os.path.join(ROOT, "target/release/hubbub")
LOAD = os.path.join(ROOT, "target/release/hubbub-load")

# hubbub's history store flags per --stores name.
STORES = {
    "sqlite": [],
    "full": ["--history-sync", "full"],
    "memory": ["--store", "memory"],
    "off": ["--history-size", "0"],
    # --record-inputs costs (BENCHMARKS.md): one shard, in-memory history,
    # without and with the recording (a fresh file per run).
    "memory1": ["--store", "memory", "--shards", "1"],
    "record": ["--store", "memory", "--shards", "1", "--record-inputs",
               os.path.join(tempfile.gettempdir(), "hubbub-bench-record.bin")],
}


def hubbub_cmd(port, extra=(), binary=None):
    """hubbub on `port` with a fresh data directory (its store starts empty)."""
    data = tempfile.mkdtemp(prefix="hubbub-bench-")
    return ([binary or HUBBUB, "--listen", f"127.0.0.1:{port}", "--data-dir", data, *extra], {"RUST_LOG": "warn"})


# name -> (command builder, protocols it speaks)
SERVERS = {
    "hubbub": (lambda port: hubbub_cmd(port), {"room", "relay", "centrifuge"}),
    "seed001": (lambda port: ([f"{PEERS}/seed001"], {"PORT": str(port), "GIN_MODE": "release"}), {"room"}),
    "seed000": (lambda port: ([f"{PEERS}/seed000"], {"PORT": str(port)}), {"relay"}),
}

# id, title, load args, metric (json path), better ("high"/"low"), target text
TARGETS = [
    ("T1", "fanout 1 room × 1,000 clients, 10 senders × 100 msg/s",
     ["--scenario", "fanout", "--clients", "1000", "--rooms", "1", "--senders", "10", "--rate", "100", "--duration", "5"],
     "deliveries_per_server_cpu_s", "high", "deliveries per server CPU-s ≥ 3× the better peer; none evicted, none lost"),
    ("T2", "fanout 1 room × 1,000 clients, 10 senders × 10 msg/s",
     ["--scenario", "fanout", "--clients", "1000", "--rooms", "1", "--senders", "10", "--rate", "10", "--duration", "5"],
     "latency.p99", "low", "p99 latency ≤ ½ of the better peer"),
    ("T3", "200 clients, 4 senders flat out",
     ["--scenario", "fanout", "--clients", "200", "--rooms", "1", "--senders", "4", "--rate", "0", "--duration", "5"],
     "deliveries_per_s", "high", "deliveries/s ≥ the better peer, 0 evicted"),
    ("T4", "rooms: 100 rooms × 20 clients, 2 msg/s each",
     ["--scenario", "rooms", "--clients", "2000", "--rooms", "100", "--rate", "2", "--duration", "5"],
     "latency.p99", "low", "p99 ≤ 5 ms"),
    ("T5", "idle: 19,000 connections",
     ["--scenario", "idle", "--clients", "19000", "--procs", "2", "--duration", "3"],
     "server_rss_per_conn_bytes", "low", "≤ 4 KiB server RSS per connection"),
    ("T6", "connect: handshakes/s",
     ["--scenario", "connect", "--duration", "5"],
     "handshakes_per_s", "high", "≥ 1.5× the better peer"),
    ("T7", "join burst: 1,000 clients into one room",
     ["--scenario", "join-burst", "--clients", "1000", "--duration", "20"],
     "join_kept", "high", "all 1,000 kept, every online_users complete"),
    # Durable history (issue 9): SDK clients publishing, each alone in its
    # channel, so every publication is one append and one delivery (its own
    # copy, sent in the same step as the publisher's reply, after the commit).
    ("D1", "publish 1,000/s: 100 SDK clients × 10/s, one channel each",
     ["--scenario", "rooms", "--clients", "100", "--rooms", "100", "--rate", "10", "--duration", "5"],
     "latency.p99", "low", "publish → durable → own copy, p99"),
    ("D2", "publish 10,000/s: 500 SDK clients × 20/s, one channel each",
     ["--scenario", "rooms", "--clients", "500", "--rooms", "500", "--rate", "20", "--duration", "5"],
     "latency.p99", "low", "p99 ≤ 5 ms with --history-sync normal"),
    ("D3", "publish flat out: 100 SDK clients, one channel each, 64 in flight",
     ["--scenario", "rooms", "--clients", "100", "--rooms", "100", "--rate", "0", "--duration", "5"],
     "deliveries_per_s", "high", "durable publications per second"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def dig(obj, path):
    for key in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def flat_out(args):
    """Whether a test's senders send as fast as they can (`--rate 0`)."""
    return any(a == "--rate" and b == "0" for a, b in zip(args, args[1:]))


def run_one(server, protocol, args):
    build, _ = SERVERS[server]
    port = free_port()
    cmd, env = build(port)
    if server.startswith("hubbub") and server != "hubbub-baseline" and flat_out(args):
        # A flat-out sender is a flood by design: the per-connection and
        # per-user rate limits (on by default) would be what is measured.
        cmd = [*cmd, "--command-rate", "0", "--user-publish-rate", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        load = [LOAD, "--url", f"ws://127.0.0.1:{port}", "--protocol", protocol,
                "--server-pid", str(proc.pid), "--json-only", *args]
        out = subprocess.run(load, capture_output=True, text=True, timeout=300)
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if not lines:
            return {"error": (out.stderr or out.stdout)[-400:]}
        return json.loads(lines[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if "--data-dir" in cmd:
            shutil.rmtree(cmd[cmd.index("--data-dir") + 1], ignore_errors=True)


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench-results.json"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--servers", default="", help="comma-separated subset of the servers (hubbub, seed001, seed000)")
    ap.add_argument("--shards", default="", help="comma-separated shard counts: run hubbub once per count (hubbub-sN)")
    ap.add_argument("--stores", default="", help="comma-separated history stores: run hubbub once per store (hubbub-STORE): " + ",".join(STORES))
    ap.add_argument("--baseline", default="", help="another hubbub binary (an earlier build) to run as hubbub-baseline, alternating with this one")
    opts = ap.parse_args()
    if opts.baseline:
        SERVERS["hubbub-baseline"] = (lambda port: hubbub_cmd(port, binary=opts.baseline), SERVERS["hubbub"][1])
    if opts.shards:
        base = SERVERS.pop("hubbub")
        for n in [int(x) for x in opts.shards.split(",") if x]:
            SERVERS[f"hubbub-s{n}"] = (lambda port, n=n: hubbub_cmd(port, ["--shards", str(n)]), base[1])
    if opts.stores:
        base = SERVERS.pop("hubbub")
        for name in [x for x in opts.stores.split(",") if x]:
            SERVERS[f"hubbub-{name}"] = (lambda port, f=STORES[name]: hubbub_cmd(port, f), base[1])
    if opts.servers:
        keep = {x for x in opts.servers.split(",") if x}
        for name in list(SERVERS):
            if name not in keep and not (name.startswith("hubbub-") and "hubbub" in keep):
                SERVERS.pop(name)
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "hubbub", "-p", "hubbub-loadgen"], cwd=ROOT, check=True)
    if not (os.path.exists(f"{PEERS}/seed000") and os.path.exists(f"{PEERS}/seed001")):
        subprocess.run(["bash", os.path.join(ROOT, "../shared/peers/build.sh")], check=True)
    only = {t for t in opts.only.split(",") if t}
    raw = []
    rows = []
    for tid, title, args, metric, better, goal in TARGETS:
        if only and tid not in only:
            continue
        # The rooms and join-burst scenarios only mean something with rooms.
        if tid.startswith("D"):
            protocols = ("centrifuge",)
        elif tid in ("T4", "T7"):
            protocols = ("room",)
        else:
            protocols = ("room", "relay")
        combos = [(s, p) for s in SERVERS for p in protocols if p in SERVERS[s][1]]
        results = {c: [] for c in combos}
        for rep in range(opts.reps):
            for combo in combos:  # alternate servers within each repetition
                r = run_one(combo[0], combo[1], args)
                raw.append({"target": tid, "server": combo[0], "protocol": combo[1], "rep": rep, "result": r})
                results[combo].append(r)
                print(f"{tid} rep {rep} {combo[0]}/{combo[1]}: {metric}={fmt(dig(r, metric))}"
                      f" closed={fmt(r.get('server_closed'))} lost_live={fmt(r.get('lost_live'))}"
                      + (f" error={r['error']!r}" if "error" in r else ""), file=sys.stderr, flush=True)
        med = {}
        for combo, rs in results.items():
            vals = [dig(r, metric) for r in rs if dig(r, metric) is not None]
            closed = [r.get("server_closed") or 0 for r in rs if "error" not in r]
            lost = [r.get("lost_live") or 0 for r in rs if "error" not in r]
            complete = [r.get("join_online_users_complete") for r in rs if r.get("join_online_users_complete") is not None]
            med[combo] = (statistics.median(vals) if vals else None,
                          max(closed) if closed else None, max(lost) if lost else None,
                          all(complete) if complete else None)
        peers = [v[0] for c, v in med.items() if not c[0].startswith("hubbub") and v[0] is not None]
        best_peer = (max(peers) if better == "high" else min(peers)) if peers else None
        for combo, (value, closed, lost, complete) in med.items():
            ratio = None
            if combo[0].startswith("hubbub") and best_peer and value:
                ratio = value / best_peer if better == "high" else best_peer / value
            rows.append((tid, title, f"{combo[0]} ({combo[1]})", metric, value, ratio, closed, lost, complete, goal))
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(raw, f, indent=1)
    print(f"\nmedians of {opts.reps} runs; ratio = how many times better hubbub is than the better seed peer\n")
    print("| target | server | metric | median | × better peer | max closed by server | max lost (live) | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for tid, title, server, metric, value, ratio, closed, lost, complete, goal in rows:
        extra = "" if complete is None else (" (online_users complete)" if complete else " (online_users INCOMPLETE)")
        print(f"| {tid} {title} | {server} | {metric} | {fmt(value)}{extra} | "
              f"{'' if ratio is None else f'{ratio:.2f}×'} | {fmt(closed)} | {fmt(lost)} | {goal} |")
    print(f"\nraw results: {opts.out}")


if __name__ == "__main__":
    main()
