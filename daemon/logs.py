"""structlog set-up: JSON lines (one event per line, ISO time, level, logger) or a console renderer.

``logging.format = "auto"`` picks for the reader: a person at a terminal gets console lines, systemd's journal
(``JOURNAL_STREAM`` set) and pipes get JSON. Progress lines for a human (:func:`say`, stdout) go through the
same processors and renderer, so a terminal never shows JSON and plain lines mixed.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping

import structlog


class _Stderr:
    """Resolves sys.stderr at every write, so a replaced/closed stream (tests, daemonisation) is never kept."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _Stdout(_Stderr):
    def write(self, s: str) -> int:
        return sys.stdout.write(s)

    def flush(self) -> None:
        sys.stdout.flush()


_say_logger: Any = None
_format = "json"


def current_format() -> str:
    """The format :func:`configure` chose (a child process renders its lines the same way)."""
    return _format


def choose_format(fmt: str, isatty: bool, env: Mapping[str, str]) -> str:
    """``json`` or ``console`` for ``logging.format``: auto = JSON under systemd (JOURNAL_STREAM) or a pipe."""
    if fmt in ("json", "console"):
        return fmt
    if env.get("JOURNAL_STREAM"):
        return "json"
    return "console" if isatty else "json"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def configure(level: str = "info", json: bool | None = None, stream=None, *, fmt: str | None = None,
              env: Mapping[str, str] | None = None, out=None) -> str:
    """Configure structlog and the progress printer; returns the chosen format (``json`` or ``console``).
    ``fmt`` is ``logging.format`` (auto/json/console); ``json`` forces one for tools that always want it."""
    global _say_logger, _format
    if fmt is None:
        fmt = "console" if json is False else "json"
    lvl = getattr(logging, level.upper())
    err = stream or _Stderr()
    chosen = _format = choose_format(fmt, _isatty(err), os.environ if env is None else env)
    logging.basicConfig(level=lvl, stream=err, format="%(message)s", force=True)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer = (structlog.processors.JSONRenderer() if chosen == "json"
                else structlog.dev.ConsoleRenderer(colors=_isatty(err)))
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=err),
        cache_logger_on_first_use=False,
    )
    _say_logger = structlog.wrap_logger(structlog.PrintLogger(file=out or _Stdout()),
                                        processors=[*processors, renderer],
                                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    return chosen


def say_error(msg: str) -> None:
    """A final word for a human on stderr (start-up failed, fatal), rendered like the log lines."""
    if _say_logger is None:
        print(f"tradingd: {msg}", file=sys.stderr, flush=True)
        return
    structlog.get_logger("tradingd").error(f"tradingd: {msg}")


def say(msg: str, **kw: Any) -> None:
    """Progress for a human (stdout), rendered like the log lines: ``tradingd: <msg>`` as the event."""
    if _say_logger is None:  # logging not configured (library use): a plain line
        print(f"tradingd: {msg}", flush=True)
        return
    _say_logger.info(f"tradingd: {msg}", **kw)
