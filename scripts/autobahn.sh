#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzing client against
# hubbub's /ws relay (a lone anonymous connection there is an exact echo).
#
#   scripts/autobahn.sh [cases]     cases as scripts/autobahn/run.sh takes them (default: all
#                                   but the permessage-deflate groups 12 and 13)
#
# Builds the release binary, starts it on a free loopback port with the
# message limit raised for the 16 MiB cases of group 9, runs the suite with
# strict closing-handshake verdicts, and stops the server it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release --locked -p hubbub
PORT="${AUTOBAHN_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
LOG="${AB_OUTDIR:-/tmp/autobahn-reports/hubbub-$PORT}/server.log"
mkdir -p "$(dirname "$LOG")"
RUST_LOG="${RUST_LOG:-warn}" "${CARGO_TARGET_DIR:-target}/release/hubbub" --listen "127.0.0.1:$PORT" \
  --max-message-bytes 67108864 --send-queue 1024 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
AB_AGENT=hubbub AB_STRICT_CLOSE=1 AB_TIMEOUT="${AB_TIMEOUT:-240}" \
  bash scripts/autobahn/run.sh "ws://127.0.0.1:$PORT/ws" "${1:-*}"
