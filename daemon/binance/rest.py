"""Binance REST reads shared by the daemon's tools: klines history (``/api/v3/klines``, 1000 rows a request)."""
from __future__ import annotations

from engines.data import Klines


async def fetch_klines_rest(rest_url: str, symbol: str, *, days: float, end_ms: int | None = None,
                            session=None) -> Klines:
    """1m klines history from a Binance-format REST endpoint (``/api/v3/klines``, 1000 rows a request)."""
    import aiohttp

    from daemon.binance.codec import parse_klines
    from engines.data import bars_to_klines
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        if end_ms is None:
            async with session.get(f"{rest_url}/api/v3/time") as r:
                end_ms = int((await r.json())["serverTime"])
        start = end_ms - int(days * 86_400_000)
        bars = []
        while start < end_ms:
            params = {"symbol": symbol, "interval": "1m", "startTime": start, "endTime": end_ms, "limit": 1000}
            async with session.get(f"{rest_url}/api/v3/klines", params=params) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"klines request failed: HTTP {r.status}: {body[:200]!r}")
            page = parse_klines(body, symbol, "1m")
            if not page:
                break
            bars.extend(page)
            start = page[-1].open_ns // 1_000_000 + 60_000
        # the last bar may still be open: keep only closed minutes
        bars = [b for b in bars if b.open_ns // 1_000_000 + 60_000 <= end_ms]
        return bars_to_klines(bars)
    finally:
        if own:
            await session.close()
