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
# ------------------------------------------------------------------------------------------- PostgreSQL
PG_PASSWORD = "pg-Test-pw-7f3a"  # the throwaway cluster's password (TCP logins need it: scram-sha-256)


def pg_bindir() -> Path | None:
    """Where initdb/postgres live: $TRADINGD_PG_BINDIR, ``pg_config --bindir``, or Debian's
    /usr/lib/postgresql/<major>/bin (not on PATH there); None when PostgreSQL is not installed."""
    cands = []
    if os.environ.get("TRADINGD_PG_BINDIR"):
        cands.append(Path(os.environ["TRADINGD_PG_BINDIR"]))
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            cands.append(Path(out.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    cands += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                    if p.parent.name.isdigit() else 0, reverse=True)
    for c in cands:
        if (c / "initdb").exists() and (c / "postgres").exists():
            return c
    return None


class PgCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` under a temp dir, ``postgres`` on a free loopback port run as a
    non-root user (``postgres`` when we are root: the server refuses root), fsync and synchronous_commit on,
    scram-sha-256 password logins over TCP. ``stop()``/``start()`` take the server away and bring it back on the
    same port and data (the lost-database tests)."""

    def __init__(self, bindir: Path, db: str = "tradingd", user: str = "tradingd") -> None:
        import pwd
        import shutil
        import tempfile
        self.bindir, self.db, self.user, self.password = bindir, db, user, PG_PASSWORD
        self.run_as: list[str] = []
        uid = gid = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' user to run the server as")
            uid, gid = pw.pw_uid, pw.pw_gid
            self.run_as = [shutil.which("runuser") or "/sbin/runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="tradingd-pg-"))
        self.data = self.root / "data"
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if uid is not None:
            for p in (self.root, pwfile):
                os.chown(p, uid, gid)
        out = subprocess.run([*self.run_as, str(bindir / "initdb"), "-D", str(self.data), "-U", user, "-N",
                              "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                              "-E", "UTF8", "--locale=C"], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user=user, password=self.password,
                             dbname="postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {db}")

    @property
    def url(self) -> str:
        """The store URL (no password: it comes from the environment)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.db}"

    def start(self, timeout: float = 60.0) -> None:
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen([*self.run_as, str(self.bindir / "postgres"), "-D", str(self.data),
                                      "-k", str(self.root), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                                      "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=60"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited rc={self.proc.returncode}: "
                                   f"{(self.root / 'server.log').read_text()[-2000:]}")
            r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                               capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server: ``fast`` (SIGINT: clients are disconnected) or ``immediate`` (SIGQUIT: like a crash)."""
        pid = self._postmaster_pid()
        if pid is not None and self.proc is not None and self.proc.poll() is None:
            os.kill(pid, signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            self.proc.wait(timeout)
        self.log.close()

    def close(self) -> None:
        import shutil
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def pg_schema_name(prefix: str = "t") -> str:
    """A fresh store account (schema) name, unique per call: each test gets its own tables."""
    import uuid
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def one_fill_executions(n: int, start: int, pf, symbol: str = "BTCUSDT", prefix: str = "x"):
    """``n`` one-fill executions (alternating buy/sell) continuing the portfolio ``pf``: [(statements, fill_id)]
    and the portfolio after them (store tests and the PostgreSQL writer workers)."""
    from daemon.store import execution_statements
    from market.events import Fill, OrderStatus, OrderType, Side
    from market.matching import Order
    out = []
    for i in range(start, start + n):
        coid = f"{prefix}{i}"
        side = Side.BUY if i % 2 == 0 else Side.SELL
        f = Fill(f"{coid}-1", coid, symbol, side, 100.0 + i, 0.5, 0.05, "taker", 1_723_161_254_000_000_000 + i)
        o = Order(coid, symbol, side, OrderType.MARKET, 0.5, None, OrderStatus.FILLED, f.ts, f.ts, f.ts, 0.5,
                  f.price, 1, active=True)
        pf = pf.copy()
        r = pf.apply_fill(f)
        out.append((execution_statements([o], [f], [r], pf, cursor=str(i)), f.fill_id))
    return out, pf
