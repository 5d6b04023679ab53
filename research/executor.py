"""Where the heavy jobs run: in this process (the default) or as Ray tasks on a cluster.

The jobs (a walk-forward window's model fits, an HPO worker's trials, a retrain's per-timeframe/per-kind fits) are
pure functions of their arguments and a seed, so both executors give the same numbers for the same seed. Ray is
an optional extra (``pip install .[cluster]``): it is imported only when asked for, and the daemon never needs it
to trade. Large read-only inputs (the feature panel) are put in Ray's object store once per ``map`` and shared by
the tasks; results come back to the caller, which alone publishes artifacts (the registry's atomic publish), so a
worker lost mid-run can never leave a half-published model.

Failures: Ray re-runs a task whose worker process or node died (``max_retries``, Ray's own failover); an
application error in a task, or a task that still fails after its retries, is an :class:`ExecutorError` naming the
job. An unreachable cluster at start is a :class:`ClusterUnreachable` naming the address (exit 3 in the CLIs).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "ExecutorError", "ClusterUnreachable", "make_executor",
           "add_executor_arguments", "EXECUTORS", "check_reachable", "redact", "run_command"]

EXECUTORS = ("local", "ray")


class ExecutorError(RuntimeError):
    """A job failed (after the executor's own retries): the caller stops; nothing it would publish is written."""


class ClusterUnreachable(RuntimeError):
    """The cluster at ``address`` cannot be joined (exit 3: a human must start it or fix the address)."""


def redact(address: str) -> str:
    """The address without a password (``scheme://user:secret@host`` -> ``scheme://user:***@host``)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", address)


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple], *, shared: dict[str, Any] | None = None,
            label: Callable[[tuple], str] = repr, progress: Callable[[str], None] | None = None) -> list[Any]:
        """``[fn(*job, **shared) for job in jobs]`` in order; ``shared`` holds the large read-only inputs;
        ``progress(label(job))`` after each job is done."""
        ...

    def close(self) -> None: ...


@dataclass
class LocalExecutor:
    """In this process, one job after another (library threads do the parallel work, as before)."""

    name: str = "local"

    def map(self, fn, jobs, *, shared=None, label=repr, progress=None):
        out = []
        for job in jobs:
            try:
                out.append(fn(*job, **(shared or {})))
            except Exception as e:
                raise ExecutorError(f"job {label(job)} failed: {type(e).__name__}: {e}") from e
            if progress:
                progress(label(job))
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address`` (``auto``, ``host:port`` or ``ray://host:port``)."""

    name = "ray"

    def __init__(self, address: str, *, num_cpus_per_task: float = 1.0, max_retries: int = 2,
                 connect_timeout_s: float = 30.0) -> None:
        if not address:
            raise ClusterUnreachable("executor 'ray' needs an address (--address host:port, or [cluster] address)")
        check_reachable(address, connect_timeout_s)
        try:
            import ray
        except ImportError:
            raise ClusterUnreachable("executor 'ray' needs the cluster extra: pip install '.[cluster]'") from None
        self._ray = ray
        self.address = address
        self.cpus = num_cpus_per_task
        self.max_retries = max_retries
        self._owns = not ray.is_initialized()
        if self._owns:
            try:
                ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                         include_dashboard=False) if not address.startswith("ray://") else \
                    ray.init(address=address, logging_level="WARNING")
            except Exception as e:  # ConnectionError, RuntimeError, ValueError depending on the failure
                raise ClusterUnreachable(f"cannot join the Ray cluster at {redact(address)}: "
                                         f"{type(e).__name__}: {e}") from None

    def nodes(self) -> int:
        return sum(1 for n in self._ray.nodes() if n.get("Alive"))

    def map(self, fn, jobs, *, shared=None, label=repr, progress=None):
        ray = self._ray
        refs_shared = {k: ray.put(v) for k, v in (shared or {}).items()}
        task = ray.remote(num_cpus=self.cpus, max_retries=self.max_retries, retry_exceptions=False)(_call)
        refs = [task.remote(fn, job, refs_shared) for job in jobs]
        out = []
        for job, ref in zip(jobs, refs):
            try:
                out.append(ray.get(ref))
            except Exception as e:  # RayTaskError (the job raised), WorkerCrashedError / NodeDiedError (lost)
                for r in refs:
                    ray.cancel(r, force=True)
                cause = getattr(e, "cause", None) or e
                raise ExecutorError(f"job {label(job)} failed on the Ray cluster at {redact(self.address)} "
                                    f"(after up to {self.max_retries} retries of a lost worker): "
                                    f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                                    ) from None
            if progress:
                progress(label(job))
        return out

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def _call(fn, job, shared_refs):
    """The task body: the shared inputs arrive resolved when passed at top level; nested refs are fetched."""
    import ray
    shared = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in shared_refs.items()}
    return fn(*job, **shared)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with the address when nothing listens there (ray.init can otherwise wait for minutes)."""
    import socket
    if address == "auto" or address.startswith("ray://") and "@" in address:
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(timeout_s, 5.0)):
            pass
    except (OSError, ValueError) as e:
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {redact(address)}: {e}") from None


def make_executor(kind: str = "local", address: str = "", **kw) -> Executor:
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address, **kw)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")


def run_command(command: str, fn: Callable[[], Any], bad_input: tuple[type[BaseException], ...]) -> tuple[int, Any]:
    """``(0, fn())``, or the exit code after one line on stderr: 2 for ``bad_input`` (a human fixes the data or
    flags), 3 for an unreachable cluster (start it / fix the address), 1 for a failed job (nothing published)."""
    import sys
    try:
        return 0, fn()
    except ClusterUnreachable as e:
        code, msg = 3, str(e)
    except ExecutorError as e:
        code, msg = 1, f"{e} (nothing was published)"
    except bad_input as e:
        code, msg = 2, str(e)
    print(f"tradingd {command}: {msg}", file=sys.stderr)
    return code, None


def add_executor_arguments(p) -> None:
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where the model fits / trials run: this process, or Ray tasks on --address")
    p.add_argument("--address", default="", help="Ray cluster address (host:port of `ray start --head`)")
