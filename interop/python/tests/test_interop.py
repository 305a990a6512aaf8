"""centrifuge-python against hubbub's /connection/websocket."""

import asyncio
import re

import pytest
from centrifuge import ClientState, ReplyError, SubscriptionState

from conftest import SubRecorder, wait_until
from hubbub_server import Server

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


async def connected(make_client, url):
    client, rec = make_client(url)
    await asyncio.wait_for(client.connect(), 5)
    await client.ready(timeout=5)
    return client, rec


async def subscribed(client, channel, **kw):
    srec = SubRecorder()
    sub = client.new_subscription(channel, events=srec, **kw)
    await asyncio.wait_for(sub.subscribe(), 5)
    await sub.ready(timeout=5)
    return sub, srec


async def test_connect(server, make_client):
    client, rec = await connected(make_client, server.url)
    assert client.state == ClientState.CONNECTED
    ctx = rec.of("connected")[0]
    assert UUID_RE.match(ctx.client), ctx.client
    assert client.client_id == ctx.client
    assert isinstance(ctx.version, str)


async def test_publish_publication_offsets_and_info(server, make_client, channel):
    a, arec = await connected(make_client, server.url)
    b, _ = await connected(make_client, server.url)
    sub_a, ra = await subscribed(a, channel)
    sub_b, rb = await subscribed(b, channel)
    assert sub_a.state == SubscriptionState.SUBSCRIBED

    await asyncio.wait_for(a.publish(channel, {"text": "one"}), 5)
    await asyncio.wait_for(sub_a.publish({"text": "two"}), 5)
    await wait_until(lambda: len(ra.of("publication")) >= 2 and len(rb.of("publication")) >= 2,
                     what="two publications on both clients")
    a_id = arec.of("connected")[0].client
    for who, r in (("publisher", ra), ("other", rb)):
        pubs = [c.pub for c in r.of("publication")]
        assert [p.data for p in pubs] == [{"text": "one"}, {"text": "two"}], who
        assert [p.offset for p in pubs] == [1, 2], who
        for p in pubs:
            assert p.info is not None, who
            assert p.info.client == a_id, who
            assert p.info.user == "", who
    await asyncio.sleep(0.2)
    assert len(ra.of("publication")) == 2, "no duplicates"


async def test_join_leave(server, make_client, channel):
    a, arec = await connected(make_client, server.url)
    sub_a, ra = await subscribed(a, channel, join_leave=True)
    a_id = arec.of("connected")[0].client
    await wait_until(lambda: len(ra.of("join")) >= 1, what="own join")
    assert ra.of("join")[0].info.client == a_id

    b, brec = await connected(make_client, server.url)
    b_id = brec.of("connected")[0].client
    sub_b, _ = await subscribed(b, channel)
    await wait_until(lambda: any(j.info.client == b_id for j in ra.of("join")), what="B's join")
    await asyncio.wait_for(sub_b.unsubscribe(), 5)
    await wait_until(lambda: any(l.info.client == b_id for l in ra.of("leave")), what="B's leave")


async def test_presence_and_presence_stats(server, make_client, channel):
    a, arec = await connected(make_client, server.url)
    b, brec = await connected(make_client, server.url)
    await subscribed(a, channel)
    await subscribed(b, channel)
    ids = {arec.of("connected")[0].client, brec.of("connected")[0].client}

    pres = await a.presence(channel, timeout=5)
    assert set(pres.clients) == ids
    for cid, info in pres.clients.items():
        assert info.client == cid
        assert info.user == ""

    stats = await a.presence_stats(channel, timeout=5)
    assert stats.num_clients == 2
    assert stats.num_users == 1


async def test_history_limit_zero(server, make_client, channel):
    a, _ = await connected(make_client, server.url)
    await subscribed(a, channel)  # history for subscribers; keeps the channel alive
    empty = await a.history(channel, limit=0, timeout=5)
    assert empty.offset == 0
    for i in range(3):
        await a.publish(channel, {"i": i}, timeout=5)
    res = await a.history(channel, limit=0, timeout=5)
    assert res.offset == 3
    assert isinstance(res.epoch, str) and res.epoch != ""
    assert res.publications == []
    assert res.epoch == empty.epoch


async def test_rpc_method_not_found(server, make_client):
    a, _ = await connected(make_client, server.url)
    with pytest.raises(ReplyError) as exc:
        await a.rpc("nope", {"x": 1}, timeout=5)
    assert exc.value.code == 104
    assert a.state == ClientState.CONNECTED


async def test_restart_reconnects_and_resubscribes(make_client, channel):
    first = Server().start()
    second = None
    try:
        a, arec = await connected(make_client, first.url)
        a_id = arec.of("connected")[0].client
        sub, srec = await subscribed(a, channel)

        exit_code = await asyncio.get_running_loop().run_in_executor(None, first.stop)
        assert exit_code == 0, f"server exits 0 on SIGTERM, got {exit_code}"
        await wait_until(lambda: any(c.code == 3001 for c in arec.of("connecting")),
                         what="connecting with 3001")
        shutdown = next(c for c in arec.of("connecting") if c.code == 3001)
        assert shutdown.reason == "shutdown"

        await asyncio.sleep(0.3)
        second = Server(port=first.port).start()
        await wait_until(lambda: len(arec.of("connected")) >= 2 and a.state == ClientState.CONNECTED,
                         timeout=10, what="reconnected")
        assert arec.of("connected")[-1].client != a_id
        await wait_until(lambda: len(srec.of("subscribed")) >= 2 and sub.state == SubscriptionState.SUBSCRIBED,
                         timeout=5, what="resubscribed")
        resub = srec.of("subscribed")[-1]
        if resub.was_recovering:
            assert resub.recovered is False, "new epoch after restart"

        b, brec = await connected(make_client, second.url)
        await b.publish(channel, {"after": True}, timeout=5)
        await wait_until(lambda: len(srec.of("publication")) >= 1, what="publication after restart")
        pub = srec.of("publication")[-1].pub
        assert pub.data == {"after": True}
        assert pub.offset == 1
        assert pub.info.client == brec.of("connected")[0].client
    finally:
        first.kill()
        if second is not None:
            second.stop()
