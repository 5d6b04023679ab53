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
