"""One writer thread for the store, so fsync'd SQLite commits leave the event loop.

Why: a commit with ``synchronous=FULL`` costs ~0.5-4 ms on this box (far more on a busy disk). On the loop it
sits inside tick-to-decision and delays every other task (HTTP, watchdog, the feed). SQLite connections are bound
to their thread, so ONE thread owns a write connection and runs jobs in submission order, each job its own
transaction. The loop keeps its own connection for reads (recovery, idempotency look-ups).

Durability contract with a write-behind (docs/STORE.md, "Writer thread"):

* The store is always a consistent PREFIX of what the daemon did: jobs commit in FIFO order, and one execution
  (order rows, fills, positions, balance, stops, replay cursor) is one transaction.
* The daemon's memory may lead the disk by the jobs still queued (``pending``; the submit-to-durable lag is
  measured: :meth:`StoreWriter.lag_summary`). A kill -9 loses at most that tail and a restart recovers the
  prefix; a replay resumes from the committed cursor and reproduces the same fills (tests/daemon/test_crash.py
  runs the SIGKILL test through the writer too).
* :meth:`flush` waits until everything submitted is durable; shutdown calls it before closing.
* A failed job stops all writing (later jobs are skipped, so the prefix stays consistent), ``on_error`` is called
  from the writer thread (the daemon turns it into a fatal stop) and later submissions raise ``StoreError``.
  A droppable job (bar rows) that fails rolled back only itself: it is counted and logged and writing goes on.
* A LOST SERVER (PostgreSQL: :class:`daemon.store.StoreUnavailable`) is not a failed write: the writer marks the
  store unavailable (``available`` False, ``on_available(False)``: the daemon's risk gate refuses new orders),
  reconnects with exponential backoff (``retry_backoff_s``) and runs the SAME job again, so the FIFO prefix holds;
  once a job commits it is available again. A commit whose answer was lost is resolved by the store (it checks
  the job's first fill id), so a fill is neither lost nor written twice. ``close()`` while the server is still
  away gives up after its timeout (what is queued is lost like a kill -9's tail; not a clean stop).
* Backpressure: the queue is bounded. Droppable jobs (bar rows, which the venue's klines can restore) are
  dropped and counted when it is full; executions wait for room (never dropped) and the waits are counted.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import structlog

from daemon.samples import SampleRing
from daemon.store import StoreError, StoreUnavailable

__all__ = ["StoreWriter", "WriterStats", "BarsAfterEvent"]

log = structlog.get_logger(__name__)

_STOP = object()


@dataclass
class WriterStats:
    submitted: int = 0
    committed: int = 0
    dropped: int = 0      # droppable jobs (bars) refused by a full queue or failed on their own
    full_waits: int = 0   # non-droppable jobs that waited for room
    skipped: int = 0      # jobs not run because an earlier one failed
    errors: int = 0
    max_depth: int = 0
    # bar ROWS lost (each a gap in the retrainer's input until the venue's klines fill it); one writer thread each
    dropped_bars_queue_full: int = 0   # counted on the submitting (loop) thread
    dropped_bars_failed: int = 0       # counted on the writer thread
    outages: int = 0      # times the store became unreachable (a lost server; retried, not fatal)
    retries: int = 0      # reconnect-and-retry attempts during outages


class StoreWriter:
    """Runs ``job(store)`` callables on a dedicated thread that owns the store ``open_store()`` returns.

    ``open_store`` is called ON the writer thread (SQLite connections are thread-bound); if it raises, the
    constructor re-raises it."""

    def __init__(self, open_store: Callable[[], Any], *, max_queue: int = 10_000,
                 on_error: Callable[[BaseException], None] | None = None,
                 observe_lag: Callable[[float], None] | None = None, name: str = "store-writer",
                 on_available: Callable[[bool], None] | None = None,
                 retry_backoff_s: tuple[float, float] = (0.05, 5.0)) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._open = open_store
        self._on_error = on_error
        self._observe_lag = observe_lag  # e.g. a Prometheus histogram's observe (seconds; thread-safe)
        self.stats = WriterStats()
        self.error: BaseException | None = None
        self.available = True  # False while the store's server is unreachable (new orders stop meanwhile)
        self.unavailable_reason = ""
        self._on_available = on_available
        self._backoff = retry_backoff_s
        self._give_up = threading.Event()
        self._lag_ns = SampleRing(10_000)
        self._closed = False
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            raise self._open_error

    # ------------------------------------------------------------------------------------------ API
    def submit(self, job: Callable[[Any], Any], *, droppable: bool = False, kind: str = "job") -> bool:
        """Queue ``job(store)``. Returns False only for a droppable job refused by a full queue (counted)."""
        if self.error is not None:
            raise StoreError(getattr(self.error, "path", "?"), f"store writer stopped after a failed write: "
                             f"{self.error}")
        if self._closed:
            raise RuntimeError("store writer is closed")
        if not self._thread.is_alive():  # never queue behind a dead thread (a full queue would block forever)
            raise StoreError("?", "store writer thread is not running")
        item = (time.perf_counter_ns(), job, kind, droppable)
        try:
            self._q.put_nowait(item)
        except queue.Full:
            if droppable:
                self.stats.dropped += 1
                if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                    log.error("store_writer_dropped", kind=kind, dropped=self.stats.dropped,
                              queue=self._q.maxsize)
                return False
            self.stats.full_waits += 1
            self._q.put(item)
        self.stats.submitted += 1
        d = self._q.qsize()
        if d > self.stats.max_depth:
            self.stats.max_depth = d
        return True

    def write_statements(self, stmts: Sequence[tuple[str, tuple]], kind: str = "execution") -> None:
        """One transaction of prepared statements (never dropped)."""
        self.submit(lambda s: s.write_statements(stmts), kind=kind)

    def write_bars(self, bars: Iterable[Any]) -> bool:
        """Bar rows (droppable: the venue's klines restore a missing bar)."""
        bars = list(bars)
        stats = self.stats

        def job(s: Any) -> None:
            try:
                s.write_bars(bars)
            except StoreUnavailable:  # retried by the writer, not lost
                raise
            except Exception:
                stats.dropped_bars_failed += len(bars)
                raise
        ok = self.submit(job, droppable=True, kind="bars")
        if not ok:
            stats.dropped_bars_queue_full += len(bars)
        return ok

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet durable (queued or running)."""
        return self._q.unfinished_tasks

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job ran. False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._q.all_tasks_done:
            while self._q.unfinished_tasks:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._q.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Flush and stop the thread (which closes its store). False if it did not finish in ``timeout``."""
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        self._q.put((0, _STOP, "stop", False))
        self._thread.join(timeout)
        if self._thread.is_alive() and not self.available:  # retrying a lost server: stop waiting for it
            self._give_up.set()
            self._thread.join(min(timeout, 5.0))
        alive = self._thread.is_alive()
        if alive:
            log.error("store_writer_close_timeout", pending=self.pending, timeout_s=timeout)
        return not alive

    def lag_summary(self) -> dict[str, float | int]:
        """Submit-to-durable lag (ms) over the last jobs: how far memory led the disk."""
        if not self._lag_ns:
            return {"n": 0}
        a = self._lag_ns.values().astype(np.float64) / 1e6
        return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                "max_ms": float(a.max())}

    def snapshot(self) -> dict[str, Any]:
        return {**asdict(self.stats), "pending": self.pending, "error": str(self.error) if self.error else None,
                "available": self.available, "unavailable": self.unavailable_reason or None,
                "lag": self.lag_summary()}

    # ------------------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            store = self._open()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            self._open_error = e
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                t0, job, kind, droppable = self._q.get()
                try:
                    if job is _STOP:
                        return
                    if self.error is not None:
                        self.stats.skipped += 1
                        continue
                    try:
                        self._run_job(store, job, kind)
                    except Exception as e:  # noqa: BLE001
                        if droppable:  # its own transaction rolled back; the prefix is intact
                            self.stats.dropped += 1
                            log.error("store_write_dropped", kind=kind, error=f"{type(e).__name__}: {e}")
                        else:
                            self._fail(e, kind)
                        continue
                    except BaseException as e:  # noqa: BLE001 - reported, writing stops (prefix stays consistent)
                        self._fail(e, kind)
                        continue
                    self.stats.committed += 1
                    lag = time.perf_counter_ns() - t0
                    self._lag_ns.append(lag)
                    if self._observe_lag is not None:
                        try:
                            self._observe_lag(lag / 1e9)
                        except Exception:  # noqa: BLE001 - a metrics problem must not stop the writer
                            log.exception("store_writer_observe_failed")
                finally:
                    self._q.task_done()
        finally:
            try:
                store.close()
            except Exception as e:  # noqa: BLE001
                log.warning("store_writer_close_failed", error=str(e))

    def _run_job(self, store: Any, job: Callable[[Any], Any], kind: str) -> None:
        """``job(store)``; while the store's server is lost: reconnect with backoff and run it again."""
        delay, cap = self._backoff
        while True:
            try:
                job(store)
            except StoreUnavailable as e:
                if not hasattr(store, "reconnect") or self._give_up.is_set():
                    raise
                if self.available:
                    self.stats.outages += 1
                    self._set_available(False, str(e))
                self.stats.retries += 1
                if self.stats.retries <= 3 or self.stats.retries % 20 == 0:
                    log.warning("store_unavailable_retry", kind=kind, retries=self.stats.retries,
                                backoff_s=round(delay, 3), error=str(e))
                if self._give_up.wait(delay):
                    raise
                delay = min(delay * 2, cap)
                try:
                    store.reconnect()
                except StoreUnavailable:
                    pass
                continue
            if not self.available:
                self._set_available(True, "")
            return

    def _set_available(self, up: bool, reason: str) -> None:
        self.available, self.unavailable_reason = up, reason
        (log.info if up else log.error)("store_available" if up else "store_unavailable", reason=reason,
                                        outages=self.stats.outages, retries=self.stats.retries)
        if self._on_available is not None:
            try:
                self._on_available(up)
            except Exception:  # noqa: BLE001 - a callback problem must not stop the writer
                log.exception("store_writer_on_available_failed")

    def _fail(self, e: BaseException, kind: str) -> None:
        """A non-droppable job failed: stop writing (later jobs skipped), report it."""
        self.error = e
        self.stats.errors += 1
        log.error("store_write_failed", kind=kind, error=f"{type(e).__name__}: {e}")
        if self._on_error is not None:
            try:
                self._on_error(e)
            except Exception:  # noqa: BLE001
                log.exception("store_writer_on_error_failed")


class BarsAfterEvent:
    """A pipeline ``bar_sink`` that hands closed bars to the writer right AFTER the current event's decision
    (``loop.call_soon``): queueing them mid-decision wakes the writer thread while the decision still needs the
    GIL. Without a running loop (synchronous callers) the bars go to the writer at once."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self._buf: list = []

    def __call__(self, bars: list) -> None:
        import asyncio
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.writer.write_bars(bars)
            return
        if not self._buf:
            loop.call_soon(self.flush)
        self._buf.extend(bars)

    def flush(self) -> None:
        bars, self._buf = self._buf, []
        if bars:
            self.writer.write_bars(bars)
