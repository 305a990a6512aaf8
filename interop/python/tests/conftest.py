import asyncio
import itertools
import os
import uuid

import pytest

from hubbub_server import Server
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

_seq = itertools.count(1)


@pytest.fixture(scope="module")
def server():
    srv = Server().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def channel():
    return f"py_{os.getpid()}_{next(_seq)}_{uuid.uuid4().hex[:6]}"


class Recorder(ClientEventHandler):
    """Client events, recorded, each with an asyncio.Event per kind."""

    def __init__(self):
        self.events = []  # (kind, ctx)
        self.changed = asyncio.Event()

    def _rec(self, kind, ctx):
        self.events.append((kind, ctx))
        self.changed.set()

    async def on_connecting(self, ctx):
        self._rec("connecting", ctx)

    async def on_connected(self, ctx):
        self._rec("connected", ctx)

    async def on_disconnected(self, ctx):
        self._rec("disconnected", ctx)

    async def on_error(self, ctx):
        self._rec("error", ctx)

    def of(self, kind):
        return [c for k, c in self.events if k == kind]


class SubRecorder(SubscriptionEventHandler):
    def __init__(self):
        self.events = []
        self.changed = asyncio.Event()

    def _rec(self, kind, ctx):
        self.events.append((kind, ctx))
        self.changed.set()

    async def on_subscribing(self, ctx):
        self._rec("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self._rec("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self._rec("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self._rec("publication", ctx)

    async def on_join(self, ctx):
        self._rec("join", ctx)

    async def on_leave(self, ctx):
        self._rec("leave", ctx)

    async def on_error(self, ctx):
        self._rec("error", ctx)

    def of(self, kind):
        return [c for k, c in self.events if k == kind]


async def wait_until(pred, timeout=5.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if pred():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_client():
    """Factory: make_client(url, **kw) -> (client, recorder); all disconnected at teardown."""
    made = []

    def factory(url, **kw):
        rec = Recorder()
        opts = dict(events=rec, timeout=4.0, min_reconnect_delay=0.1, max_reconnect_delay=1.0, proxy=None)
        opts.update(kw)
        c = Client(url, **opts)
        made.append(c)
        return c, rec

    yield factory
    for c in made:
        try:
            await asyncio.wait_for(c.disconnect(), 3)
        except Exception:
            pass
