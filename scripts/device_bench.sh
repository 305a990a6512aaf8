#!/usr/bin/env bash
# The scaling measurements of the shards issue, in one bounded run, for a
# machine with at least 16 cores (../shared/device-bench.md): the server
# pinned to the first N cores with --shards N (N = 1, 2, 4, 8), the load
# generator pinned to cores 8-15 with 8 threads. Prints one JSON line per
# run (and writes them to $OUT/device-bench.jsonl when $OUT is set).
#
#   scripts/device_bench.sh [BIN_DIR]        # BIN_DIR holds hubbub and hubbub-load
#
# Runs, for each shard count:
#   fanout     1 room × 1,000 clients, 10 senders × 100 msg/s (1 M deliveries/s offered)
#   saturated  1 room × 2,000 clients, 16 senders flat out, 32 in flight each
#   rooms      100 rooms × 20 clients, 2 msg/s each
# Each run is bounded by `timeout`; every server started is stopped by PID.
# SMALL=1 shrinks everything (for a rehearsal on a small machine).
set -euo pipefail
BIN="${1:-target/release}"
OUT_FILE="${OUT:-/tmp}/device-bench.jsonl"
: >"$OUT_FILE"
CORES=$(nproc)
SHARDS="${SHARDS:-1 2 4 8}"
GEN_CPUS="${GEN_CPUS:-8-15}"
THREADS="${THREADS:-8}"
DURATION="${DURATION:-5}"
if [[ "${SMALL:-}" == 1 ]]; then
  SHARDS="1 2"; GEN_CPUS="0-$((CORES - 1))"; THREADS=1; DURATION=2
fi
scale() { if [[ "${SMALL:-}" == 1 ]]; then echo $(( $1 / 10 )); else echo "$1"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name shards -- load args...
  local name=$1 shards=$2; shift 3
  local port cpus pid out
  port=$(free_port)
  if [[ "${SMALL:-}" == 1 ]]; then cpus="0-$((CORES - 1))"; else cpus="0-$((shards - 1))"; fi
  RUST_LOG=warn taskset -c "$cpus" "$BIN/hubbub" --listen "127.0.0.1:$port" --shards "$shards" &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  out=$(timeout 120 taskset -c "$GEN_CPUS" "$BIN/hubbub-load" --url "ws://127.0.0.1:$port" \
    --server-pid "$pid" --threads "$THREADS" --json-only --duration "$DURATION" "$@" 2>/dev/null | tail -1 || true)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local line="{\"run\":\"$name\",\"shards\":$shards,\"result\":${out:-null}}"
  echo "$line" | tee -a "$OUT_FILE"
}

for n in $SHARDS; do
  run fanout "$n" -- --scenario fanout --clients "$(scale 1000)" --rooms 1 --senders 10 --rate 100
  run saturated "$n" -- --scenario fanout --clients "$(scale 2000)" --rooms 1 --senders 16 --rate 0 --max-inflight 32
  run rooms "$n" -- --scenario rooms --clients "$(scale 2000)" --rooms "$(scale 100)" --rate 2
done
