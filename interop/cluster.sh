#!/usr/bin/env bash
# The centrifuge-js cluster subset (interop/js/cluster/) against three
# hubbub nodes on one real redis-server: this script starts Redis on a free
# 127.0.0.1 port in a temporary directory (no persistence), passes its URL
# to the tests as HUBBUB_REDIS_URL, and stops it by its PID when done, also
# on failure or interruption. The tests start and stop their own nodes.
#
#   interop/cluster.sh        (HUBBUB_BIN must name the server binary;
#                              interop/run.sh sets it)
#
# Needs redis-server on PATH (Debian: apt-get install redis-server) and
# interop/js/node_modules (interop/run.sh installs it from the lock file).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${HUBBUB_BIN:?set HUBBUB_BIN to the hubbub binary (interop/run.sh does)}"
TIMEOUT="${INTEROP_SUITE_TIMEOUT:-100}"

if ! command -v redis-server >/dev/null; then
  echo "cluster: redis-server not found (apt-get install redis-server)" >&2
  exit 2
fi

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/hubbub-interop-redis-XXXXXX")"
REDIS_PID=""
cleanup() {
  if [[ -n "$REDIS_PID" ]]; then
    kill "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --protected-mode no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS_PID=$!
ping_redis() {
  # PING over bash's /dev/tcp (no redis-cli needed); true on +PONG.
  local line=""
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
  printf 'PING\r\n' >&3
  read -r -t 1 line <&3 || true
  exec 3<&- 3>&-
  [[ "$line" == "+PONG"* ]]
}
for _ in $(seq 100); do
  if ping_redis 2>/dev/null; then break; fi
  if ! kill -0 "$REDIS_PID" 2>/dev/null; then
    echo "cluster: redis-server exited:" >&2; cat "$DIR/redis.log" >&2; exit 1
  fi
  sleep 0.05
done
echo "cluster: redis-server pid $REDIS_PID on 127.0.0.1:$PORT"

export HUBBUB_REDIS_URL="redis://127.0.0.1:$PORT/0"
cd "$HERE/js"
timeout -k 5 "$TIMEOUT" node --test --test-concurrency=1 cluster/
