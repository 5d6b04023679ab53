"""Local executor vs a real Ray cluster of 1 and 2 nodes on this box (README figures, not timed tests).

    python -m benchmarks.bench_cluster [--workload backtest|retrain|train] [--data DIR] [--timeframes 5m]

Each mode runs the same command: ``local`` (this process; the libraries get ``--threads`` threads), ``ray-1``
(a head node with ``--cpus-per-node`` CPUs) and ``ray-2`` (head + one worker node, separate processes on
loopback). Workloads: ``backtest`` = ``tradingd backtest --data DIR`` (every walk-forward window's model fits are
jobs), ``retrain`` = one retrain cycle of the per-symbol models (every timeframe, both kinds) from a store of
30 days of real BTC 1m bars, ``train`` = ``tradingd train --data DIR`` (the universe models: every timeframe and
kind). On a 2-core box two nodes cannot beat the cores they share: the figure shows the executor's overhead and
that the cluster path runs, not a speed-up; on separate machines each node brings its own cores.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(args: list[str], log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
                            start_new_session=True)


def _cluster(nodes: int, cpus: int, tmp: Path) -> tuple[str, list[subprocess.Popen]]:
    import ray
    port = _free_port()
    procs = [_node(["--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false",
                    f"--temp-dir={tmp}/ray"], tmp / "head.log")]
    addr = f"127.0.0.1:{port}"
    time.sleep(5)
    for i in range(nodes - 1):
        procs.append(_node([f"--address={addr}", f"--num-cpus={cpus}"], tmp / f"worker{i}.log"))
    t0 = time.monotonic()
    while True:
        try:
            ray.init(address=addr, logging_level="WARNING", log_to_driver=False)
            n = sum(1 for x in ray.nodes() if x["Alive"])
            ray.shutdown()
            if n >= nodes:
                break
        except Exception:  # noqa: BLE001 - still starting
            pass
        if time.monotonic() - t0 > 120:
            raise SystemExit(f"cluster of {nodes} nodes did not come up")
        time.sleep(1)
    return addr, procs


def _stop(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _store(tmp: Path) -> Path:
    from daemon.store import SQLiteStore
    from engines.data import klines_to_bars, load_klines_csv
    k = load_klines_csv(DATA / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz", symbol="BTCUSDT")
    st = SQLiteStore(str(tmp / "store.db"))
    st.write_bars(klines_to_bars(k)[-30 * 1440:])
    st.close()
    return tmp / "store.db"


def _run(a, mode: str, address: str, tmp: Path) -> float:
    ex = [] if mode == "local" else ["--executor", "ray", "--address", address]
    if a.workload == "retrain":
        cmd = [sys.executable, "-m", "daemon.retrain", "--registry", str(tmp / f"reg-{mode}"), "--symbol", "BTCUSDT",
               "--timeframes", "1m,5m,15m,1h", "--store", str(tmp / "store.db"), "--min-bars", "1000",
               "--threads", str(a.threads), *ex]
    else:
        cmd = [sys.executable, "-m", "daemon.cli", a.workload, "--data", a.data, "--threads", str(a.threads),
               *(["--timeframes", a.timeframes] if a.timeframes else []), *(["--models", a.models] if a.models else []),
               *(["--report", str(tmp / f"rep-{mode}")] if a.workload == "backtest" else
                 ["--registry", str(tmp / f"reg-{mode}")]), *ex]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{mode}: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="backtest", choices=("backtest", "retrain", "train"))
    ap.add_argument("--data", default=str(DATA / "universe" / "binance-spot-5m"))
    ap.add_argument("--timeframes", default="")
    ap.add_argument("--models", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--modes", default="local,ray-1,ray-2")
    a = ap.parse_args()
    out = {"workload": a.workload, "data": a.data, "timeframes": a.timeframes, "threads": a.threads,
           "cpus_per_node": a.cpus_per_node, "cpu_count": os.cpu_count(), "seconds": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.workload == "retrain":
            _store(tmp)
        for mode in a.modes.split(","):
            procs: list = []
            addr = ""
            try:
                if mode != "local":
                    addr, procs = _cluster(int(mode.split("-")[1]), a.cpus_per_node, tmp)
                out["seconds"][mode] = round(_run(a, mode, addr, tmp), 1)
            finally:
                _stop(procs)
            print(json.dumps({mode: out["seconds"][mode]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
