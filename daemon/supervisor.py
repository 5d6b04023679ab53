"""Named tasks owned by components, with an explicit policy for when one dies.

A task that raises is logged with its exception and either restarted with exponential backoff (transient
work: feeds, the retrain scheduler) or reported as fatal, which stops the daemon with a non-zero exit (the core
pipeline). Nothing is fire-and-forget: every task is awaited at shutdown and its outcome is known.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


@dataclass
class TaskRecord:
    name: str
    restart: bool
    restarts: int = 0
    last_error: str = ""
    task: asyncio.Task | None = None


@dataclass
class Supervisor:
    on_fatal: Callable[[str, BaseException], None]
    on_restart: Callable[[str], None] = lambda name: None
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_restarts: int = 1000
    tasks: dict[str, TaskRecord] = field(default_factory=dict)

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = False) -> None:
        rec = TaskRecord(name, restart)
        self.tasks[name] = rec
        rec.task = asyncio.create_task(self._run(rec, factory), name=name)

    async def _run(self, rec: TaskRecord, factory: Callable[[], Awaitable[None]]) -> None:
        delay = self.backoff_initial_s
        while True:
            started = time.monotonic()
            try:
                await factory()
                return  # finished normally
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point is to catch and decide
                rec.last_error = f"{type(e).__name__}: {e}"
                log.error("task failed", task=rec.name, error=rec.last_error, restart=rec.restart, exc_info=e)
                if not rec.restart or rec.restarts >= self.max_restarts:
                    self.on_fatal(rec.name, e)
                    return
                rec.restarts += 1
                self.on_restart(rec.name)
                if time.monotonic() - started > 60:  # it ran well for a while: start the backoff afresh
                    delay = self.backoff_initial_s
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)

    async def stop(self, timeout: float = 10.0) -> None:
        live = [r.task for r in self.tasks.values() if r.task and not r.task.done()]
        for t in live:
            t.cancel()
        if live:
            await asyncio.wait(live, timeout=timeout)

    def snapshot(self) -> dict:
        return {n: {"running": bool(r.task and not r.task.done()), "restarts": r.restarts,
                    "last_error": r.last_error} for n, r in self.tasks.items()}


async def loop_lag_monitor(observe: Callable[[float], None], interval_s: float = 0.1) -> None:
    """Measure how late the loop wakes us: the event-loop lag every other task suffers too."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - t0 - interval_s))
