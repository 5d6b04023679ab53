"""The harness the daemon's tests share (not a test module): a free port, a config writer, the `tradingd run`
subprocess with its output collected, HTTP and /metrics helpers, waiting (a process's condition, or one on the
running event loop), the store invariant, and a real Prometheus server with its HTTP API."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository
PY = sys.executable
TOKEN = "e2e-secret-token"
PROMETHEUS = shutil.which("prometheus")  # Debian package "prometheus" (promtool comes with it)
PROMTOOL = shutil.which("promtool")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, data_dir: Path, port: int, extra: str = "", timeframes=("1m",),
                 symbols=("BTCUSDT",), speed: float = 1.0) -> Path:
    """A daemon config for tests: ``[general]``, ``[http]``, JSON logs, then ``extra`` sections. The simulator
    runs at ``speed`` (default real time, what these tests were written for; the embedded default is faster)."""
    if "[simulator]" in extra:
        extra = extra.replace("[simulator]\n", f"[simulator]\nspeed = {speed}\n", 1)
    else:
        extra += f"\n[simulator]\nspeed = {speed}\n"
    tfs = ", ".join(f'"{t}"' for t in timeframes)
    syms = ", ".join(f'"{s}"' for s in symbols)
    path.write_text(f"""
[general]
symbols = [{syms}]
timeframes = [{tfs}]
data_dir = "{data_dir}"

[http]
host = "127.0.0.1"
port = {port}

[logging]
level = "info"
format = "json"
{extra}
""")
    return path


class Daemon:
    """A `tradingd run` subprocess with its stdout collected by a thread."""

    def __init__(self, config: Path, tmp: Path) -> None:
        env = dict(os.environ, TRADINGD_CONTROL_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        self.err_path = tmp / "stderr.log"
        self._err = open(self.err_path, "wb")
        self.p = subprocess.Popen([PY, "-m", "daemon.cli", "run", "--config", str(config)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=self._err)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} (rc={self.p.poll()}); stdout:\n" +
                             "\n".join(self.lines[-30:]) + "\nstderr tail:\n" + self.stderr()[-3000:])

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.err_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)
        if not self._err.closed:
            self._err.close()


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` that is a JSON object (the daemon's log and progress lines when piped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
    return out


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(url: str, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method="POST", data=b"")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_until(fn, timeout: float, what: str, daemon: Daemon):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        if daemon.p.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (rc={daemon.p.poll()}); stderr tail:\n"
                         + daemon.stderr()[-3000:])


def run(coro, timeout: float = 30):
    """Run ``coro`` on a fresh event loop, bounded by ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """On the running loop: poll ``cond()`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, f"{what} not reached in {timeout} s"
        await asyncio.sleep(0.02)


def check_store(db_path: Path) -> dict[str, float]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        fills = dict(db.execute("SELECT symbol, SUM(side * qty) FROM fills GROUP BY symbol").fetchall())
        pos = dict(db.execute("SELECT symbol, qty FROM positions").fetchall())
        for sym in set(fills) | set(pos):
            assert pos.get(sym, 0.0) == pytest.approx(fills.get(sym, 0.0), abs=1e-9), sym
        orphan = db.execute("SELECT COUNT(*) FROM fills f LEFT JOIN orders o USING (client_order_id) "
                            "WHERE o.client_order_id IS NULL").fetchone()[0]
        assert orphan == 0
        return pos
    finally:
        db.close()


def prom_api(prom: str, path: str, **params: str):
    """``data`` of a Prometheus HTTP API answer (``/api/v1/<path>``), asserting status success."""
    url = f"{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = orjson.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def prom_query(prom: str, q: str) -> list:
    """An instant query's result vector."""
    return prom_api(prom, "query", query=q)["result"]


class Prometheus:
    """A real Prometheus scraping ``target`` every second (job "tradingd"); ``config``: another prometheus.yml
    text (its ``rule_files`` resolve relative to ``dir``, where ``files`` {name: text} are written too)."""

    def __init__(self, tmp_path: Path, target: str, config: str | None = None,
                 files: dict[str, str] | None = None) -> None:
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir(exist_ok=True)
        self.log = self.dir / "prometheus.log"
        port = free_port()
        for name, text in (files or {}).items():
            (self.dir / name).write_text(text)
        (self.dir / "prometheus.yml").write_text(config if config is not None else f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tradingd
    static_configs:
      - targets: ["{target}"]
""")
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.dir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{port}"],
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.url = f"http://127.0.0.1:{port}"

    def target(self, timeout: float = 60) -> dict:
        """The target's state once it was scraped (health "up" or "down", lastError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                active = prom_api(self.url, "targets")["activeTargets"]
            except OSError:
                active = []
            if active and active[0]["health"] != "unknown" and active[0]["lastScrape"][:4] != "0001":
                return active[0]
            time.sleep(0.5)
        raise AssertionError("Prometheus never scraped the target: " + self.log.read_text()[-2000:])

    def families(self) -> set[str]:
        """Metric families Prometheus learned from the target's HELP/TYPE lines."""
        meta = prom_api(self.url, "targets/metadata", match_target='{job="tradingd"}')
        return {m["metric"] for m in meta}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
