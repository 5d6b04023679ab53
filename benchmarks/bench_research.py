"""Universe research benchmarks (README figures, not timed tests).

    python -m benchmarks.bench_research backtest [--data ../shared/data/universe/binance-spot-5m] [--timeframes 5m]
    python -m benchmarks.bench_research hpo [--data ../shared/data/universe/binance-spot-1h] [--trials 8]

``backtest``: wall time of ``tradingd backtest --data DIR`` over the whole folder (30 pairs x 8 months of 5m),
training included, with the phase split from metrics.json ``info.timings_s``; the strategy and its baselines run
through the live TradingPipeline (daemon/backtest/universe.py): ``pipeline_s`` is that phase (the strategy here,
momentum and reversal in forked processes), ``pipeline_runs_s`` each run's own replay time; ``cpu_s`` the CPU seconds of the command and its forked children
(on a shared box the wall time says more about the other tenants than about the code).
``hpo``: trials per minute of ``tradingd hpo`` with J = 1 and J = 2 workers on the same data and trial count
(one study per run, fresh journal), run one after the other in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIVERSE = ROOT.parent / "shared" / "data" / "universe"


def _cpu_children() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _tradingd(args: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"tradingd {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, p.stdout


def bench_backtest(a) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = a.report or tmp
        args = ["backtest", "--data", a.data, "--report", d, "--threads", str(a.threads), *a.extra]
        if a.timeframes:
            args += ["--timeframes", a.timeframes]
        c0, l0 = _cpu_children(), os.getloadavg()
        wall, out = _tradingd(args)
        cpu = _cpu_children() - c0  # the command and its forked children (waited for), user + system
        m = json.loads((Path(d) / "metrics.json").read_text())
    info = m["info"]
    pl = m.get("pipeline", {})
    return {"bench": "universe_backtest", "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "loadavg_before": l0, "timings_s": info["timings_s"],
            "symbols": info["universe"]["n_symbols"], "bars": info["universe"]["bars"],
            "pipeline_s": info["timings_s"].get("pipeline"), "pipeline_runs_s": pl.get("seconds"),
            "pipeline_boundaries": pl.get("span_bars"), "strategy": m["strategy"],
            "baselines": m["baselines"], "strategy_vectorised": m.get("strategy_vectorised"),
            "loadavg": os.getloadavg(), "cpu_count": os.cpu_count(), "args": args[4:]}


def bench_hpo(a) -> dict:
    res = {"bench": "hpo", "trials": a.trials, "runs": []}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            args = ["hpo", "--data", a.data, "--trials", str(a.trials), "--jobs", str(jobs), "--out", d,
                    "--threads", "1", *(["--timeframes", a.timeframes] if a.timeframes else []), *a.extra]
            wall, _ = _tradingd(args)
            best = json.loads((Path(d) / "best.json").read_text())
        for tf, h in best["hpo"].items():
            res["runs"].append({"jobs": jobs, "tf": tf, "trials": h["trials"], "pruned": h["pruned"],
                                "search_s": round(h["search_seconds"], 1),
                                "trials_per_minute": round(h["trials_per_minute"], 2), "wall_s": round(wall, 1)})
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=("backtest", "hpo"))
    p.add_argument("--data", default="")
    p.add_argument("--timeframes", default="")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", default="", help="backtest: keep the report here (default: a temporary folder)")
    p.add_argument("extra", nargs="*", help="more tradingd options after --")
    a = p.parse_args()
    if not a.data:
        a.data = str(UNIVERSE / ("binance-spot-5m" if a.which == "backtest" else "binance-spot-1h"))
    r = bench_backtest(a) if a.which == "backtest" else bench_hpo(a)
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
