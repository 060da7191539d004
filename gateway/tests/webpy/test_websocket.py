"""WebSocket transport: busgate.v1 (binary msgpack) and busgate.v1.json (text), the same Session as TCP."""
import asyncio
import json

import msgpack
import pytest
import websockets

from rawgw import MSG, E

HELLO = [1, [1], {"method": "token", "token": "dev-token"}, "ws-test"]


def ws_url(g):
    return f"ws://{g.http[0]}:{g.http[1]}/v1/ws"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_binary_mode_interoperates_with_tcp(gw, clients):
    tcp = clients(gw.client())
    tcp.sub(1, "from.ws")

    async def scenario():
        async with websockets.connect(ws_url(gw), subprotocols=["busgate.v1"]) as ws:
            assert ws.subprotocol == "busgate.v1"
            await ws.send(msgpack.packb(HELLO))
            welcome = msgpack.unpackb(await ws.recv())
            assert welcome[0] == 2 and welcome[4] == "demo"
            await ws.send(msgpack.packb([4, 1, "from.tcp"]))
            assert msgpack.unpackb(await ws.recv()) == [9, 4, 1]
            await ws.send(msgpack.packb([3, "from.ws", b"\x00\xffbinary"]))
            await asyncio.get_running_loop().run_in_executor(None, lambda: tcp.pub("from.tcp", b"to ws"))
            msg = msgpack.unpackb(await ws.recv())
            assert msg[:4] == [6, 1, "from.tcp", b"to ws"]

    run(scenario())
    m = tcp.expect(MSG)
    assert m[3] == b"\x00\xffbinary"


def test_json_mode_maps_payloads(gw, clients):
    tcp = clients(gw.client())

    async def scenario():
        async with websockets.connect(ws_url(gw), subprotocols=["busgate.v1.json"]) as ws:
            assert ws.subprotocol == "busgate.v1.json"
            await ws.send(json.dumps(HELLO))
            assert json.loads(await ws.recv())[0] == 2
            await ws.send(json.dumps([4, 7, "j.>"]))
            assert json.loads(await ws.recv()) == [9, 4, 7]
            await asyncio.get_running_loop().run_in_executor(None, lambda: (tcp.pub("j.text", "héllo".encode()),
                                                                            tcp.pub("j.bin", b"\xff\x00")))
            got = [json.loads(await ws.recv()) for _ in range(2)]
            assert [6, 7, "j.text", "héllo", {"busgate-tenant": "demo"}] in got
            assert [6, 7, "j.bin", {"base64": "/wA="}, {"busgate-tenant": "demo"}] in got
            # requests work the same; errors have the registry's codes
            await ws.send(json.dumps([7, 1, "nobody", "?"]))
            res = json.loads(await ws.recv())
            assert res[:3] == [8, 1, E["NO_RESPONDERS"]]

    run(scenario())


def test_first_supported_subprotocol_wins_and_none_is_refused(gw):
    async def scenario():
        async with websockets.connect(ws_url(gw), subprotocols=["x-other", "busgate.v1.json", "busgate.v1"]) as ws:
            assert ws.subprotocol == "busgate.v1.json"
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            async with websockets.connect(ws_url(gw), subprotocols=["mqtt"]):
                pass
        assert e.value.response.status_code == 400

    run(scenario())


def test_close_codes(gw):
    async def scenario():
        # wrong message type for the subprotocol: MALFORMED_FRAME, then close 1002
        async with websockets.connect(ws_url(gw), subprotocols=["busgate.v1"]) as ws:
            await ws.send(json.dumps(HELLO))
            err = msgpack.unpackb(await ws.recv())
            assert err[:2] == [10, E["MALFORMED_FRAME"]]
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1002 and ws.close_reason == "MALFORMED_FRAME"
        # bad token: AUTH_FAILED, close 1008
        async with websockets.connect(ws_url(gw), subprotocols=["busgate.v1.json"]) as ws:
            await ws.send(json.dumps([1, [1], {"method": "token", "token": "nope"}]))
            assert json.loads(await ws.recv())[:2] == [10, E["AUTH_FAILED"]]
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        # a message above the maximum frame: FRAME_TOO_LARGE, close 1009
        async with websockets.connect(ws_url(gw), subprotocols=["busgate.v1"], max_size=None) as ws:
            await ws.send(msgpack.packb([1, [1], {"method": "token", "token": "dev-token", "pad": "x" * 70000}]))
            assert msgpack.unpackb(await ws.recv())[:2] == [10, E["FRAME_TOO_LARGE"]]
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009

    run(scenario())


def test_plain_get_on_the_ws_path(gw):
    status, body = gw.http_get("/v1/ws")
    assert status == 426 and "WebSocket" in body
