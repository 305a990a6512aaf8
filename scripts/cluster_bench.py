#!/usr/bin/env python3
"""Several hubbub nodes on one Redis (`--store redis`) against one node.

    scripts/cluster_bench.py [--reps 3] [--nodes 5] [--clients 95000]
                             [--single-clients 19000] [--relay-clients 1000]
                             [--only idle,fanout,fanout-big,relay]
                             [--no-build] [--out target/cluster-bench.json]
                             [--node-args '--presence-ttl 30s']

Starts its own redis-server (no persistence) on a free 127.0.0.1 port in a
temporary directory for every run, the hubbub nodes (release build,
`--store redis`, one shard each, RUST_LOG=warn) on free ports, and
`hubbub-load` with one `--url` per node (client i connects to node i mod
N) and every node's pid (CPU and RSS are sums over the nodes). Runs, each
`--reps` times, alternating:

  idle-cluster   N nodes hold --clients Centrifugo connections (997 channels)
  idle-single    1 node holds --single-clients the same way
  fanout-single  1 node: --single-clients clients in 97 rooms, one sender
                 per room at 1 msg/s (97 publications/s, ~19,000
                 deliveries/s: what 2 cores carry with the generator)
  fanout-cluster N nodes, the same load (97 is prime: every room's members
                 are spread over all the nodes)
  fanout-big     N nodes: --clients clients in 487 rooms, one sender per
                 room at 0.2 msg/s (the same deliveries per second, 5× the
                 connections)
  relay-single   1 node: --relay-clients seed-000 relay clients (`/ws`),
                 10 of them sending 10 frames/s each (100 frames/s, each to
                 every client: ~100,000 deliveries/s)
  relay-cluster  N nodes, the same load: every frame crosses Redis pub/sub

For each: server RSS per node (VmRSS with the clients connected; idle),
Redis RSS (`INFO memory` used_memory_rss), deliveries per server CPU-second
(all nodes' CPU summed), p50/p99 end-to-end latency, and Redis CPU per
publication: `INFO cpu` used_cpu_sys + used_cpu_user read when every
client is connected and subscribed and again when the generator is done,
over the publications made in between (`INFO commandstats`: calls of
`publish`, which the append script runs once per publication).

Loopback only. Every process it starts is stopped by its PID (SIGTERM, then
SIGKILL), also on an error or Ctrl-C; every run is bounded by the load
generator's own limits and a timeout here.
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
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUBBUB = os.path.join(ROOT, "target/release/hubbub")
LOAD = os.path.join(ROOT, "target/release/hubbub-load")

STARTED = []  # every Popen this script started and has not yet stopped


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
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(cmd, env=None):
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(proc)
    return proc


def stop(proc, timeout=15):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all():
    for proc in list(reversed(STARTED)):
        stop(proc, timeout=5)


def redis_info(port):
    """`INFO` of the Redis on `port` as a dict (all sections)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO all\r\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.startswith(b"$"):
                head, _, rest = buf.partition(b"\r\n")
                if len(rest) >= int(head[1:]):
                    break
    out = {}
    for line in buf.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def redis_cpu(info):
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def redis_calls(info, command):
    stats = info.get(f"cmdstat_{command}", "")
    for part in stats.split(","):
        if part.startswith("calls="):
            return int(part[len("calls="):])
    return 0


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Cluster:
    """A Redis and `n` hubbub nodes on it."""

    def __init__(self, n, extra=()):
        self.dir = tempfile.mkdtemp(prefix="hubbub-cluster-bench-")
        self.redis_port = free_port()
        self.redis = start(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--daemonize", "no",
                            "--protected-mode", "no", "--dir", self.dir])
        wait_port(self.redis_port, self.redis)
        self.ports, self.nodes = [], []
        for _ in range(n):
            port = free_port()
            node = start([HUBBUB, "--listen", f"127.0.0.1:{port}", "--store", "redis",
                          "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--shards", "1", *extra],
                         {"RUST_LOG": "warn"})
            self.ports.append(port)
            self.nodes.append(node)
        for port, node in zip(self.ports, self.nodes):
            wait_port(port, node)

    def close(self):
        for node in self.nodes:
            stop(node)
        stop(self.redis)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_load(cluster, args, timeout):
    """Runs hubbub-load against every node; samples Redis and the nodes once
    all clients are connected. Returns the report with the samples added."""
    protocol = [] if "--protocol" in args else ["--protocol", "centrifuge"]
    cmd = [LOAD, *protocol, "--json-only",
           "--url", ",".join(f"ws://127.0.0.1:{p}" for p in cluster.ports),
           "--server-pid", ",".join(str(n.pid) for n in cluster.nodes), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    sample = {}
    err_tail = []

    def read_stderr():
        for line in proc.stderr:
            err_tail.append(line)
            del err_tail[:-20]
            if "processes ready" in line and not sample:
                info = redis_info(cluster.redis_port)
                sample["redis_cpu_ready"] = redis_cpu(info)
                sample["publish_calls_ready"] = redis_calls(info, "publish")
                # Idle: the generator holds the clients for --duration after
                # a second; sample RSS while they are all held.
                time.sleep(1.5)
                sample["node_rss_kib"] = [status_kib(n.pid, "VmRSS") for n in cluster.nodes]
                info = redis_info(cluster.redis_port)
                sample["redis_rss_kib"] = int(info["used_memory_rss"]) // 1024
                sample["redis_used_memory_kib"] = int(info["used_memory"]) // 1024
                sample["redis_pubsub_channels"] = int(info.get("pubsub_channels", 0))

    out_lines = []

    def read_stdout():
        for line in proc.stdout:
            out_lines.append(line)

    # Both pipes are read by threads: communicate() would race the stderr
    # reader for the "processes ready" line.
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    out_reader = threading.Thread(target=read_stdout, daemon=True)
    out_reader.start()
    try:
        proc.wait(timeout=timeout)
        out_reader.join(timeout=10)
        out = "".join(out_lines)
    except subprocess.TimeoutExpired:
        stop(proc, timeout=5)
        return {"error": f"hubbub-load timed out after {timeout} s"}
    finally:
        if proc in STARTED:
            STARTED.remove(proc)
    reader.join(timeout=10)
    info = redis_info(cluster.redis_port)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        return {"error": "".join(err_tail)[-600:]}
    r = json.loads(lines[-1])
    r.update(sample)
    if "redis_cpu_ready" in sample:
        pubs = redis_calls(info, "publish") - sample["publish_calls_ready"]
        if pubs <= 0:  # a Redis that does not count scripts' commands
            pubs = r.get("sent") or 0
        r["redis_publications"] = pubs
        r["redis_cpu_s"] = redis_cpu(info) - sample["redis_cpu_ready"]
        r["redis_cpu_us_per_publication"] = r["redis_cpu_s"] * 1e6 / pubs if pubs else None
    return r


def runs(opts):
    n, big, small = opts.nodes, opts.clients, opts.single_clients
    # At least 2: the samples below wait for the parent's "processes
    # ready" line, which only a multi-process run prints.
    procs_big = max(2, -(-big // 19000))
    idle = ["--scenario", "idle", "--rooms", "997", "--duration", "3", "--connect-timeout", "150"]
    fan = ["--scenario", "fanout", "--warmup", "1", "--duration", "10", "--connect-timeout", "150"]
    relay = ["--protocol", "relay", "--clients", str(opts.relay_clients), "--senders", "10", "--rate", "10",
             "--procs", "2"]
    return [
        ("idle-cluster", "idle", n, [*idle, "--clients", str(big), "--procs", str(procs_big)]),
        ("idle-single", "idle", 1, [*idle, "--clients", str(small), "--procs", "2"]),
        ("fanout-single", "fanout", 1,
         [*fan, "--clients", str(small), "--rooms", "97", "--senders", "97", "--rate", "1", "--procs", "2"]),
        ("fanout-cluster", "fanout", n,
         [*fan, "--clients", str(small), "--rooms", "97", "--senders", "97", "--rate", "1", "--procs", "2"]),
        ("fanout-big", "fanout-big", n,
         [*fan, "--clients", str(big), "--rooms", "487", "--senders", "487", "--rate", "0.2",
          "--procs", str(procs_big)]),
        # The seed-000 relay (`/ws`): every frame to every client of every node.
        ("relay-single", "relay", 1, [*fan, *relay]),
        ("relay-cluster", "relay", n, [*fan, *relay]),
    ]


def dig(obj, path):
    for key in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def med(rs, f):
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--clients", type=int, default=95000)
    ap.add_argument("--single-clients", type=int, default=19000)
    ap.add_argument("--relay-clients", type=int, default=1000)
    ap.add_argument("--only", default="", help="comma-separated: idle, fanout, fanout-big, relay")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/cluster-bench.json"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--node-args", default="", help="more flags for every hubbub node (space-separated)")
    opts = ap.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found (apt-get install redis-server)")
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "hubbub", "-p", "hubbub-loadgen"], cwd=ROOT, check=True)
    only = {x for x in opts.only.split(",") if x}
    plan = [r for r in runs(opts) if not only or r[1] in only]
    results = {name: [] for name, *_ in plan}
    raw = []
    try:
        for rep in range(opts.reps):
            for name, _, nodes, args in plan:
                cluster = Cluster(nodes, opts.node_args.split())
                try:
                    r = run_load(cluster, args, timeout=400)
                finally:
                    cluster.close()
                raw.append({"run": name, "rep": rep, "result": r})
                results[name].append(r)
                print(f"{name} rep {rep}: connected={fmt(r.get('connected'))} "
                      f"rss/node={fmt(med([r], lambda x: statistics.mean(x['node_rss_kib']) if x.get('node_rss_kib') else None))} KiB "
                      f"redis_rss={fmt(r.get('redis_rss_kib'))} KiB "
                      f"deliv/cpu-s={fmt(r.get('deliveries_per_server_cpu_s'), 0)} "
                      f"p99={fmt(dig(r, 'latency.p99'), 0)} µs "
                      f"redis µs/pub={fmt(r.get('redis_cpu_us_per_publication'), 2)} "
                      f"lost_live={fmt(r.get('lost_live'))} closed={fmt(r.get('server_closed'))}"
                      + (f" error={r['error']!r}" if "error" in r else ""), file=sys.stderr, flush=True)
    finally:
        stop_all()
        os.makedirs(os.path.dirname(opts.out), exist_ok=True)
        with open(opts.out, "w") as f:
            json.dump(raw, f, indent=1)

    def rss_node(r):
        rss = r.get("node_rss_kib")
        return statistics.mean(rss) / 1024 if rss and all(rss) else None

    def rss_per_conn(r):
        rss = r.get("node_rss_kib")
        if not rss or not all(rss) or not r.get("connected") or r.get("server_rss_before_kib") is None:
            return None
        return (sum(rss) - r["server_rss_before_kib"]) * 1024 / r["connected"]

    print(f"\nmedians of {opts.reps} runs\n")
    print("| run | nodes | clients connected | RSS per node (MiB) | server bytes/conn | Redis RSS (MiB) "
          "| deliveries/s | deliveries per server CPU-s | p50 / p99 (ms) | Redis CPU µs per publication | lost (live) / closed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _, nodes, _ in plan:
        rs = [r for r in results[name] if "error" not in r]
        p50 = med(rs, lambda r: dig(r, "latency.p50"))
        p99 = med(rs, lambda r: dig(r, "latency.p99"))
        lat = "–" if p99 is None else f"{p50 / 1000:.1f} / {p99 / 1000:.1f}"
        redis_rss = med(rs, lambda r: r.get("redis_rss_kib"))
        print(f"| {name} | {nodes} | {fmt(med(rs, lambda r: r.get('connected')), 0)} "
              f"| {fmt(med(rs, rss_node))} | {fmt(med(rs, rss_per_conn), 0)} "
              f"| {fmt(None if redis_rss is None else redis_rss / 1024)} "
              f"| {fmt(med(rs, lambda r: r.get('deliveries_per_s')), 0)} "
              f"| {fmt(med(rs, lambda r: r.get('deliveries_per_server_cpu_s')), 0)} | {lat} "
              f"| {fmt(med(rs, lambda r: r.get('redis_cpu_us_per_publication')), 2)} "
              f"| {fmt(max((r.get('lost_live') or 0 for r in rs), default=None))} / "
              f"{fmt(max((r.get('server_closed') or 0 for r in rs), default=None))} |")
    print(f"\nraw results: {opts.out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
