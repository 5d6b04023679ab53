"""HTTP surface: /metrics (Prometheus), /healthz, /readyz, /status, and bearer-token control endpoints.

The server knows nothing of the daemon's internals: it is handed callables. Control endpoints are disabled
(403) when no token is configured, and compare tokens in constant time.

Limits (``[http]``): idle keep-alive connections close after ``keepalive_timeout_s`` (aiohttp's default is an
hour: 500 idle sockets stayed open); a request line or header longer than ``max_header_bytes`` is answered 400.
aiohttp's own error and access logging goes through :class:`_OneLine`: one JSON line per event (the exception's
type and message, never a traceback), counted by reason.
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST

log = structlog.get_logger(__name__)


@dataclass
class HttpHooks:
    render_metrics: Callable[[], bytes]
    health: Callable[[], tuple[bool, dict]]      # alive? (loop running, no fatal task failure)
    ready: Callable[[], tuple[bool, dict]]       # books synced, models warm
    status: Callable[[], dict]
    control: Callable[[str], Awaitable[dict]] | None = None  # "halt" | "resume" | "flatten" | "retrain"
    count_error: Callable[[str], None] | None = None  # a refused/failed request, by reason (metrics)


class _OneLine(logging.Handler):
    """aiohttp's server logger -> one structlog line per record: message, exception type and text (whitespace
    collapsed), no traceback; ``count`` gets the exception type as the reason."""

    def __init__(self, count: Callable[[str], None] | None) -> None:
        super().__init__(logging.DEBUG)
        self.count = count

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            reason = type(exc).__name__ if exc is not None else "error"
            error = " ".join(f"{reason}: {exc}".split()) if exc is not None else None
            level = "warning" if record.levelno >= logging.WARNING else "debug"
            getattr(log, level)("http_error", message=" ".join(record.getMessage().split())[:500],
                                error=error[:500] if error else None)
            if self.count is not None and record.levelno >= logging.WARNING:
                self.count(reason)
        except Exception:  # noqa: BLE001 - logging must never raise into the server
            self.handleError(record)


def _server_logger(count: Callable[[str], None] | None) -> logging.Logger:
    """A logger of this server's own (outside logging's hierarchy: nothing reaches the root's raw handler)."""
    lg = logging.Logger("tradingd.http.server", logging.DEBUG)
    lg.addHandler(_OneLine(count))
    lg.propagate = False
    return lg


class _AccessLog(AbstractAccessLogger):
    """One JSON line per request at debug level (``logging.level = "debug"`` shows them)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.debug("http_access", method=request.method, path=request.path[:200], status=response.status,
                  ms=round(time * 1e3, 3), remote=request.remote)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json")


def make_app(hooks: HttpHooks, control_token: str | None) -> web.Application:
    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(body=hooks.render_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_req: web.Request) -> web.Response:
        ok, info = hooks.health()
        return _json({"ok": ok, **info}, 200 if ok else 503)

    async def readyz(_req: web.Request) -> web.Response:
        ok, info = hooks.ready()
        return _json({"ready": ok, **info}, 200 if ok else 503)

    async def status(_req: web.Request) -> web.Response:
        return _json(hooks.status())

    async def control(req: web.Request) -> web.Response:
        action = req.match_info["action"]
        if hooks.control is None or not control_token:
            return _json({"error": "control endpoints disabled: no token configured"}, 403)
        auth = req.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), control_token.encode()):
            log.warning("control request refused", action=action, remote=req.remote)
            return _json({"error": "unauthorized"}, 401)
        from daemon.control import ACTIONS
        if action not in ACTIONS:
            return _json({"error": f"unknown action {action!r}"}, 404)
        log.info("control request", action=action, remote=req.remote)
        try:
            return _json(await hooks.control(action))
        except Exception as e:  # noqa: BLE001 - e.g. the store failed under a flatten: say so, in JSON
            log.exception("control request failed", action=action)
            return _json({"ok": False, "action": action, "error": f"{type(e).__name__}: {e}"}, 500)

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/status", status), web.post("/control/{action}", control)])
    return app


class HttpServer:
    def __init__(self, hooks: HttpHooks, host: str, port: int, control_token: str | None, *,
                 keepalive_timeout_s: float = 15.0, max_header_bytes: int = 8190) -> None:
        self.app = make_app(hooks, control_token)
        self.host, self.port = host, port
        self.keepalive_timeout_s, self.max_header_bytes = keepalive_timeout_s, max_header_bytes
        self._logger = _server_logger(hooks.count_error)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log_class=_AccessLog, logger=self._logger,
                                     keepalive_timeout=self.keepalive_timeout_s,
                                     max_line_size=self.max_header_bytes, max_field_size=self.max_header_bytes)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # report the port the OS picked
            self.port = self._runner.addresses[0][1]
        log.info("http listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
