"""structlog set-up: JSON lines (one event per line, ISO time, level, logger) or a console renderer."""
from __future__ import annotations

import logging
import sys

import structlog


class _Stderr:
    """Resolves sys.stderr at every write, so a replaced/closed stream (tests, daemonisation) is never kept."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", json: bool = True, stream=None) -> None:
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, stream=stream or _Stderr(), format="%(message)s", force=True)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _Stderr()),
        cache_logger_on_first_use=False,
    )
