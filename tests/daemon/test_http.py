"""The HTTP surface over a real socket: metrics text format, health/ready codes, token-guarded control."""
import asyncio

import aiohttp
import pytest

from daemon.http import HttpHooks, HttpServer
from daemon.metrics import Metrics


def _hooks(state):
    m = Metrics()
    m.frames.labels("local", "BTCUSDT", "trade").inc(3)

    async def control(action):
        state["actions"].append(action)
        if action == "flatten":
            raise RuntimeError("store is locked")
        return {"done": action}

    return HttpHooks(render_metrics=m.render, health=lambda: (True, {}),
                     ready=lambda: (state["ready"], {"books": {"BTCUSDT": "SYNCED" if state["ready"] else "BUFFERING"}}),
                     status=lambda: {"positions": {"BTCUSDT": 0.5}}, control=control)


@pytest.mark.parametrize("token", ["s3cret", None])
def test_endpoints(token):
    state = {"ready": False, "actions": []}

    async def scenario():
        srv = HttpServer(_hooks(state), "127.0.0.1", 0, token)
        await srv.start()
        base = f"http://127.0.0.1:{srv.port}"
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/metrics") as r:
                    body = await r.text()
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                    assert 'tradingd_frames_total{stream="trade",symbol="BTCUSDT",venue="local"} 3.0' in body
                async with s.get(base + "/healthz") as r:
                    assert r.status == 200
                async with s.get(base + "/readyz") as r:
                    assert r.status == 503 and (await r.json())["ready"] is False
                state["ready"] = True
                async with s.get(base + "/readyz") as r:
                    assert r.status == 200
                async with s.get(base + "/status") as r:
                    assert (await r.json()) == {"positions": {"BTCUSDT": 0.5}}
                async with s.post(base + "/control/halt") as r:
                    assert r.status == (401 if token else 403)
                async with s.post(base + "/control/halt", headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == (401 if token else 403)
                if token:
                    async with s.post(base + "/control/halt", headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 200 and (await r.json()) == {"done": "halt"}
                    async with s.post(base + "/control/explode", headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 404
                    async with s.post(base + "/control/flatten", headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 500 and r.content_type == "application/json"
                        assert (await r.json()) == {"ok": False, "action": "flatten",
                                                    "error": "RuntimeError: store is locked"}
        finally:
            await srv.stop()

    asyncio.run(scenario())
    assert state["actions"] == (["halt", "flatten"] if token else [])


def test_idle_keepalive_connections_are_closed_and_oversized_headers_log_one_json_line():
    """Issue #14: idle keep-alive sockets stayed open (aiohttp's default is an hour) and an oversized header wrote
    a multi-line traceback into the JSON log. Now idle connections close after keepalive_timeout_s, and the 400
    for a header over max_header_bytes is one JSON line (no traceback), counted by reason."""
    import io

    import orjson

    from daemon.logs import configure
    state = {"ready": True, "actions": []}
    counted: list[str] = []
    buf = io.StringIO()

    async def scenario():
        hooks = _hooks(state)
        hooks.count_error = counted.append
        srv = HttpServer(hooks, "127.0.0.1", 0, None, keepalive_timeout_s=0.3, max_header_bytes=2048)
        await srv.start()
        try:
            conns = []
            for _ in range(20):  # 20 keep-alive connections, each answered once, then left idle
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                clen = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0]
                n = int(clen.split(b":")[1])
                await r.readexactly(n)
                conns.append((r, w))
            # the server closes every idle one: EOF within a few timeouts
            for r, w in conns:
                assert await asyncio.wait_for(r.read(), 3.0) == b""
                w.close()
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
            await w.drain()
            assert (await asyncio.wait_for(r.read(), 3.0)).split(b"\r\n")[0].endswith(b" 400 Bad Request")
            w.close()
        finally:
            await srv.stop()

    configure("info", True, stream=buf)
    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        configure("info", True)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    events = [orjson.loads(ln) for ln in lines]  # every line is one JSON object
    errors = [e for e in events if e["event"] == "http_error"]
    assert len(errors) == 1 and "Traceback" not in buf.getvalue()
    assert "LineTooLong" in errors[0]["error"] and "2048" in errors[0]["error"]
    assert counted == ["LineTooLong"]
