"""Start/stop hubbub processes for the Python interop tests.

Each test module starts its own server(s) on a free 127.0.0.1 port and kills
only the processes it started (by PID), also on failure, on SIGTERM/SIGINT
and at interpreter exit.

Environment: HUBBUB_BIN (default <repo>/target/release/hubbub),
HUBBUB_EXTRA_ARGS (extra flags, whitespace-separated), HUBBUB_LOG=1 (echo the
server's output to stderr).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[3]
HUBBUB_BIN = (REPO_ROOT / os.environ.get("HUBBUB_BIN", "target/release/hubbub")).resolve()
EXTRA_ARGS = os.environ.get("HUBBUB_EXTRA_ARGS", "").split()

_live: "set[Server]" = set()


def _kill_all() -> None:
    for srv in list(_live):
        srv.kill()


atexit.register(_kill_all)


def _on_signal(signum, _frame):  # pragma: no cover - only on interruption
    _kill_all()
    sys.exit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    try:
        signal.signal(_sig, _on_signal)
    except (ValueError, OSError):  # not the main thread
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """One hubbub process."""

    def __init__(self, port: Optional[int] = None, args: Optional[List[str]] = None):
        self.port = port or free_port()
        self.argv = [
            str(HUBBUB_BIN),
            "--listen", f"127.0.0.1:{self.port}",
            "--ping-interval", "2s",
            "--pong-timeout", "4s",
            *(args or []),
            *EXTRA_ARGS,
        ]
        if "--store" not in self.argv and "--data-dir" not in self.argv:
            # Its history in a directory of its own, gone with this process.
            self._data = tempfile.TemporaryDirectory(prefix="hubbub-interop-")
            self.argv += ["--data-dir", self._data.name]
        self.url = f"ws://127.0.0.1:{self.port}/connection/websocket"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def start(self, timeout: float = 10.0) -> "Server":
        if not HUBBUB_BIN.exists():
            raise RuntimeError(f"server binary not found: {HUBBUB_BIN} (set HUBBUB_BIN)")
        if os.environ.get("HUBBUB_LOG"):
            out = None  # inherit stderr/stdout
        else:
            self._log = tempfile.TemporaryFile()
            out = self._log
        env = {"RUST_LOG": "info", **os.environ}
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None, env=env
        )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _live.discard(self)
                raise RuntimeError(
                    f"hubbub exited with {self.proc.returncode} before listening: "
                    f"{' '.join(self.argv)}\n{self.log()}"
                )
            if _can_connect(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"hubbub did not listen on {self.port} within {timeout} s\n{self.log()}")

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-20000:].decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> Optional[int]:
        """Send `sig` to this PID; wait (bounded) for exit, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        _live.discard(self)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        _live.discard(self)
